// The console page: wires the socket to the fleet state, the board, the map, and the watched unit's monitor.
import { ConsoleSocket } from "./socket.js";
import { Fleet } from "./fleet.js";
import { Board, ageText } from "./board.js";
import { FleetMap } from "./map.js";
import { EcgView } from "./ecg.js";

const $ = (id) => document.getElementById(id);
const fleet = new Fleet();
let watched = null;

const signalBadge = (state) => {
  const el = $("signal");
  el.className = "signal " + state;
  el.textContent = { live: "LIVE", stale: "SIGNAL LOST", waiting: "waiting…", none: "no unit" }[state] ?? state;
};
const ecg = new EcgView($("ecg"), signalBadge);
const board = new Board($("board-rows"), fleet, select);
const map = new FleetMap($("map"), fleet, select);
const socket = new ConsoleSocket(onMessage, (up) => {
  $("conn").className = "conn " + (up ? "up" : "down");
  $("conn").textContent = up ? "live" : "reconnecting…";
});

function select(unit) {
  if (!unit || unit === watched) return;
  watched = unit;
  board.selected = map.selected = unit;
  $("watched").textContent = unit;
  $("events").replaceChildren();
  ecg.reset(unit);
  signalBadge("waiting");
  showVitals(fleet.unit(unit));
  socket.watch(unit);
}

function showVitals(u) {
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
}

function logEvent(m) {
  const li = document.createElement("li");
  const when = new Date(m.ts / 1000).toLocaleTimeString();
  const what = m.type === "status" ? `status → ${m.status}` : `${m.kind} ${Object.entries(m.detail ?? {}).map(([k, v]) => `${k}=${v}`).join(" ")}`;
  li.textContent = `${when} ${what}`;
  $("events").prepend(li);
  while ($("events").children.length > 50) $("events").lastChild.remove();
}

function onMessage(m) {
  switch (m.type) {
    case "fleet": fleet.load(m); break;
    case "ecg": ecg.push(m); break;
    case "error": console.warn("console:", m.reason); break;
    case "watched": case "unwatched": break;
    case "care_snapshot": case "care": break; // care records: the desks show them
    default: {
      const u = fleet.apply(m);
      if (m.unit === watched) {
        if (m.type === "vitals") showVitals(u);
        if (m.type === "status" || m.type === "event") logEvent(m);
      }
    }
  }
}

function frame(now) {
  ecg.draw(now);
  map.draw();
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

setInterval(() => {
  board.render();
  const units = [...fleet.units.values()];
  const stale = units.filter((u) => fleet.isStale(u)).length;
  $("counts").textContent = `${units.length} units · ${stale} stale`;
  $("clock").textContent = new Date().toLocaleTimeString();
  if (watched && fleet.isStale(fleet.unit(watched))) signalBadge("stale");
  if (!watched && units.length) select(units.sort((a, b) => a.unit.localeCompare(b.unit))[0].unit);
}, 500);
window.__console = { fleet, ecg, select, ageText }; // for browser tests and the curious
