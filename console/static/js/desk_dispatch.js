// The dispatcher's desk: a new call (priority, complaint, address, a click on the map for the location), the queue
// of open incidents with each one's eTimes timeline, and assignment with the nearest available unit recommended.
import { api, clock, duration, el, ETIMES, haversineM } from "./care.js";

const R = 6378137;

/**
 * The units that may take an incident, best first: available, live (not stale) and positioned, ranked by
 * straight-line distance to the incident. The one place the recommendation is made; a drive-time ranking from the
 * server would replace the distance here. An incident without a location gets no recommendation (empty list).
 */
export function rankUnits(incident, fleet, busy = new Set()) {
  if (incident.lat == null || incident.lon == null) return [];
  return [...fleet.units.values()]
    .filter((u) => u.status === "available" && u.lat != null && !fleet.isStale(u) && !busy.has(u.unit))
    .map((u) => ({ unit: u.unit, metres: haversineM(incident.lat, incident.lon, u.lat, u.lon) }))
    .sort((a, b) => a.metres - b.metres || a.unit.localeCompare(b.unit));
}

/** "3 min · 1.2 km" by road, or the straight-line distance. */
function away(r) { return r.drive_time_s != null ? `${Math.max(1, Math.round(r.drive_time_s / 60))} min · ${km(r.metres)}` : km(r.metres); }

function km(metres) { return metres < 1000 ? `${Math.round(metres)} m` : `${(metres / 1000).toFixed(1)} km`; }

/**
 * Screen ↔ map coordinates. map.js may provide `toLatLon(x, y)` and `toScreen(lat, lon)`; until it does, the
 * view it keeps (`view = {cx, cy, scale}`, Web Mercator metres, metres per CSS pixel, centred) is inverted here.
 */
function projection(map, canvas) {
  if (typeof map.toLatLon === "function" && typeof map.toScreen === "function") {
    return { toLatLon: (x, y) => map.toLatLon(x, y), toScreen: (lat, lon) => map.toScreen(lat, lon) };
  }
  const v = map.view;
  if (!v || !isFinite(v.scale) || v.scale <= 0) return null;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  return {
    toLatLon(x, y) {
      const mx = v.cx + (x - w / 2) * v.scale, my = v.cy - (y - h / 2) * v.scale;
      return [(2 * Math.atan(Math.exp(my / R)) - Math.PI / 2) * 180 / Math.PI, (mx / R) * 180 / Math.PI];
    },
    toScreen(lat, lon) {
      const mx = (lon * Math.PI / 180) * R, my = Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI / 180) / 2)) * R;
      return [w / 2 + (mx - v.cx) / v.scale, h / 2 - (my - v.cy) / v.scale];
    },
  };
}

export class DispatchDesk {
  constructor({ care, fleet, map, mapCanvas, overlay }) {
    this.care = care;
    this.fleet = fleet;
    this.map = map;
    this.mapCanvas = mapCanvas;
    this.overlay = overlay;
    this.picked = null; // [lat, lon] of the call being taken
    this.cards = new Map(); // incident id → {li, signature}
    this.byRoad = new Map(); // incident id → units ranked by drive time, from the console (refreshed every 10 s)
    setInterval(() => this.refreshRoadRanking(), 10_000);
    const $ = (id) => document.getElementById(id);
    this.form = $("incident-form");
    this.list = $("incident-list");
    this.error = $("inc-error");
    this.location = $("inc-location");
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.createIncident(); });
    mapCanvas.addEventListener("click", (e) => this.pick(e));
    mapCanvas.parentElement.classList.add("picking");
    care.onChange((kind) => { if (kind === "incident" || kind === "snapshot") this.render(); });
  }

  pick(event) {
    const r = this.mapCanvas.getBoundingClientRect();
    const x = event.clientX - r.left, y = event.clientY - r.top;
    // A click on a unit marker selects the unit (map.js); anywhere else it places the call.
    if ((this.map.markers ?? []).some((m) => (m.x - x) ** 2 + (m.y - y) ** 2 < 18 * 18)) return;
    const p = projection(this.map, this.mapCanvas);
    if (!p) return;
    this.setLocation(...p.toLatLon(x, y));
  }

  setLocation(lat, lon) {
    this.picked = [lat, lon];
    this.location.textContent = `Location: ${lat.toFixed(5)}, ${lon.toFixed(5)}`;
    this.location.classList.add("picked");
  }

  async createIncident() {
    const f = this.form.elements;
    const body = { priority: Number(f.priority.value), complaint: f.complaint.value.trim() };
    if (f.address.value.trim()) body.address = f.address.value.trim();
    if (this.picked) [body.lat, body.lon] = this.picked;
    this.error.textContent = "";
    try {
      const incident = await api("POST", "/api/incidents", body);
      this.care.apply("incident", incident);
      this.form.reset();
      this.picked = null;
      this.location.textContent = "Location: click the map";
      this.location.classList.remove("picked");
      f.complaint.focus();
    } catch (exc) {
      this.error.textContent = `Not created: ${exc.message}`;
    }
  }

  async assign(incident, unit) {
    this.error.textContent = "";
    try {
      this.care.apply("incident", await api("POST", `/api/incidents/${incident.id}/assign`, { unit }));
    } catch (exc) {
      this.error.textContent = `${unit} not assigned: ${exc.message}`;
    }
  }

  /** The console ranks available units by drive time on the street map; until it answers, straight line. */
  async refreshRoadRanking() {
    const open = [...this.care.incidents.values()].filter((i) => !i.unit && i.lat != null);
    const live = new Set(open.map((i) => i.id));
    for (const id of this.byRoad.keys()) if (!live.has(id)) this.byRoad.delete(id);
    for (const incident of open) {
      try {
        this.byRoad.set(incident.id, await api("GET", `/api/incidents/${incident.id}/candidates`));
      } catch {
        this.byRoad.delete(incident.id); // straight line meanwhile
      }
    }
    if (open.length) this.render();
  }

  busyUnits() {
    return new Set([...this.care.incidents.values()].map((i) => i.unit).filter(Boolean));
  }

  ordered() {
    return [...this.care.incidents.values()].sort((a, b) => a.priority - b.priority || a.call_received_at - b.call_received_at);
  }

  /** Rebuild a card only when what it shows changed (a card being used keeps its focus). */
  render() {
    const busy = this.busyUnits();
    const incidents = this.ordered();
    const live = new Set(incidents.map((i) => i.id));
    for (const [id, card] of this.cards) if (!live.has(id)) { card.li.remove(); this.cards.delete(id); }
    incidents.forEach((incident, index) => {
      const ranked = incident.unit ? [] : (this.byRoad.get(incident.id) ?? rankUnits(incident, this.fleet, busy));
      const record = JSON.stringify(incident);
      const ranking = JSON.stringify(ranked.map((r) => [r.unit, Math.round(r.metres / 100)]));
      let card = this.cards.get(incident.id);
      const inUse = card?.li.contains(document.activeElement);
      // A new ranking waits while someone is choosing from the card; a change of the incident itself does not.
      if (!card || card.record !== record || (card.ranking !== ranking && !inUse)) {
        const li = this.card(incident, ranked);
        if (card) card.li.replaceWith(li);
        if (inUse) li.focus();
        card = { li, record, ranking };
        this.cards.set(incident.id, card);
      }
      if (this.list.children[index] !== card.li) this.list.insertBefore(card.li, this.list.children[index] ?? null);
    });
    this.tick();
  }

  card(incident, ranked) {
    const li = el("li", { className: `incident p${incident.priority}`, tabIndex: -1, dataset: { incident: incident.id } });
    li.append(el("div", { className: "line1" },
      el("span", { className: "prio" }, `P${incident.priority}`),
      el("span", { className: "complaint" }, incident.complaint),
      el("span", { className: "since", dataset: { since: incident.call_received_at } }, "")));
    const where = [incident.address, incident.lat != null ? `${incident.lat.toFixed(4)}, ${incident.lon.toFixed(4)}` : null]
      .filter(Boolean).join(" · ") || "no location";
    li.append(el("div", { className: "where" }, `#${incident.id} · ${where}`));
    if (incident.unit) {
      li.append(el("div", { className: "assigned" }, `Unit ${incident.unit}`));
    } else {
      const row = el("div", { className: "assign" });
      if (ranked.length) {
        const best = ranked[0];
        const byRoad = best.drive_time_s != null;
        row.append(el("button", { type: "button", className: "recommended", dataset: { unit: best.unit },
          title: byRoad ? "Fastest available unit by road" : "Nearest available unit (straight line)",
          onclick: () => this.assign(incident, best.unit) },
        `Assign ${best.unit} · ${away(best)}`));
        if (ranked.length > 1) {
          const select = el("select", { "aria-label": "Other units" },
            ...ranked.slice(1).map((r) => el("option", { value: r.unit }, `${r.unit} · ${away(r)}`)));
          row.append(select, el("button", { type: "button", onclick: () => this.assign(incident, select.value) }, "Assign"));
        }
      } else {
        row.append(el("span", { className: "muted" },
          incident.lat == null ? "No location: no recommendation" : "No unit available"));
      }
      li.append(row);
    }
    li.append(this.timeline(incident));
    return li;
  }

  timeline(incident) {
    const at = new Map(incident.times.map((t) => [t.name, t.at]));
    if (!at.has("call_received")) at.set("call_received", incident.call_received_at);
    return el("ol", { className: "etimes", "aria-label": "Status timeline" }, ...ETIMES.map(([name, label]) =>
      el("li", { className: at.has(name) ? "done" : "" }, el("b", {}, label), at.has(name) ? clock(at.get(name)) : "—")));
  }

  /** Once a second: the time since each call. */
  tick() {
    const now = this.fleet.nowServerUs();
    for (const span of this.list.querySelectorAll(".since")) span.textContent = duration(Math.max(0, now - Number(span.dataset.since)) / 1e6);
  }

  /** Every frame while the desk shows: incident pins and the location being picked, over the map. */
  drawOverlay() {
    const c = this.overlay, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const p = projection(this.map, this.mapCanvas);
    if (!p) return;
    const pin = (lat, lon, color, text) => {
      const [x, y] = p.toScreen(lat, lon);
      g.save(); g.translate(x, y); g.rotate(Math.PI / 4);
      g.fillStyle = color; g.strokeStyle = "#0f1419"; g.lineWidth = 2;
      g.fillRect(-7, -7, 14, 14); g.strokeRect(-7, -7, 14, 14); g.restore();
      g.fillStyle = color; g.font = "700 12px system-ui"; g.fillText(text, x + 11, y - 8);
    };
    for (const i of this.care.incidents.values()) if (i.lat != null) pin(i.lat, i.lon, "#f0b429", `P${i.priority} #${i.id}`);
    if (this.picked) pin(...this.picked, "#ffffff", "new call");
  }
}
