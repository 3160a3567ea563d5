"""Console security on a real PostgreSQL and a real aiohttp server: login and logout, wrong passwords and lockout,
idle and absolute timeouts, revocation (HTTP and live websockets), the Origin check, cookie flags, argon2id, the
append-only audit log, and `emergency user add`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import websockets

from console import Console
from emergency.access import Role
from emergency.settings import AuthSettings, ConsoleSettings, MqttEndpoint
from emergency.stack import PostgresCluster
from emergency.store import Store
from tests.conftest import TEST_PASSWORD, console_origin, login, session_cookie, ws_connect

MakeUser = Callable[..., Awaitable[str]]
FAST_SWEEP = AuthSettings(session_check_s=0.2, lockout_failures=3)


@pytest_asyncio.fixture(loop_scope="session")
async def console(console_endpoint: MqttEndpoint, shared_store: Store) -> AsyncIterator[Console]:
    async with Console(ConsoleSettings(auth=FAST_SWEEP), 0, console_endpoint, shared_store) as running:
        yield running


def _anonymous(console: Console, origin: str | None = None) -> aiohttp.ClientSession:
    headers = {"Origin": origin or console_origin(console.url)}
    return aiohttp.ClientSession(base_url=console.url, cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers)


async def _audit(store: Store, username: str, action: str | None = None) -> list[dict[str, Any]]:
    rows = await store.pool.fetch(
        "SELECT action, result, role, detail::text AS detail FROM audit_log WHERE username = $1"
        " AND ($2::text IS NULL OR action = $2) ORDER BY id",
        username, action,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def _closed_with(ws: websockets.ClientConnection) -> int | None:
    async with asyncio.timeout(15):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    return ws.close_code


async def test_login_sets_a_strict_http_only_cookie_and_logout_revokes_it(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """A login answers the user's role and permissions with an HttpOnly, SameSite=Strict cookie (not Secure over
    plain HTTP); after logout the same cookie is refused; both are audited."""
    username = await make_user(Role.ED_NURSE)
    async with _anonymous(console) as http:
        async with http.post("/api/login", json={"username": username.upper(), "password": TEST_PASSWORD}) as r:
            assert r.status == 200
            me = await r.json()
            cookie = r.headers["Set-Cookie"]
        assert me["username"] == username and me["role"] == "ed_nurse"
        assert "VIEW_PATIENT_LIVE" in me["permissions"] and "DISCHARGE" not in me["permissions"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        assert len(token) >= 43  # 256 bits, base64url
        async with http.get("/api/whoami") as r:
            assert (await r.json())["username"] == username
        async with http.post("/api/logout") as r:
            assert r.status == 200
    async with _anonymous(console) as replay:
        async with replay.get("/api/whoami", headers={"Cookie": f"emergency_session={token}"}) as r:
            assert r.status == 401
    actions = [(a["action"], a["result"]) for a in await _audit(shared_store, username)]
    assert actions[:2] == [("login", "allowed"), ("logout", "allowed")]
    assert ("session_refused", "denied") in actions


async def test_wrong_password_and_unknown_user_get_the_same_refusal(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """A wrong password and an unknown username are both answered 401 with one message, and audited as failed."""
    username = await make_user(Role.DISPATCHER)
    async with _anonymous(console) as http:
        async with http.post("/api/login", json={"username": username, "password": "wrong password!"}) as r:
            assert r.status == 401
            wrong = await r.json()
        async with http.post("/api/login", json={"username": "nobody-at-all", "password": "wrong password!"}) as r:
            assert r.status == 401
            unknown = await r.json()
        assert "Set-Cookie" not in r.headers
    assert wrong == unknown
    assert [(a["action"], a["result"]) for a in await _audit(shared_store, username)] == [("login", "failed")]
    assert [a["result"] for a in await _audit(shared_store, "nobody-at-all")] == ["failed"]


async def test_repeated_failures_lock_the_username_even_for_the_right_password(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """After `lockout_failures` wrong passwords the username is locked (429 with Retry-After), the right password
    included; the lock is audited; another user from the same address may still log in."""
    username = await make_user(Role.ED_PHYSICIAN)
    async with _anonymous(console) as http:
        for _ in range(FAST_SWEEP.lockout_failures):
            async with http.post("/api/login", json={"username": username, "password": "guess guess guess"}) as r:
                assert r.status == 401
        async with http.post("/api/login", json={"username": username, "password": TEST_PASSWORD}) as r:
            assert r.status == 429
            assert 0 < int(r.headers["Retry-After"]) <= FAST_SWEEP.lockout_s
    other = await login(console.url, await make_user(Role.ED_PHYSICIAN))
    await other.close()
    audit = [(a["action"], a["result"]) for a in await _audit(shared_store, username)]
    assert audit == [("login", "failed")] * FAST_SWEEP.lockout_failures + [("login", "denied")]
    assert "locked" in (await _audit(shared_store, username))[-1]["detail"]


async def test_idle_and_absolute_timeouts_end_sessions(
    console_endpoint: MqttEndpoint, make_user: MakeUser, shared_store: Store
) -> None:
    """A session unused for longer than the idle timeout is refused; so is an active one older than the absolute
    timeout; each refusal is audited with its reason. (The sessions are aged in the store, not by waiting.)"""
    settings = ConsoleSettings(auth=AuthSettings(idle_timeout_s=60, absolute_timeout_s=120, touch_interval_s=0))

    async def age(username: str, column: str, seconds: int) -> None:
        await shared_store.pool.execute(
            f"UPDATE sessions s SET {column} = s.{column} - make_interval(secs => $2)"
            " FROM users u WHERE u.id = user_id AND u.username = $1",
            username, seconds,
        )  # fmt: skip

    async with Console(settings, 0, console_endpoint, shared_store) as console:
        idle_user, busy_user = await make_user(Role.FOLLOWUP), await make_user(Role.FOLLOWUP)
        idle, busy = await login(console.url, idle_user), await login(console.url, busy_user)
        try:
            await age(idle_user, "last_seen_at", 45)
            async with idle.get("/api/whoami") as r:
                assert r.status == 200, await _audit(shared_store, idle_user)  # within the idle timeout
            await age(idle_user, "last_seen_at", 75)
            async with idle.get("/api/whoami") as r:
                assert r.status == 401
            await age(busy_user, "created_at", 130)  # used just now, but created longer ago than the limit
            async with busy.get("/api/whoami") as r:
                assert r.status == 401
        finally:
            await idle.close()
            await busy.close()
    assert '"idle"' in (await _audit(shared_store, idle_user, "session_refused"))[0]["detail"]
    assert '"expired"' in (await _audit(shared_store, busy_user, "session_refused"))[0]["detail"]


async def test_revoked_session_is_refused_and_its_websocket_closed(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """An administrator revoking a user's sessions closes that user's live websocket (4401) at once and refuses
    its cookie over HTTP; a revocation made directly in the store (another console process) closes it too."""
    nurse = await make_user(Role.ED_NURSE)
    admin = await login(console.url, await make_user(Role.ADMIN))
    http = await login(console.url, nurse)
    try:
        async with ws_connect(console.url, http) as ws:
            async with admin.delete(f"/api/users/{nurse}/sessions") as r:
                assert r.status == 200 and (await r.json())["revoked"] == 1
            assert await _closed_with(ws) == 4401
        async with http.get("/api/whoami") as r:
            assert r.status == 401
        again = await login(console.url, nurse)
        async with ws_connect(console.url, again) as ws:
            await shared_store.pool.execute(
                "UPDATE sessions SET revoked_at = now() FROM users u WHERE u.id = user_id AND u.username = $1", nurse
            )
            assert await _closed_with(ws) == 4401
        await again.close()
    finally:
        await admin.close()
        await http.close()
    actions = [a["action"] for a in await _audit(shared_store, nurse)]
    assert actions.count("ws_open") == 2 and actions.count("ws_closed") == 2


async def test_disabling_a_user_ends_their_sessions(console: Console, make_user: MakeUser) -> None:
    """A user disabled by an administrator is logged out everywhere and cannot log in again."""
    nurse = await make_user(Role.ED_NURSE)
    admin, http = await login(console.url, await make_user(Role.ADMIN)), await login(console.url, nurse)
    try:
        async with admin.patch(f"/api/users/{nurse}", json={"disabled": True}) as r:
            assert r.status == 200 and (await r.json())["disabled"] is True
        async with http.get("/api/whoami") as r:
            assert r.status == 401
        with pytest.raises(AssertionError, match="401"):
            await login(console.url, nurse)
    finally:
        await admin.close()
        await http.close()


async def test_forged_origin_is_refused_on_the_websocket_and_on_post(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """A websocket upgrade or a POST from a foreign Origin (or none) is refused 403 and audited, the login included;
    a websocket without a session is refused 401 before the upgrade."""
    username = await make_user(Role.ED_PHYSICIAN)
    http = await login(console.url, username)
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await ws_connect(console.url, http, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        async with http.post("/api/logout", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.get("/api/whoami") as r:
            assert r.status == 200  # the forged logout did nothing
        url = console.url.replace("http", "ws", 1) + "ws"
        with pytest.raises(websockets.InvalidStatus) as anonymous:
            await websockets.connect(url, origin=console_origin(console.url))
        assert anonymous.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus) as no_origin:
            await websockets.connect(url, additional_headers={"Cookie": session_cookie(http)})
        assert no_origin.value.response.status_code == 403
    finally:
        await http.close()
    async with _anonymous(console, origin="http://evil.example") as evil:
        async with evil.post("/api/login", json={"username": username, "password": TEST_PASSWORD}) as r:
            assert r.status == 403
    refusals = await _audit(shared_store, username, "origin_refused")
    assert len(refusals) == 3 and all(a["result"] == "denied" for a in refusals)
    login_refused = await shared_store.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'origin_refused' AND detail->>'path' = '/api/login'"
        " AND detail->>'origin' = 'http://evil.example'"
    )
    assert login_refused >= 1


async def test_pages_need_a_session_except_the_login_page(console: Console) -> None:
    """Without a session the page redirects to the login page, scripts and the API answer 401, and the login page
    with its assets and /healthz are served."""
    async with _anonymous(console) as http:
        async with http.get("/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/static/login.html"
        for path in ("/static/js/main.js", "/api/fleet", "/api/whoami", "/static/app.css"):
            async with http.get(path) as r:
                assert r.status == 401, path
        for path in ("/static/login.html", "/static/login.css", "/static/js/login.js", "/healthz"):
            async with http.get(path) as r:
                assert r.status == 200, path


async def test_passwords_are_stored_as_argon2id(console: Console, make_user: MakeUser, shared_store: Store) -> None:
    """A user's password is stored as an argon2id hash with at least argon2-cffi's default cost, never in clear."""
    username = await make_user(Role.ADMIN, password="a different password")
    stored = await shared_store.pool.fetchval("SELECT password_hash FROM users WHERE username = $1", username)
    assert stored.startswith("$argon2id$v=19$")
    params = dict(p.split("=") for p in stored.split("$")[3].split(","))
    assert int(params["m"]) >= 65536 and int(params["t"]) >= 3 and "different" not in stored


async def test_audit_log_is_append_only_and_admins_query_it(
    console: Console, make_user: MakeUser, shared_store: Store
) -> None:
    """The database refuses UPDATE, DELETE and TRUNCATE on the audit log; an admin queries it by user."""
    import asyncpg

    nurse = await make_user(Role.ED_NURSE)
    await (await login(console.url, nurse)).close()  # the login is what gets audited
    for statement in ("UPDATE audit_log SET result = 'allowed'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await shared_store.pool.execute(statement)
    admin = await login(console.url, await make_user(Role.ADMIN))
    try:
        async with admin.get("/api/audit", params={"user": nurse}) as r:
            entries = (await r.json())["entries"]
        assert [(e["action"], e["result"], e["role"]) for e in entries] == [("login", "allowed", "ed_nurse")]
        async with admin.get("/api/audit", params={"limit": "x"}) as r:
            assert r.status == 400
    finally:
        await admin.close()


async def test_console_refuses_to_start_without_a_store(console_endpoint: MqttEndpoint) -> None:
    """Without a store nobody can be authenticated, so the console is not built at all."""
    with pytest.raises(TypeError, match="store"):
        Console(ConsoleSettings(), 0, console_endpoint, None)  # type: ignore[arg-type]


async def test_cli_user_add_then_login(console: Console, postgres: PostgresCluster) -> None:
    """`emergency user add NAME --role ROLE --password-stdin` creates a user who can log in; `user list` shows it;
    a short password is refused."""
    env = {**os.environ, "EMERGENCY_STORE__DSN": postgres.dsn, "EMERGENCY_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "emergency.cli", "user"]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)

    added = await asyncio.to_thread(run, "add", "Dr.Cli", "--role", "ed_physician", "--password-stdin",
                                    stdin="a long enough password\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    weak = await asyncio.to_thread(run, "add", "weak", "--role", "admin", "--password-stdin", stdin="short\n")
    assert weak.returncode == 2 and "10 characters" in weak.stderr
    listed = await asyncio.to_thread(run, "list")
    assert any(line.split()[:2] == ["dr.cli", "ed_physician"] for line in listed.stdout.splitlines())
    http = await login(console.url, "dr.cli", "a long enough password")
    async with http.get("/api/whoami") as r:
        assert (await r.json())["role"] == "ed_physician"
    await http.close()
