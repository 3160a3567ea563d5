// The console page: the socket feeds the fleet and the care records; three desks show them — dispatch (#dispatch),
// emergency department (#ed) and follow-up (#followup) — each to the roles that work there.
import { ConsoleSocket } from "./socket.js";
import { Fleet } from "./fleet.js";
import { Board, ageText } from "./board.js";
import { FleetMap } from "./map.js";
import { Care } from "./care.js";
import { Alarm } from "./alarm.js";
import { DispatchDesk, rankUnits } from "./desk_dispatch.js";
import { EdDesk } from "./desk_ed.js";
import { FollowUpDesk } from "./desk_followup.js";

const $ = (id) => document.getElementById(id);
const DESKS = ["dispatch", "ed", "followup"];
// Which desks a role works at (the server checks every action again; this only spares people desks they cannot use).
const DESKS_OF_ROLE = { dispatcher: ["dispatch"], ed_physician: ["ed"], ed_nurse: ["ed"], followup: ["followup"],
  admin: DESKS };

const fleet = new Fleet();
const care = new Care();
let desks = DESKS; // until the login says otherwise
let shown = null;

const alarm = new Alarm($("sound"));
const board = new Board($("board-rows"), fleet, select);
const map = new FleetMap($("map"), fleet, select);
const socket = new ConsoleSocket(onMessage, (up) => {
  $("conn").className = "conn " + (up ? "up" : "down");
  $("conn").textContent = up ? "live" : "reconnecting…";
});
const dispatch = new DispatchDesk({ care, fleet, map, mapCanvas: $("map"), overlay: $("map-overlay") });
const ed = new EdDesk({ care, fleet, alarm, watch: (unit) => socket.watch(unit), isShown: () => shown === "ed" });
const followup = new FollowUpDesk({ fleet });

/** A unit picked on the board or the map: highlighted; opened on the ED desk for those who work there. */
function select(unit) {
  if (!unit) return;
  board.selected = map.selected = unit;
  if (desks.includes("ed")) {
    ed.showUnit(unit);
    location.hash = "#ed";
  }
}

function show(desk) {
  if (!desks.includes(desk)) desk = desks[0];
  shown = desk;
  for (const d of DESKS) {
    $(`desk-${d}`).hidden = d !== desk;
    $(`tab-${d}`).hidden = !desks.includes(d);
    $(`tab-${d}`).classList.toggle("active", d === desk);
  }
  // One fleet board: beside the map for dispatchers, under the incoming patients on the ED desk.
  if (desk === "ed") $("ed-fleet-slot").append($("board"));
  if (desk === "dispatch") $("desk-dispatch").append($("board"));
  if (desk === "followup") followup.refresh(true);
  if (desk === "ed") ed.renderPatient();
}

async function whoami() {
  // The login, when the console has one, says who is here; without it every desk shows.
  try {
    const response = await fetch("/api/whoami", { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { location.assign("/static/login.html"); return; }
    if (!response.ok) return;
    const me = await response.json();
    desks = DESKS_OF_ROLE[me.role] ?? [];
    $("user").textContent = `${me.username ?? ""} · ${me.role}`;
    $("logout").hidden = false;
  } catch {
    // No answer: keep every desk; each action is still checked by the server.
  }
}

function onMessage(m) {
  switch (m.type) {
    case "fleet": fleet.load(m); break;
    case "ecg": ed.onEcg(m); break;
    case "care_snapshot": care.load(m); break;
    case "care": care.apply(m.kind, m.record); break;
    case "error": console.warn("console:", m.reason); break;
    case "watched": case "unwatched": break;
    default: {
      fleet.apply(m);
      if (m.type === "vitals") ed.onVitals(m.unit);
    }
  }
}

function frame(now) {
  if (shown === "dispatch") { map.draw(); dispatch.drawOverlay(); }
  if (shown === "ed") ed.drawFrame(now);
  requestAnimationFrame(frame);
}

setInterval(() => {
  board.render();
  dispatch.render();
  ed.tick();
  if (shown === "followup") followup.refresh();
  const units = [...fleet.units.values()];
  const stale = units.filter((u) => fleet.isStale(u)).length;
  $("counts").textContent = `${units.length} units · ${stale} stale · ${care.incidents.size} incidents · ${care.encounters.size} incoming`;
  $("clock").textContent = new Date().toLocaleTimeString();
}, 500);

$("logout").addEventListener("click", async () => {
  await fetch("/api/logout", { method: "POST", credentials: "same-origin" }).catch(() => null);
  location.assign("/static/login.html");
});
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
await whoami();
$("sound").hidden = !desks.includes("ed");
show(location.hash.slice(1));
requestAnimationFrame(frame);
window.__console = { fleet, care, map, select, rankUnits, ageText, desks: { dispatch, ed, followup }, alarm, get ecg() { return ed.ecg; } };
