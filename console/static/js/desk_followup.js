// The follow-up desk: the worklist of follow-ups due, the closed loop of one encounter from the call to its 30-day
// outcome, the outcome form, and the quality indicators (medians against their targets).
import { api, clock, dateTime, duration, el, ETIMES, TEAM_LABEL, TIME_LABEL } from "./care.js";

const REFRESH_MS = 60000;
const INCIDENT_TIMES = new Set(ETIMES.map(([name]) => name));
const KIND_COLOR = { incident: "#d2a8ff", milestone: "#58a6ff", alert: "#ff7b72", activation: "#e3b341", followup: "#3fb950" };

/** Every dated fact of an encounter's record (GET /api/encounters/{id}), oldest first. */
export function closedLoop(record) {
  const { encounter: e, incident: i, alerts, activations, follow_ups: followUps } = record;
  const events = [];
  const add = (at, kind, what) => { if (at != null) events.push({ at, kind, what }); };
  const incidentTimes = new Map(i.times.map((t) => [t.name, t.at]));
  if (!incidentTimes.has("call_received")) add(i.call_received_at, "incident", "call received");
  for (const t of i.times) add(t.at, "incident", TIME_LABEL[t.name] ?? t.name);
  add(e.contact_at, "milestone", "first medical contact");
  for (const t of e.times) {
    if (INCIDENT_TIMES.has(t.name)) continue;
    const extra = t.name === "discharge" ? [e.disposition, e.diagnosis].filter(Boolean).join(" · ") : "";
    add(t.at, "milestone", `${TIME_LABEL[t.name] ?? t.name}${extra ? ` — ${extra}` : ""}`);
  }
  if (e.door_at != null && !e.times.some((t) => t.name === "door")) add(e.door_at, "milestone", "door");
  for (const a of alerts) {
    add(a.raised_at, "alert", `${a.severity} alert: ${a.summary}`);
    add(a.acknowledged_at, "alert", `alert acknowledged by ${a.acknowledged_by ?? "?"}${a.acknowledged_role ? ` (${a.acknowledged_role})` : ""}`);
  }
  for (const a of activations) {
    add(a.requested_at, "activation", `${TEAM_LABEL[a.team] ?? a.team} requested by ${a.requested_by}`);
    add(a.acknowledged_at, "activation", `${TEAM_LABEL[a.team] ?? a.team} acknowledged`);
  }
  for (const f of followUps) {
    if (f.state === "due") add(f.due_at, "followup", `${f.label} follow-up due`);
    else add(f.recorded_at ?? f.due_at, "followup", `${f.label} follow-up: ${outcomeText(f)}`);
  }
  return events.sort((a, b) => a.at - b.at);
}

export function outcomeText(f) {
  if (f.state === "unreachable") return "unreachable";
  const parts = [f.alive === false ? "died" : f.alive ? "alive" : null,
    f.readmitted ? "readmitted" : f.readmitted === false ? "not readmitted" : null,
    f.mace ? "MACE" : f.mace === false ? "no MACE" : null];
  return parts.filter(Boolean).join(", ") || f.state;
}

function minutes(seconds) { return seconds == null ? "—" : `${(seconds / 60).toFixed(seconds < 600 ? 1 : 0)} min`; }
function percent(p) { return p == null ? "—" : `${Math.round(p * 100)} %`; }

export class FollowUpDesk {
  constructor({ fleet }) {
    this.fleet = fleet;
    this.followUps = [];
    this.selected = null; // the follow-up whose encounter is shown
    this.records = new Map(); // encounter id → GET /api/encounters/{id}
    this.loadedAt = 0;
    const $ = (id) => document.getElementById(id);
    this.$ = $;
    $("fu-rows").addEventListener("click", (e) => { const tr = e.target.closest("tr"); if (tr) this.select(Number(tr.dataset.followUp)); });
    $("fu-rows").addEventListener("keydown", (e) => {
      const tr = e.target.closest("tr");
      if (tr && e.key === "Enter") this.select(Number(tr.dataset.followUp));
    });
    $("outcome").addEventListener("submit", (e) => { e.preventDefault(); this.recordOutcome(); });
    $("outcome").addEventListener("change", () => this.formState());
  }

  /** Called when the desk is shown, and every minute while it shows. */
  async refresh(force = false) {
    if (!force && Date.now() - this.loadedAt < REFRESH_MS) return;
    this.loadedAt = Date.now();
    await Promise.all([this.loadWorklist(), this.loadQuality()]);
  }

  async loadWorklist() {
    try {
      this.followUps = await api("GET", "/api/follow-ups?due=1");
      this.$("fu-error").textContent = "";
    } catch (exc) {
      this.$("fu-empty").textContent = `Worklist unavailable: ${exc.message}`;
      return;
    }
    this.renderWorklist();
    for (const f of this.followUps) {
      if (!this.records.has(f.encounter_id)) {
        try { this.records.set(f.encounter_id, await api("GET", `/api/encounters/${f.encounter_id}`)); } catch { continue; }
        this.renderWorklist();
      }
    }
  }

  renderWorklist() {
    const now = this.fleet.nowServerUs();
    const rows = this.followUps.map((f) => {
      const record = this.records.get(f.encounter_id);
      const who = record ? `${record.encounter.alias}${record.encounter.patient_name ? ` (${record.encounter.patient_name})` : ""}` : `#${f.encounter_id}`;
      const due = f.due_at <= now ? `overdue ${duration((now - f.due_at) / 1e6)}` : `in ${duration((f.due_at - now) / 1e6)}`;
      return el("tr", { tabIndex: 0, className: `${f.due_at <= now ? "overdue" : ""}${f.id === this.selected?.id ? " selected" : ""}`,
        dataset: { followUp: f.id, encounter: f.encounter_id }, title: dateTime(f.due_at) },
      el("td", {}, due), el("td", {}, f.label), el("td", {}, who));
    });
    this.$("fu-rows").replaceChildren(...rows);
    this.$("fu-empty").hidden = rows.length > 0;
    if (!rows.length) this.$("fu-empty").textContent = "Nothing due.";
  }

  async select(followUpId) {
    const f = this.followUps.find((x) => x.id === followUpId);
    if (!f) return;
    this.selected = f;
    this.renderWorklist();
    const form = this.$("outcome");
    form.reset();
    form.hidden = false;
    this.$("outcome-label").textContent = `— ${f.label}`;
    this.$("fu-saved").textContent = "";
    this.formState();
    try {
      const record = await api("GET", `/api/encounters/${f.encounter_id}`);
      this.records.set(f.encounter_id, record);
      if (this.selected?.id === followUpId) this.renderLoop(record);
    } catch (exc) {
      this.$("loop-summary").textContent = `Record unavailable: ${exc.message}`;
    }
  }

  formState() {
    const form = this.$("outcome"), reached = form.elements.state.value === "done";
    for (const name of ["alive", "readmitted", "mace"]) form.elements[name].disabled = !reached;
  }

  renderLoop(record) {
    const e = record.encounter, i = record.incident;
    this.$("loop-title").textContent = `${e.alias} · encounter #${e.id}`;
    const facts = [e.age != null ? `${e.age} ${e.sex ?? ""}`.trim() : null, e.chief_complaint, i.complaint !== e.chief_complaint && !i.complaint.startsWith("(") ? `call: ${i.complaint}` : null,
      e.destination ? `→ ${e.destination}` : null, e.disposition ? `discharged ${e.disposition}` : null, e.diagnosis];
    this.$("loop-summary").textContent = facts.filter(Boolean).join(" · ");
    const events = closedLoop(record);
    const t0 = events[0]?.at ?? e.contact_at;
    this.$("loop-timeline").replaceChildren(...events.map((ev) => el("li", { className: `k-${ev.kind}` },
      el("span", { className: "rel" }, `T+${duration((ev.at - t0) / 1e6)}`),
      el("span", { className: "when", title: dateTime(ev.at) }, clock(ev.at)),
      el("span", { className: "what" }, ev.what))));
    this.drawStrip(events, t0);
  }

  /** The whole loop on one line: a log time axis, so that the first minutes and the 30 days both read. */
  drawStrip(events, t0) {
    const svg = this.$("loop-strip"), w = svg.clientWidth || 600, h = 70, ns = "http://www.w3.org/2000/svg";
    const span = Math.max(3600, ...events.map((ev) => (ev.at - t0) / 1e6));
    const x = (s) => 10 + (Math.log10(1 + Math.max(0, s) / 60) / Math.log10(1 + span / 60)) * (w - 20);
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text) n.textContent = text;
      return n;
    };
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const parts = [node("line", { x1: 10, x2: w - 10, y1: 30, y2: 30, stroke: "#3a4d61", "stroke-width": 2 })];
    for (const [s, label] of [[600, "10 min"], [3600, "1 h"], [86400, "1 d"], [7 * 86400, "7 d"], [30 * 86400, "30 d"]]) {
      if (s > span * 1.05) continue;
      parts.push(node("line", { x1: x(s), x2: x(s), y1: 24, y2: 36, stroke: "#8b98a5" }),
        node("text", { x: x(s) - 12, y: 56, fill: "#8b98a5", "font-size": 11 }, label));
    }
    for (const ev of events) {
      const dot = node("circle", { cx: x((ev.at - t0) / 1e6), cy: 30, r: 5, fill: KIND_COLOR[ev.kind] ?? "#fff" });
      dot.append(node("title", {}, ev.what));
      parts.push(dot);
    }
    svg.replaceChildren(...parts);
  }

  async recordOutcome() {
    const f = this.selected, form = this.$("outcome");
    if (!f) return;
    const state = form.elements.state.value;
    const body = { state };
    if (state === "done") {
      body.alive = form.elements.alive.checked;
      body.readmitted = form.elements.readmitted.checked;
      body.mace = form.elements.mace.checked;
    }
    const notes = form.elements.notes.value.trim();
    if (notes) body.notes = notes;
    this.$("fu-error").textContent = "";
    try {
      const saved = await api("POST", `/api/follow-ups/${f.id}/outcome`, body);
      this.$("fu-saved").textContent = `${saved.label}: ${outcomeText(saved)} — recorded ${clock(saved.recorded_at)}`;
      this.records.delete(f.encounter_id);
      await this.loadWorklist();
      const record = await api("GET", `/api/encounters/${f.encounter_id}`);
      this.records.set(f.encounter_id, record);
      this.renderLoop(record);
    } catch (exc) {
      this.$("fu-error").textContent = `Not recorded: ${exc.message}`;
    }
  }

  async loadQuality() {
    let report;
    try {
      report = await api("GET", "/api/quality");
    } catch (exc) {
      this.$("quality-chart").replaceChildren();
      this.$("quality-table").tBodies[0].replaceChildren(el("tr", {}, el("td", { colSpan: 5 }, `Unavailable: ${exc.message}`)));
      return;
    }
    this.renderQuality(report);
  }

  renderQuality(report) {
    const rows = report.indicators ?? [];
    this.$("quality-table").tBodies[0].replaceChildren(...rows.map((r) => el("tr", { title: `${r.description}${r.source ? `\n${r.source}` : ""}` },
      el("td", {}, r.description ?? r.indicator), el("td", {}, String(r.count)),
      el("td", {}, r.kind === "rate" ? percent(r.proportion) : minutes(r.median_s)),
      el("td", {}, r.kind === "rate" ? (r.required_share != null ? `≥ ${percent(r.required_share)}` : "—") : (r.target_s != null ? `≤ ${minutes(r.target_s)}` : "—")),
      el("td", {}, r.kind === "rate" ? "" : percent(r.proportion)))));
    // The chart: intervals that have a target, median as a bar, target as a line; a bar past its line is red.
    const bars = rows.filter((r) => r.kind === "interval" && r.target_s != null);
    const svg = this.$("quality-chart"), ns = "http://www.w3.org/2000/svg";
    const w = svg.clientWidth || 520, rowH = 26, h = bars.length * rowH + 24, left = 190;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("height", h);
    const max = Math.max(1, ...bars.map((r) => Math.max(r.target_s, r.median_s ?? 0))) * 1.1;
    const x = (s) => left + (s / max) * (w - left - 50);
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text != null) n.textContent = text;
      return n;
    };
    const parts = [];
    bars.forEach((r, k) => {
      const y = 8 + k * rowH;
      parts.push(node("text", { x: 4, y: y + 14, fill: "#e6edf3", "font-size": 12 }, r.description.slice(0, 30)));
      if (r.median_s != null) {
        parts.push(node("rect", { x: left, y: y + 3, width: Math.max(1, x(r.median_s) - left), height: rowH - 10,
          fill: r.median_s <= r.target_s ? "#3fb950" : "#f85149" }),
        node("text", { x: x(r.median_s) + 4, y: y + 14, fill: "#8b98a5", "font-size": 11 }, `${minutes(r.median_s)} (n=${r.count})`));
      } else {
        parts.push(node("text", { x: left + 4, y: y + 14, fill: "#8b98a5", "font-size": 11 }, "no data"));
      }
      parts.push(node("line", { x1: x(r.target_s), x2: x(r.target_s), y1: y, y2: y + rowH - 4, stroke: "#f0b429", "stroke-width": 2 }));
    });
    parts.push(node("text", { x: left, y: h - 4, fill: "#8b98a5", "font-size": 11 }, "median (bar) against target (yellow line)"));
    svg.replaceChildren(...parts);
  }
}
