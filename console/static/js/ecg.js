// Live ECG, sweep style: 25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid. Two layouts: "columns" (limb leads left,
// chest leads right, one row per lead) and "12-lead", the standard 3×4 print layout (I aVR V1 V4 / II aVL V2 V5 /
// III aVF V3 V6, 2.5 s per column, the four columns showing consecutive 2.5 s of one 10 s sweep) with a full-width
// rhythm strip of II below. A device without the twelve standard leads is shown in columns.
const PLAY_DELAY_MS = 400; // jitter buffer: frames arrive every 250 ms
const RING_S = 12;
const LAYOUT_LEFT = ["I", "II", "III", "aVR", "aVL", "aVF"];
export const TWELVE_LEAD = [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]];
const RHYTHM_LEAD = "II";
const SWEEP_S = 10; // 12-lead: one sweep is 10 s, 250 mm at 25 mm/s
const CAL_MM = 10; // room for the 1 mV calibration pulse left of the traces

function decodeFrame(frame) {
  const bin = atob(frame.data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Int16Array(bytes.buffer); // protocol v1: int16 little-endian, lead-major (browsers are little-endian)
}

export class EcgView {
  constructor(canvas, onSignal, { layout = "columns" } = {}) {
    this.canvas = canvas;
    this.onSignal = onSignal;
    this.layout = layout;
    this.reset(null);
  }

  reset(unit) {
    this.unit = unit;
    this.fs = 0;
    this.leads = [];
    this.rings = new Map();
    this.written = 0;
    this.t0 = null;
    this.lastSeq = null;
    this.grid = null;
    this.signal = unit ? "waiting" : "none";
  }

  push(frame) {
    if (frame.unit !== this.unit) return;
    if (this.lastSeq !== null && frame.seq <= this.lastSeq && frame.seq > this.lastSeq - 1000) return; // replayed
    this.lastSeq = frame.seq;
    if (frame.fs !== this.fs || frame.leads.join() !== this.leads.join()) {
      this.fs = frame.fs; this.leads = frame.leads; this.written = 0; this.t0 = null; this.grid = null;
      this.rings = new Map(frame.leads.map((l) => [l, new Float32Array(Math.round(frame.fs * RING_S))]));
    }
    const counts = decodeFrame(frame), mvPerCount = frame.lsb_uv / 1000, n = frame.n;
    frame.leads.forEach((lead, li) => {
      const ring = this.rings.get(lead), size = ring.length;
      for (let i = 0; i < n; i++) ring[(this.written + i) % size] = counts[li * n + i] * mvPerCount;
    });
    this.written += n;
    const now = performance.now();
    if (this.t0 === null) this.t0 = now + PLAY_DELAY_MS - ((this.written - n) / this.fs) * 1000;
    // A backlog (catch-up after an outage) is not shown at double speed: jump to live, keep the delay.
    const lagMs = (this.written / this.fs) * 1000 - (now - this.t0);
    if (lagMs > 2000) this.t0 = now + PLAY_DELAY_MS - (this.written / this.fs) * 1000;
  }

  playhead(now) {
    if (this.t0 === null) return 0;
    let p = Math.floor(((now - this.t0) / 1000) * this.fs);
    if (p > this.written) { // underflow: no data for the playhead — hold and mark the signal
      this.t0 += ((p - this.written) / this.fs) * 1000;
      p = this.written;
      this.setSignal("stale");
    } else if (p > 0) this.setSignal("live");
    return Math.max(0, p);
  }

  setSignal(state) {
    if (state !== this.signal) { this.signal = state; this.onSignal(state); }
  }

  twelveLead() {
    return this.layout === "12-lead" && TWELVE_LEAD.flat().every((l) => this.rings.has(l));
  }

  geometry() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); this.grid = null;
    }
    if (this.twelveLead()) {
      // 4 rows (3 + rhythm) of at least 18 mm; the width holds the calibration pulse and 10 s at 25 mm/s.
      const pxPerMm = Math.min((w - 4) / (CAL_MM + 25 * SWEEP_S), h / (4 * 18));
      const cellW = 25 * (SWEEP_S / 4) * pxPerMm, cellH = h / 4;
      return { w, h, dpr, twelve: true, rows: 4, cellW, cellH, pxPerMm, traceX0: CAL_MM * pxPerMm,
        columns: [0, 1, 2, 3].map((ci) => TWELVE_LEAD.map((row) => row[ci])) };
    }
    const right = this.leads.filter((l) => !LAYOUT_LEFT.includes(l));
    const left = this.leads.filter((l) => LAYOUT_LEFT.includes(l));
    const cols = right.length && left.length ? 2 : 1;
    const rows = Math.max(left.length, right.length, 1);
    const cellH = h / rows, cellW = w / cols;
    const pxPerMm = cellH / 25; // each row spans 25 mm (±1.25 mV at 10 mm/mV)
    return { w, h, dpr, cols, rows, cellW, cellH, pxPerMm, columns: cols === 2 ? [left, right] : [this.leads] };
  }

  drawGrid(geo) {
    const off = document.createElement("canvas");
    off.width = this.canvas.width; off.height = this.canvas.height;
    const g = off.getContext("2d");
    g.setTransform(geo.dpr, 0, 0, geo.dpr, 0, 0);
    g.fillStyle = "#fff8f5"; g.fillRect(0, 0, geo.w, geo.h);
    for (let i = 0, x = 0; x < geo.w; i++, x = i * geo.pxPerMm) {
      g.strokeStyle = i % 5 ? "#f6d5cc" : "#eaa99a"; g.lineWidth = i % 5 ? 0.5 : 1;
      g.beginPath(); g.moveTo(x, 0); g.lineTo(x, geo.h); g.stroke();
    }
    for (let i = 0, y = 0; y < geo.h; i++, y = i * geo.pxPerMm) {
      g.strokeStyle = i % 5 ? "#f6d5cc" : "#eaa99a"; g.lineWidth = i % 5 ? 0.5 : 1;
      g.beginPath(); g.moveTo(0, y); g.lineTo(geo.w, y); g.stroke();
    }
    g.fillStyle = "#333"; g.font = "600 12px system-ui";
    if (geo.twelve) {
      this.drawTwelveLeadLabels(g, geo);
      this.grid = off;
      return;
    }
    geo.columns.forEach((leads, ci) => leads.forEach((lead, ri) => {
      const x0 = ci * geo.cellW, y0 = ri * geo.cellH;
      g.fillText(lead, x0 + 6, y0 + 14);
      // 1 mV calibration pulse, 10 mm tall
      const base = y0 + geo.cellH * 0.6, mm = geo.pxPerMm;
      g.strokeStyle = "#333"; g.lineWidth = 1.2; g.beginPath();
      g.moveTo(x0 + 2, base); g.lineTo(x0 + 2 + mm, base); g.lineTo(x0 + 2 + mm, base - 10 * mm);
      g.lineTo(x0 + 2 + 6 * mm, base - 10 * mm); g.lineTo(x0 + 2 + 6 * mm, base); g.lineTo(x0 + 8 * mm, base); g.stroke();
    }));
    g.fillText("25 mm/s · 10 mm/mV", geo.w - 130, geo.h - 6);
    this.grid = off;
  }

  drawTwelveLeadLabels(g, geo) {
    const mm = geo.pxPerMm;
    for (let ri = 0; ri < 4; ri++) {
      const y0 = ri * geo.cellH, base = y0 + geo.cellH * 0.6;
      // 1 mV calibration pulse, 10 mm tall, at the start of each row
      g.strokeStyle = "#333"; g.lineWidth = 1.2; g.beginPath();
      g.moveTo(1, base); g.lineTo(1 + 2 * mm, base); g.lineTo(1 + 2 * mm, base - 10 * mm);
      g.lineTo(1 + 7 * mm, base - 10 * mm); g.lineTo(1 + 7 * mm, base); g.lineTo(CAL_MM * mm, base); g.stroke();
      const labels = ri < 3 ? TWELVE_LEAD[ri] : [RHYTHM_LEAD];
      labels.forEach((lead, ci) => {
        const x0 = geo.traceX0 + ci * geo.cellW;
        g.fillText(lead, x0 + 4, y0 + 14);
        if (ci > 0) { // the column boundary, as on a printed 12-lead
          g.beginPath(); g.moveTo(x0, base - 3 * mm); g.lineTo(x0, base + 3 * mm); g.stroke();
        }
      });
    }
    g.fillText("25 mm/s · 10 mm/mV", geo.w - 130, geo.h - 6);
  }

  drawTwelveLead(g, geo, head) {
    const ringSize = Math.round(this.fs * RING_S);
    const window = Math.round(this.fs * SWEEP_S), segment = window / 4;
    const pxPerSample = (25 * geo.pxPerMm) / this.fs;
    const gap = Math.round(this.fs * 0.12);
    const first = Math.max(0, head - window + gap, this.written - ringSize + 1);
    const scale = 10 * geo.pxPerMm;
    const mid = (ri) => ri * geo.cellH + geo.cellH * 0.6;
    g.strokeStyle = "#111"; g.lineWidth = 1.3; g.lineJoin = "round";
    g.beginPath();
    for (let ri = 0; ri < 4; ri++) {
      let prevColumn = -1, prevP = Infinity;
      for (let s = first; s < head; s++) {
        const p = s % window, column = Math.floor(p / segment);
        const lead = ri < 3 ? TWELVE_LEAD[ri][column] : RHYTHM_LEAD;
        const x = geo.traceX0 + p * pxPerSample;
        const y = mid(ri) - this.rings.get(lead)[s % ringSize] * scale;
        // A new stroke where the sweep wraps, and (in the 3×4 rows) where the column changes lead.
        if (p < prevP || (ri < 3 && column !== prevColumn)) g.moveTo(x, y); else g.lineTo(x, y);
        prevP = p; prevColumn = column;
      }
    }
    g.stroke();
  }

  draw(now) {
    const g = this.canvas.getContext("2d");
    if (!this.unit || !this.leads.length) {
      g.setTransform(1, 0, 0, 1, 0, 0); g.fillStyle = "#fff8f5"; g.fillRect(0, 0, this.canvas.width, this.canvas.height);
      return;
    }
    const geo = this.geometry();
    if (!this.grid) this.drawGrid(geo);
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.drawImage(this.grid, 0, 0);
    g.setTransform(geo.dpr, 0, 0, geo.dpr, 0, 0);
    const head = this.playhead(now);
    if (geo.twelve) {
      this.drawTwelveLead(g, geo, head);
      return;
    }
    const traceX0 = 10 * geo.pxPerMm; // leave the calibration pulse visible
    const pxPerSample = (25 * geo.pxPerMm) / this.fs;
    const window = Math.floor((geo.cellW - traceX0 - 4) / pxPerSample);
    const gap = Math.round(this.fs * 0.12);
    const ringSize = Math.round(this.fs * RING_S);
    const first = Math.max(0, head - window + gap, this.written - ringSize + 1);
    g.strokeStyle = "#111"; g.lineWidth = 1.3; g.lineJoin = "round";
    geo.columns.forEach((leads, ci) => leads.forEach((lead, ri) => {
      const ring = this.rings.get(lead);
      const x0 = ci * geo.cellW + traceX0, yMid = ri * geo.cellH + geo.cellH * 0.6;
      g.beginPath();
      let prevX = Infinity;
      for (let s = first; s < head; s++) {
        const x = x0 + (s % window) * pxPerSample;
        const y = yMid - ring[s % ringSize] * 10 * geo.pxPerMm;
        if (x < prevX) g.moveTo(x, y); else g.lineTo(x, y); // the sweep wraps: start a new stroke
        prevX = x;
      }
      g.stroke();
    }));
  }
}
