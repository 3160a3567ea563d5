// The browser's copy of the fleet, with staleness judged on the server's clock (offset from `server_time`), and
// each unit's recent vitals for the trend sparklines.
const TREND_S = 15 * 60; // the trends show the last 15 minutes
const TREND_MAX = 1800; // bounded: at one reading a second, older points are dropped first
const TREND_KEYS = ["hr", "spo2", "sbp", "rr", "etco2", "temp"];

export class Fleet {
  constructor() {
    this.units = new Map();
    this.clockOffsetUs = 0; // server_time - local time
    this.staleAfterS = 10;
  }

  nowServerUs() { return Date.now() * 1000 + this.clockOffsetUs; }

  load(snapshot) {
    this.clockOffsetUs = snapshot.server_time - Date.now() * 1000;
    this.staleAfterS = snapshot.stale_after_s ?? this.staleAfterS;
    const trends = new Map([...this.units].map(([id, u]) => [id, u.trend]));
    this.units.clear();
    for (const u of snapshot.units) this.units.set(u.unit, { ...u, vitals: u.vitals ?? {}, trend: trends.get(u.unit) ?? [] });
  }

  unit(id) {
    let u = this.units.get(id);
    if (!u) { u = { unit: id, status: null, vitals: {}, link: "live", last_rx: null, trend: [] }; this.units.set(id, u); }
    return u;
  }

  apply(m) {
    const u = this.unit(m.unit);
    if (m.rx) u.last_rx = Math.max(u.last_rx ?? 0, m.rx);
    switch (m.type) {
      case "gps": Object.assign(u, { lat: m.lat, lon: m.lon, speed: m.speed, heading: m.heading, fix_ts: m.ts }); u.link = "live"; break;
      case "vitals":
        for (const k of ["hr", "sbp", "dbp", "map", "spo2", "rr", "temp", "etco2"]) if (m[k] != null) u.vitals[k] = m[k];
        if (m.news2) u.news2 = m.news2;
        u.link = "live";
        this.addTrend(u, m);
        break;
      case "status": u.status = m.status; break;
      case "link": u.link = m.condition; u.last_rx = Math.max(u.last_rx ?? 0, m.last_rx); break;
    }
    return u;
  }

  addTrend(u, m) {
    const point = { t: m.rx ?? this.nowServerUs() };
    for (const k of TREND_KEYS) if (m[k] != null) point[k] = m[k];
    u.trend.push(point);
    const oldest = point.t - TREND_S * 1e6;
    while (u.trend.length > TREND_MAX || (u.trend.length && u.trend[0].t < oldest)) u.trend.shift();
  }

  ageS(u) { return u.last_rx ? Math.max(0, (this.nowServerUs() - u.last_rx) / 1e6) : Infinity; }
  isStale(u) { return u.link === "silent" || this.ageS(u) > this.staleAfterS; }
}
