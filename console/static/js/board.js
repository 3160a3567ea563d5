// The fleet status board: one row per unit, stale rows unmistakable.
const label = { available: "available", dispatched: "dispatched", en_route: "en route", on_scene: "on scene",
  transporting: "transporting", at_destination: "at hospital", out_of_service: "out of service" };

export function ageText(seconds) {
  if (!isFinite(seconds)) return "never";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h`;
}

export class Board {
  constructor(tbody, fleet, onSelect) {
    this.tbody = tbody;
    this.fleet = fleet;
    this.rows = new Map();
    this.selected = null;
    tbody.addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr) onSelect(tr.dataset.unit);
    });
  }

  render() {
    const units = [...this.fleet.units.values()].sort((a, b) => a.unit.localeCompare(b.unit));
    for (const u of units) {
      let tr = this.rows.get(u.unit);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.unit = u.unit;
        tr.innerHTML = "<td class=unit></td><td><span class=chip></span></td><td class=speed></td><td class=age></td><td class=hr></td><td class=spo2></td><td class=news2></td>";
        this.rows.set(u.unit, tr);
      }
      const stale = this.fleet.isStale(u);
      const age = this.fleet.ageS(u);
      tr.className = (stale ? "stale" : "") + (u.unit === this.selected ? " watched" : "");
      tr.cells[0].textContent = u.unit;
      const chip = tr.cells[1].firstChild;
      chip.className = "chip " + (stale ? "stale" : u.status ?? "");
      chip.textContent = stale ? `STALE ${ageText(age)}` : (label[u.status] ?? "—");
      tr.cells[2].textContent = u.speed != null ? `${(u.speed * 3.6).toFixed(0)} km/h` : "—";
      tr.cells[3].textContent = ageText(age);
      // Vitals reach only roles that may see patient data; for the others these cells stay empty.
      tr.cells[4].textContent = u.vitals?.hr != null ? u.vitals.hr.toFixed(0) : "—";
      tr.cells[5].textContent = u.vitals?.spo2 != null ? u.vitals.spo2.toFixed(0) : "—";
      tr.cells[6].textContent = u.news2 ? `${u.news2.partial ? "≥" : ""}${u.news2.total}` : "—";
      tr.cells[6].className = "news2 " + (u.news2?.risk ?? "");
    }
    // Keep DOM order stable and sorted without rebuilding rows (no layout jumps).
    units.forEach((u, i) => {
      const tr = this.rows.get(u.unit);
      if (this.tbody.children[i] !== tr) this.tbody.insertBefore(tr, this.tbody.children[i] ?? null);
    });
  }
}
