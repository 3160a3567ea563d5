// The emergency department's desk: the incoming board (by ETA), one patient at a time (live 12-lead with rhythm
// strip, vitals with trends, NEWS2 and findings, alerts, team activation, times, the ATMIST-ER handoff), and the
// critical-alert banner and alarm. Keyboard: `A` acknowledges the top unacknowledged alert; every alert's button
// takes Enter; a board row takes Enter to open the patient.
import { api, clock, duration, el, TEAM_LABEL, TIME_LABEL, UNACKNOWLEDGED } from "./care.js";
import { EcgView } from "./ecg.js";

const HANDOFF_REFRESH_MS = 15000;

function ageSex(e) {
  const sex = { male: "M", female: "F" }[e.sex] ?? (e.sex ? e.sex[0].toUpperCase() : "");
  return [e.age != null ? `${e.age}` : "", sex].filter(Boolean).join(" ") || "—";
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

export class EdDesk {
  constructor({ care, fleet, alarm, watch, isShown }) {
    this.care = care;
    this.fleet = fleet;
    this.alarm = alarm;
    this.watch = watch; // (unit) → the socket follows that unit's ECG
    this.isShown = isShown;
    this.encounterId = null; // the patient shown
    this.unit = null; // the unit whose monitor is shown (the patient's, or one picked on the fleet board)
    this.rows = new Map();
    this.handoff = null;
    this.handoffAt = 0;
    const $ = (id) => document.getElementById(id);
    this.$ = $;
    this.ecg = new EcgView($("ecg"), (state) => this.signal(state), { layout: "12-lead" });
    $("ed-rows").addEventListener("click", (e) => { const tr = e.target.closest("tr"); if (tr) this.select(Number(tr.dataset.encounter)); });
    $("ed-rows").addEventListener("keydown", (e) => {
      const tr = e.target.closest("tr");
      if (tr && e.key === "Enter") this.select(Number(tr.dataset.encounter));
    });
    $("alarm-ack").addEventListener("click", () => this.acknowledgeTop());
    $("alarm-text").addEventListener("click", () => { const top = this.care.unacknowledged()[0]; if (top?.encounter_id) this.select(top.encounter_id); });
    document.addEventListener("keydown", (e) => {
      if ((e.key === "a" || e.key === "A") && !e.ctrlKey && !e.metaKey && !e.altKey && this.isShown() && !isTyping(e.target)) {
        e.preventDefault();
        this.acknowledgeTop();
      }
    });
    for (const b of $("activations").querySelectorAll("button")) b.addEventListener("click", () => this.activate(b.dataset.team));
    for (const b of $("milestones").querySelectorAll("button")) b.addEventListener("click", () => this.milestone(b.dataset.milestone));
    $("handoff").addEventListener("submit", (e) => { e.preventDefault(); this.saveHandoff(); });
    care.onChange((kind, record) => this.onCare(kind, record));
    this.signal("none");
  }

  error(text) { this.$("ed-error").textContent = text; }

  signal(state) {
    const badge = this.$("signal");
    badge.className = "signal " + state;
    badge.textContent = { live: "LIVE", stale: "SIGNAL LOST", waiting: "waiting…", none: "no unit" }[state] ?? state;
  }

  get encounter() { return this.encounterId != null ? this.care.encounters.get(this.encounterId) ?? null : null; }

  // -- choosing the patient ----------------------------------------------------------------------------------

  select(encounterId) {
    const e = this.care.encounters.get(encounterId);
    if (!e) return;
    const changed = encounterId !== this.encounterId;
    this.encounterId = encounterId;
    this.showUnit(e.unit);
    if (changed) { this.handoff = null; this.handoffAt = 0; this.$("handoff").replaceChildren(); this.error(""); }
    this.renderPatient();
  }

  /** Show a unit's monitor: its patient's record when it has an encounter, the bare monitor otherwise. */
  showUnit(unit) {
    if (!unit) return;
    const e = this.care.encounterOfUnit(unit);
    if (e && e.id !== this.encounterId) { this.select(e.id); return; }
    if (!e) this.encounterId = null;
    if (unit !== this.unit) {
      this.unit = unit;
      this.ecg.reset(unit);
      this.signal("waiting");
      this.watch(unit);
    }
    this.renderPatient();
  }

  onCare(kind, record) {
    if (kind === "snapshot" || kind === "encounter") {
      if (this.encounterId != null && !this.care.encounters.has(this.encounterId)) this.encounterId = null;
      if (this.encounterId == null && this.unit == null) {
        const first = this.ordered()[0];
        if (first) this.select(first.id);
      } else if (this.encounterId == null && this.unit) {
        const e = this.care.encounterOfUnit(this.unit);
        if (e) this.select(e.id);
      }
    }
    this.renderBoard();
    this.renderAlarm();
    if (this.encounter && (!record || record.id === this.encounterId || record.encounter_id === this.encounterId
        || record.unit === this.unit)) this.renderPatient();
  }

  ordered() {
    const key = (e) => e.door_at ?? e.eta_at ?? Infinity;
    return [...this.care.encounters.values()].sort((a, b) => key(a) - key(b) || a.contact_at - b.contact_at);
  }

  telemetryLost(unit) {
    const u = this.fleet.units.get(unit);
    const lostAlert = [...this.care.alerts.values()].some((a) => a.unit === unit && a.kind === "telemetry_lost");
    return lostAlert || (u ? this.fleet.isStale(u) : false);
  }

  // -- the incoming board ------------------------------------------------------------------------------------

  renderBoard() {
    const tbody = this.$("ed-rows");
    const encounters = this.ordered();
    const live = new Set(encounters.map((e) => e.id));
    for (const [id, tr] of this.rows) if (!live.has(id)) { tr.remove(); this.rows.delete(id); }
    const now = this.fleet.nowServerUs();
    encounters.forEach((e, i) => {
      let tr = this.rows.get(e.id);
      if (!tr) {
        tr = el("tr", { tabIndex: 0, dataset: { encounter: e.id } });
        tr.innerHTML = "<td class=acuity></td><td class=alias></td><td class=demo></td><td class=complaint></td><td class=eta></td><td class=dest></td><td class=alerts></td>";
        this.rows.set(e.id, tr);
      }
      const lost = this.telemetryLost(e.unit);
      tr.className = `${e.acuity}${lost ? " stale" : ""}${e.id === this.encounterId ? " watched" : ""}`;
      tr.cells[0].title = `acuity ${e.acuity}`;
      tr.cells[1].replaceChildren(e.alias, el("br"), el("small", { className: "muted" }, lost ? `${e.unit} · TELEMETRY LOST` : e.unit));
      tr.cells[2].textContent = ageSex(e);
      tr.cells[3].textContent = e.chief_complaint ?? "—";
      tr.cells[4].textContent = e.door_at ? `in ${clock(e.door_at)}` : e.eta_at ? (e.eta_at > now ? duration((e.eta_at - now) / 1e6) : "due") : "—";
      tr.cells[5].textContent = e.destination ?? "—";
      const alerts = this.care.alertsOf(e);
      const open = alerts.filter((a) => UNACKNOWLEDGED.has(a.state));
      const worst = alerts[0]?.severity ?? "";
      tr.cells[6].replaceChildren(alerts.length
        ? el("span", { className: `badge ${open.length ? worst : ""}`, title: alerts.map((a) => a.summary).join("\n") },
          open.length ? `${open.length} new` : `${alerts.length}`) : "");
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] ?? null);
    });
    this.$("ed-empty").hidden = encounters.length > 0;
  }

  // -- alarm ---------------------------------------------------------------------------------------------------

  aliasOf(alert) {
    return this.care.encounters.get(alert.encounter_id)?.alias ?? `unit ${alert.unit}`;
  }

  renderAlarm() {
    const open = this.care.unacknowledged();
    const top = open[0];
    const banner = this.$("alarm-banner");
    this.alarm.update(open.filter((a) => a.severity === "critical").length);
    if (!top || top.severity === "info") {
      banner.className = "alarm-banner quiet";
      this.$("alarm-text").textContent = "No unacknowledged critical alerts";
      this.$("alarm-ack").hidden = true;
      return;
    }
    banner.className = `alarm-banner ${top.severity}`;
    banner.dataset.alert = top.id;
    const more = open.length > 1 ? ` (+${open.length - 1} more)` : "";
    this.$("alarm-text").textContent = `${top.severity.toUpperCase()} · ${this.aliasOf(top)} · ${top.summary}${more}`;
    this.$("alarm-ack").hidden = false;
  }

  async acknowledgeTop() {
    const top = this.care.unacknowledged()[0];
    if (top) await this.acknowledge(top);
  }

  async acknowledge(alert) {
    try {
      this.care.apply("alert", await api("POST", `/api/alerts/${alert.id}/acknowledge`));
      this.error("");
    } catch (exc) {
      this.error(`Alert not acknowledged: ${exc.message}`);
    }
  }

  // -- the patient ---------------------------------------------------------------------------------------------

  renderPatient() {
    const $ = this.$, e = this.encounter;
    $("alias").textContent = e ? e.alias : this.unit ? "No encounter" : "Select a patient";
    $("watched").textContent = this.unit ?? "";
    $("p-demo").textContent = e ? `${ageSex(e)} · ${e.chief_complaint ?? "complaint not recorded"}` : "";
    $("p-dest").textContent = e ? `→ ${e.destination ?? "destination not set"}` : "";
    $("p-door").textContent = e?.door_at ? `Door ${clock(e.door_at)}` : "";
    this.renderVitals();
    this.renderAlerts();
    this.renderTeams();
    this.renderTimes();
    const findings = $("findings");
    findings.replaceChildren(...(e?.findings ?? []).slice(-6).reverse().map((f) => el("li", { title: clock(f.at) }, f.text)));
    if (e && Date.now() - this.handoffAt > HANDOFF_REFRESH_MS) this.loadHandoff();
  }

  renderVitals() {
    const $ = this.$;
    const u = this.unit ? this.fleet.unit(this.unit) : { vitals: {} };
    const v = u.vitals ?? {};
    const f = (x, d = 0) => (x == null ? "--" : Number(x).toFixed(d));
    $("v-hr").textContent = f(v.hr);
    $("v-spo2").textContent = f(v.spo2);
    $("v-bp").textContent = v.sbp != null ? `${f(v.sbp)}/${f(v.dbp)}` : "--/--";
    $("v-map").textContent = v.map != null ? `(${f(v.map)}) mmHg` : "mmHg";
    $("v-rr").textContent = f(v.rr);
    $("v-etco2").textContent = f(v.etco2);
    $("v-temp").textContent = f(v.temp, 1);
    // Partial until the crew records oxygen and consciousness: a lower bound, shown with "≥".
    $("v-news2").textContent = u.news2 ? `${u.news2.partial ? "≥" : ""}${u.news2.total}` : "--";
    $("v-news2-risk").textContent = u.news2 ? u.news2.risk : "";
    $("news2-tile").className = "vital news2 " + (u.news2?.risk ?? "");
    for (const canvas of document.querySelectorAll("#vitals canvas.spark")) this.sparkline(canvas, u.trend ?? [], canvas.dataset.key);
  }

  /** A trend line of the last minutes; its own min–max scale, labelled, so that a flat line still reads true. */
  sparkline(canvas, trend, key) {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const points = trend.filter((p) => p[key] != null);
    if (points.length < 2) return;
    const values = points.map((p) => p[key]);
    let lo = Math.min(...values), hi = Math.max(...values);
    if (hi - lo < 1) { lo -= 1; hi += 1; }
    const t1 = this.fleet.nowServerUs(), t0 = t1 - 15 * 60e6;
    const x = (t) => ((t - t0) / (t1 - t0)) * (w - 30), y = (val) => h - 3 - ((val - lo) / (hi - lo)) * (h - 6);
    g.strokeStyle = getComputedStyle(canvas).color; g.lineWidth = 1.5; g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key]))));
    g.stroke();
    g.fillStyle = "#8b98a5"; g.font = "10px system-ui";
    g.fillText(hi.toFixed(0), w - 26, 10); g.fillText(lo.toFixed(0), w - 26, h - 2);
  }

  renderAlerts() {
    const e = this.encounter, list = this.$("p-alerts");
    const alerts = e ? this.care.alertsOf(e) : [...this.care.alerts.values()].filter((a) => a.unit === this.unit);
    const focused = document.activeElement?.closest?.("#p-alerts li")?.dataset.alert;
    list.replaceChildren(...alerts.map((a) => {
      const unacked = UNACKNOWLEDGED.has(a.state);
      const li = el("li", { className: `${a.severity}${unacked ? " unacked" : ""}`, dataset: { alert: a.id, kind: a.kind } },
        el("span", { className: "summary" }, a.summary),
        el("span", { className: "state" }, unacked ? clock(a.raised_at) : `ack ${a.acknowledged_by ?? ""} ${clock(a.acknowledged_at)}`));
      if (unacked) li.append(el("button", { type: "button", className: "ack", onclick: () => this.acknowledge(a) }, "Acknowledge"));
      return li;
    }));
    if (!alerts.length) list.append(el("li", { className: "muted" }, "No open alerts"));
    if (focused) list.querySelector(`li[data-alert="${focused}"] button`)?.focus();
  }

  renderTeams() {
    const e = this.encounter;
    const activations = e ? this.care.activationsOf(e.id) : [];
    for (const b of this.$("activations").querySelectorAll("button")) {
      const a = activations.filter((x) => x.team === b.dataset.team).sort((p, q) => q.requested_at - p.requested_at)[0];
      b.className = a ? a.state : "";
      b.disabled = !e || a?.state === "acknowledged";
      b.dataset.activation = a ? a.id : "";
      b.querySelector(".state").textContent = a ? `${a.state} ${clock(a.state === "acknowledged" ? a.acknowledged_at : a.requested_at)}` : "";
      b.title = !a ? `Activate the ${TEAM_LABEL[b.dataset.team]}` : a.state === "requested" ? "Record that the team acknowledged" : "";
    }
  }

  renderTimes() {
    const e = this.encounter, dl = this.$("p-times");
    if (!e) { dl.replaceChildren(); return; }
    const times = [["first contact", e.contact_at], ...e.times.map((t) => [TIME_LABEL[t.name] ?? t.name, t.at])];
    if (e.eta_at && !e.door_at) times.push(["ETA", e.eta_at]);
    times.sort((a, b) => a[1] - b[1]);
    dl.replaceChildren(...times.flatMap(([name, at]) => [el("dt", {}, name), el("dd", {}, clock(at))]));
    const recorded = new Set(e.times.map((t) => t.name));
    for (const b of this.$("milestones").querySelectorAll("button")) b.disabled = recorded.has(b.dataset.milestone);
  }

  async activate(team) {
    const e = this.encounter;
    if (!e) return;
    const button = this.$("activations").querySelector(`button[data-team="${team}"]`);
    try {
      if (button.dataset.activation) {
        this.care.apply("activation", await api("POST", `/api/activations/${button.dataset.activation}/acknowledge`));
      } else {
        this.care.apply("activation", await api("POST", `/api/encounters/${e.id}/activations`, { team }));
      }
      this.error("");
    } catch (exc) {
      this.error(`${TEAM_LABEL[team]}: ${exc.message}`);
    }
  }

  async milestone(name) {
    const e = this.encounter;
    if (!e) return;
    try {
      this.care.apply("encounter", await api("POST", `/api/encounters/${e.id}/milestones`, { name }));
      this.error("");
    } catch (exc) {
      this.error(`${TIME_LABEL[name] ?? name} not recorded: ${exc.message}`);
    }
  }

  // -- the handoff ---------------------------------------------------------------------------------------------

  async loadHandoff() {
    const id = this.encounterId;
    this.handoffAt = Date.now();
    try {
      const handoff = await api("GET", `/api/encounters/${id}/handoff`);
      if (id === this.encounterId) this.renderHandoff(handoff);
    } catch (exc) {
      if (id === this.encounterId) this.error(`Handoff: ${exc.message}`);
    }
  }

  /** Fields being edited keep the user's text; the rest follow the composed handoff. */
  renderHandoff(handoff) {
    this.handoff = handoff;
    const form = this.$("handoff");
    if (!form.querySelector("textarea")) {
      form.replaceChildren(...handoff.sections.map((s) => el("div", { className: "section" },
        el("label", { htmlFor: `handoff-${s.key}` }, s.title),
        el("textarea", { id: `handoff-${s.key}`, name: s.key, rows: 2, maxLength: 1000 }))),
      el("div", { className: "actions" }, el("button", { type: "submit" }, "Save handoff"),
        el("span", { id: "handoff-saved", className: "ok" })));
    }
    for (const s of handoff.sections) {
      const area = form.elements[s.key];
      if (!area || area.dataset.dirty === "1" || document.activeElement === area) continue;
      area.value = s.effective;
      area.placeholder = s.text;
      area.dataset.composed = s.text;
      area.classList.toggle("edited", s.edited != null);
      area.oninput = () => { area.dataset.dirty = "1"; };
    }
  }

  async saveHandoff() {
    const e = this.encounter, form = this.$("handoff");
    if (!e || !this.handoff) return;
    const changes = {};
    for (const s of this.handoff.sections) {
      const area = form.elements[s.key];
      if (area?.dataset.dirty !== "1") continue;
      const text = area.value.trim();
      changes[s.key] = text && text !== s.text ? text : null; // empty, or back to the composed text: no override
    }
    if (!Object.keys(changes).length) return;
    try {
      this.care.apply("encounter", await api("PUT", `/api/encounters/${e.id}/handoff`, changes));
      for (const area of form.querySelectorAll("textarea")) area.dataset.dirty = "";
      this.$("handoff-saved").textContent = `saved ${clock(this.fleet.nowServerUs())}`;
      this.handoffAt = 0;
      await this.loadHandoff();
    } catch (exc) {
      this.error(`Handoff not saved: ${exc.message}`);
    }
  }

  // -- live data -----------------------------------------------------------------------------------------------

  onVitals(unit) { if (unit === this.unit) this.renderVitals(); }

  onEcg(frame) { this.ecg.push(frame); }

  /** Twice a second: countdowns, staleness, the telemetry banner. */
  tick() {
    this.renderBoard();
    const lost = this.unit != null && this.telemetryLost(this.unit);
    const banner = this.$("telemetry-banner");
    banner.hidden = !lost;
    if (lost) {
      const u = this.fleet.units.get(this.unit);
      const age = u ? this.fleet.ageS(u) : Infinity;
      banner.textContent = `TELEMETRY LOST · ${this.unit} · last data ${isFinite(age) ? duration(age) : "never"} ago`;
      this.signal("stale");
    }
  }

  drawFrame(now) { this.ecg.draw(now); }
}
