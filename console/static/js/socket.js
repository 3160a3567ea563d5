// The console websocket: reconnects with capped backoff and jitter; hands every message to `onMessage`, one at a
// time (the console sends them in frames that are arrays).
export class ConsoleSocket {
  constructor(onMessage, onState) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.attempt = 0;
    this.watching = new Set();
    this.connect();
  }

  connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onState(true);
      for (const unit of this.watching) this.send({ type: "watch", unit });
    };
    // Each frame is a JSON array of messages, in the order the console sent them (docs/console-api.md).
    ws.onmessage = (event) => { for (const message of JSON.parse(event.data)) this.onMessage(message); };
    ws.onclose = (event) => {
      this.onState(false);
      // The session ended (logout, revocation, timeout): log in again rather than reconnect.
      if (event.code === 4401) { location.assign("/static/login.html"); return; }
      const delay = Math.random() * Math.min(15000, 500 * 1.5 ** this.attempt++);
      setTimeout(() => this.connect(), delay);
    };
  }

  send(message) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  watch(unit) {
    for (const other of this.watching) if (other !== unit) this.send({ type: "unwatch", unit: other });
    this.watching = new Set([unit]);
    this.send({ type: "watch", unit });
  }
}
