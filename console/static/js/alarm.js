// The audible alarm: a high-priority burst (3 + 2 pulses, after IEC 60601-1-8) that repeats while any critical
// alert is unacknowledged. Browsers start audio only after a user gesture, so the page shows a "sound" button that
// stays in view, blinking when an alarm is due but sound is still off.
const PULSE_S = 0.15, GAP_S = 0.1, PAUSE_S = 0.35, REPEAT_MS = 6000;
const PATTERN = [0, 1, 2, 3.6, 4.6]; // pulse starts in units of (pulse + gap); the 3 + 2 grouping

export class Alarm {
  constructor(button) {
    this.button = button;
    this.audio = null;
    this.enabled = false;
    this.sounding = false; // an alarm is due (whether or not it can be heard)
    this.bursts = 0; // bursts played: for tests and the curious
    this.timer = null;
    button.addEventListener("click", () => this.toggle());
    this.show();
  }

  toggle() {
    if (!this.audio) this.audio = new AudioContext();
    this.enabled = !this.enabled;
    if (this.enabled) this.audio.resume();
    this.show();
    if (this.enabled && this.sounding) this.burst();
  }

  show() {
    this.button.className = "sound " + (this.enabled ? "on" : "off") + (this.sounding && !this.enabled ? " needed" : "");
    this.button.textContent = this.enabled ? "Sound on" : (this.sounding ? "SOUND OFF — click for alarms" : "Sound off");
    this.button.setAttribute("aria-pressed", String(this.enabled));
  }

  /** Call whenever the alerts change: sound while any critical alert is unacknowledged. */
  update(critical) {
    const due = critical > 0 && !this.button.hidden; // hidden: this user works at no desk that acknowledges alerts
    if (due === this.sounding) return;
    this.sounding = due;
    clearInterval(this.timer);
    this.timer = null;
    if (due) {
      this.burst();
      this.timer = setInterval(() => this.burst(), REPEAT_MS);
    }
    this.show();
  }

  burst() {
    if (!this.enabled || !this.audio || this.audio.state !== "running") return;
    this.bursts++;
    const a = this.audio, t0 = a.currentTime + 0.02;
    for (const k of PATTERN) {
      const start = t0 + k * (PULSE_S + GAP_S) + (k > 2 ? PAUSE_S - GAP_S : 0);
      const osc = a.createOscillator(), gain = a.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0, start);
      gain.gain.linearRampToValueAtTime(0.18, start + 0.01);
      gain.gain.setValueAtTime(0.18, start + PULSE_S - 0.02);
      gain.gain.linearRampToValueAtTime(0, start + PULSE_S);
      osc.connect(gain).connect(a.destination);
      osc.start(start);
      osc.stop(start + PULSE_S + 0.01);
    }
  }
}
