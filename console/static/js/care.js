// The browser's copy of the care records (incidents, encounters, alerts, activations) and the HTTP actions on them.
// Records arrive as a `care_snapshot` on connect and a `care` message on every change; a record that is no longer
// live (a closed incident, an encounter past `arrived`, a resolved alert, a cancelled activation) leaves its list.

const LIVE_ENCOUNTER = new Set(["pre_registered", "arrived"]);
export const SEVERITY_RANK = { critical: 3, warning: 2, info: 1 };
export const UNACKNOWLEDGED = new Set(["raised", "delivered"]);

// NEMSIS v3.5 eTimes order (emergency/care/_model.py ETime) and the clinical milestones after it.
export const ETIMES = [
  ["call_received", "call"], ["dispatch_notified", "dispatch"], ["unit_notified", "unit notified"],
  ["en_route", "en route"], ["on_scene", "on scene"], ["at_patient", "at patient"], ["left_scene", "left scene"],
  ["at_destination", "at hospital"], ["transfer_of_care", "handover"], ["back_in_service", "back in service"],
];
export const MILESTONES = [
  ["first_ecg", "first ECG"], ["ecg_transmitted", "ECG transmitted"], ["stemi_diagnosis", "STEMI diagnosis"],
  ["door", "door"], ["cath_lab_activated", "cath lab activated"], ["cath_lab_arrival", "cath lab arrival"],
  ["wire_crossing", "wire crossing"], ["ct_start", "CT start"], ["needle", "needle"], ["puncture", "puncture"],
  ["discharge", "discharge"],
];
export const TIME_LABEL = Object.fromEntries([...ETIMES, ...MILESTONES]);
export const TEAM_LABEL = { cath_lab: "Cath lab", stroke: "Stroke team", trauma: "Trauma team" };

export class Care {
  constructor() {
    this.incidents = new Map();
    this.encounters = new Map();
    this.alerts = new Map();
    this.activations = new Map();
    this.listeners = new Set();
  }

  onChange(listener) { this.listeners.add(listener); }

  changed(kind, record) { for (const listener of this.listeners) listener(kind, record); }

  load(snapshot) {
    for (const kind of ["incidents", "encounters", "alerts", "activations"]) this[kind].clear();
    for (const r of snapshot.incidents) this.put("incident", r);
    for (const r of snapshot.encounters) this.put("encounter", r);
    for (const r of snapshot.alerts) this.put("alert", r);
    for (const r of snapshot.activations) this.put("activation", r);
    this.changed("snapshot", null);
  }

  apply(kind, record) {
    this.put(kind, record);
    this.changed(kind, record);
  }

  put(kind, r) {
    switch (kind) {
      case "incident": r.closed_at == null ? this.incidents.set(r.id, r) : this.incidents.delete(r.id); break;
      case "encounter": LIVE_ENCOUNTER.has(r.status) ? this.encounters.set(r.id, r) : this.encounters.delete(r.id); break;
      case "alert": r.state === "resolved" ? this.alerts.delete(r.id) : this.alerts.set(r.id, r); break;
      case "activation": r.state === "cancelled" ? this.activations.delete(r.id) : this.activations.set(r.id, r); break;
    }
  }

  /** Open alerts of an encounter (or of its unit before the encounter was linked), most urgent first. */
  alertsOf(encounter) {
    return sortAlerts([...this.alerts.values()].filter((a) => a.encounter_id === encounter.id
      || (a.encounter_id == null && a.unit === encounter.unit)));
  }

  activationsOf(encounterId) {
    return [...this.activations.values()].filter((a) => a.encounter_id === encounterId);
  }

  encounterOfUnit(unit) {
    return [...this.encounters.values()].find((e) => e.unit === unit) ?? null;
  }

  /** Alerts nobody has acknowledged yet, most urgent first: the first is the one the `A` key acknowledges. */
  unacknowledged() {
    return sortAlerts([...this.alerts.values()].filter((a) => UNACKNOWLEDGED.has(a.state)));
  }
}

export function sortAlerts(alerts) {
  return alerts.sort((a, b) => (SEVERITY_RANK[b.severity] ?? 0) - (SEVERITY_RANK[a.severity] ?? 0)
    || Number(UNACKNOWLEDGED.has(b.state)) - Number(UNACKNOWLEDGED.has(a.state)) || a.raised_at - b.raised_at);
}

export class ApiError extends Error {
  constructor(status, text) {
    super(status === 403 ? `not allowed for your role (${text})` : `${status}: ${text}`);
    this.status = status;
  }
}

/** One HTTP action: JSON in and out; a refusal is thrown as an ApiError carrying the server's reason. */
export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  if (response.status === 401) location.assign("/static/login.html");
  if (!response.ok) throw new ApiError(response.status, text.trim() || response.statusText);
  return text ? JSON.parse(text) : null;
}

/** A clock time from µs since the epoch (HH:MM:SS, local time). */
export function clock(us) {
  if (us == null) return "—";
  return new Date(us / 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

export function dateTime(us) {
  if (us == null) return "—";
  const d = new Date(us / 1000);
  return `${d.toLocaleDateString()} ${clock(us)}`;
}

/** A duration for people: "4:05" under an hour, "1 h 12 min", "3 d 4 h". Negative durations get a minus sign. */
export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "—";
  const sign = seconds < 0 ? "−" : "";
  let s = Math.abs(Math.round(seconds));
  if (s < 3600) return `${sign}${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  if (s < 86400) return `${sign}${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  s = Math.floor(s / 3600);
  return `${sign}${Math.floor(s / 24)} d ${s % 24} h`;
}

/** Great-circle distance in metres. */
export function haversineM(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180, dLat = (lat2 - lat1) * rad, dLon = (lon2 - lon1) * rad;
  const a = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.sqrt(a));
}

/** Element helper: el("td", {className: "x"}, "text", child…). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}
