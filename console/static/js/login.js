// The login form: posts the credentials as JSON (same origin, so the Origin check passes) and opens the console.
const form = document.getElementById("login");
const error = document.getElementById("error");
const submit = document.getElementById("submit");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  submit.disabled = true;
  error.hidden = true;
  try {
    const response = await fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        username: document.getElementById("username").value,
        password: document.getElementById("password").value,
      }),
    });
    if (response.ok) {
      location.replace("/");
      return;
    }
    let reason = `${response.status}`;
    try { reason = (await response.json()).error || reason; } catch { reason = await response.text(); }
    error.textContent = reason;
    error.hidden = false;
    document.getElementById("password").select();
  } catch (exc) {
    error.textContent = `The console cannot be reached (${exc.message}).`;
    error.hidden = false;
  } finally {
    submit.disabled = false;
  }
});
