// The fleet map: Web Mercator fitted to the street extract and the fleet, the streets (GET /api/streets, drawn from
// OpenStreetMap data: the attribution stays in the corner), a graticule, a scale bar, and status-coloured unit markers.
const COLORS = { available: "#3fb950", dispatched: "#d29922", en_route: "#d29922", on_scene: "#f85149",
  transporting: "#a371f7", at_destination: "#58a6ff", out_of_service: "#6e7681" };
const R = 6378137;
// Street widths in pixels and colours by road class; classes not listed are drawn as "other".
const STREET_STYLE = {
  motorway: [5, "#56606b"], trunk: [5, "#56606b"], primary: [4.5, "#4b5560"], secondary: [3.5, "#414b56"],
  tertiary: [2.5, "#37414b"], unclassified: [1.6, "#323d48"], residential: [1.6, "#323d48"],
  living_street: [1.2, "#2c3640"], service: [1, "#29323c"], other: [1, "#29323c"],
};

function project(lat, lon) {
  const x = (lon * Math.PI / 180) * R;
  const y = Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI / 180) / 2)) * R;
  return [x, y];
}

export class FleetMap {
  constructor(canvas, fleet, onSelect) {
    this.canvas = canvas;
    this.fleet = fleet;
    this.selected = null;
    this.view = null; // {cx, cy, scale} in mercator metres per pixel; eased towards the fleet's bounds
    this.markers = [];
    this.streets = null; // {attribution, bounds: [s, w, n, e], classes, lines: {class: [[lat, lon, ...], ...]}}
    this.loadStreets(0);
    canvas.addEventListener("click", (e) => {
      const r = canvas.getBoundingClientRect();
      const x = e.clientX - r.left, y = e.clientY - r.top;
      let best = null, bestD = 18 * 18;
      for (const m of this.markers) {
        const d = (m.x - x) ** 2 + (m.y - y) ** 2;
        if (d < bestD) { best = m; bestD = d; }
      }
      if (best) onSelect(best.unit);
    });
  }

  /** Fetch the street layer; retried while the server is still loading it (503) or unreachable. */
  async loadStreets(attempt) {
    let retryS = Math.min(60, 2 * 1.5 ** attempt);
    try {
      const r = await fetch("/api/streets", { credentials: "same-origin" });
      if (r.ok) { this.streets = await r.json(); return; }
      if (r.status === 404 || r.status === 401 || r.status === 403) return; // no layer here, or logged out
      retryS = Number(r.headers.get("Retry-After")) || retryS;
    } catch (e) { /* network: retry */ }
    setTimeout(() => this.loadStreets(attempt + 1), retryS * 1000);
  }

  /** Screen pixel (CSS) → [lat, lon] under the current view, or null before the first frame. */
  toLatLon(x, y) {
    const v = this.view;
    if (!v) return null;
    const mx = v.cx + (x - this.width / 2) * v.scale, my = v.cy - (y - this.height / 2) * v.scale;
    return [(2 * Math.atan(Math.exp(my / R)) - Math.PI / 2) * 180 / Math.PI, (mx / R) * 180 / Math.PI];
  }

  /** [lat, lon] → screen pixel (CSS) under the current view, or null before the first frame. */
  toScreen(lat, lon) {
    const v = this.view;
    if (!v) return null;
    const [x, y] = project(lat, lon);
    return [this.width / 2 + (x - v.cx) / v.scale, this.height / 2 - (y - v.cy) / v.scale];
  }

  fit(width, height) {
    const pts = [...this.fleet.units.values()].filter((u) => u.lat != null).map((u) => project(u.lat, u.lon));
    if (this.streets) {
      const [s, w, n, e] = this.streets.bounds;
      pts.push(project(s, w), project(n, e));
    }
    if (!pts.length) return null;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const pad = this.streets ? 150 : 1500; // metres around the streets and the fleet
    const minX = Math.min(...xs) - pad, maxX = Math.max(...xs) + pad;
    const minY = Math.min(...ys) - pad, maxY = Math.max(...ys) + pad;
    const scale = Math.max((maxX - minX) / width, (maxY - minY) / height);
    return { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, scale };
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    this.width = w; this.height = h;
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = "#0b1016";
    g.fillRect(0, 0, w, h);
    const target = this.fit(w, h);
    if (!target) {
      g.fillStyle = "#8b98a5"; g.font = "16px system-ui"; g.fillText("Waiting for positions…", 24, 36);
      return;
    }
    // Ease the view so that a moving fleet does not make the map jump.
    if (!this.view) this.view = target;
    else for (const k of ["cx", "cy", "scale"]) this.view[k] += (target[k] - this.view[k]) * 0.05;
    const v = this.view;
    const toScreen = (lat, lon) => {
      const [x, y] = project(lat, lon);
      return [w / 2 + (x - v.cx) / v.scale, h / 2 - (y - v.cy) / v.scale];
    };
    this.drawStreets(g, toScreen);
    this.drawGraticule(g, w, h, v);
    this.drawScale(g, h, v);
    this.drawAttribution(g, w, h);
    this.markers = [];
    const units = [...this.fleet.units.values()].filter((u) => u.lat != null);
    for (const u of units) {
      const [x, y] = toScreen(u.lat, u.lon);
      const stale = this.fleet.isStale(u);
      const color = stale ? "#6e7681" : (COLORS[u.status] ?? "#8b98a5");
      g.save();
      g.translate(x, y);
      if (u.unit === this.selected) {
        g.strokeStyle = "#f0f6fc"; g.lineWidth = 2; g.beginPath(); g.arc(0, 0, 15, 0, 2 * Math.PI); g.stroke();
      }
      if (!stale && u.speed > 1 && u.heading != null) {
        g.save(); g.rotate(u.heading * Math.PI / 180);
        g.fillStyle = color; g.beginPath(); g.moveTo(0, -17); g.lineTo(5, -9); g.lineTo(-5, -9); g.closePath(); g.fill();
        g.restore();
      }
      g.fillStyle = color;
      g.beginPath(); g.arc(0, 0, 8, 0, 2 * Math.PI); g.fill();
      if (stale) { g.setLineDash([3, 3]); g.strokeStyle = "#ff7b72"; g.lineWidth = 2; g.stroke(); g.setLineDash([]); }
      g.fillStyle = stale ? "#ff7b72" : "#e6edf3";
      g.font = "600 12px system-ui";
      g.fillText(stale ? `${u.unit} STALE` : u.unit, 12, 4);
      g.restore();
      this.markers.push({ unit: u.unit, x, y });
    }
  }

  drawStreets(g, toScreen) {
    const layer = this.streets;
    if (!layer) return;
    g.save();
    g.lineCap = "round"; g.lineJoin = "round";
    // Least important first, so that main roads are drawn over the streets that join them.
    for (const cls of [...layer.classes].reverse()) {
      const [width, color] = STREET_STYLE[cls] ?? STREET_STYLE.other;
      g.strokeStyle = color; g.lineWidth = width;
      g.beginPath();
      for (const line of layer.lines[cls] ?? []) {
        for (let i = 0; i < line.length; i += 2) {
          const [x, y] = toScreen(line[i], line[i + 1]);
          if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
        }
      }
      g.stroke();
    }
    g.restore();
  }

  drawAttribution(g, w, h) {
    if (!this.streets) return;
    g.save();
    g.font = "11px system-ui"; g.textAlign = "right"; g.textBaseline = "bottom";
    const text = this.streets.attribution;
    const tw = g.measureText(text).width;
    g.fillStyle = "rgba(11, 16, 22, 0.8)"; g.fillRect(w - tw - 10, h - 17, tw + 10, 17);
    g.fillStyle = "#8b98a5"; g.fillText(text, w - 5, h - 3);
    g.restore();
  }

  drawGraticule(g, w, h, v) {
    // Lines every 0.01° (≈1 km) or coarser, labelled at the edges.
    const span = v.scale * w; // metres across
    const step = span > 60000 ? 0.1 : span > 15000 ? 0.05 : 0.01;
    const toLat = (y) => (2 * Math.atan(Math.exp(y / R)) - Math.PI / 2) * 180 / Math.PI;
    const west = ((v.cx - (w / 2) * v.scale) / R) * 180 / Math.PI, east = ((v.cx + (w / 2) * v.scale) / R) * 180 / Math.PI;
    const south = toLat(v.cy - (h / 2) * v.scale), north = toLat(v.cy + (h / 2) * v.scale);
    g.strokeStyle = "#1b2530"; g.lineWidth = 1; g.fillStyle = "#4d5a66"; g.font = "11px system-ui";
    for (let lon = Math.ceil(west / step) * step; lon < east; lon += step) {
      const x = w / 2 + ((lon * Math.PI / 180) * R - v.cx) / v.scale;
      g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke();
      g.fillText(`${lon.toFixed(2)}°E`, x + 3, 12);
    }
    for (let lat = Math.ceil(south / step) * step; lat < north; lat += step) {
      const y = h / 2 - (project(lat, 0)[1] - v.cy) / v.scale;
      g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
      if (y > 28) g.fillText(`${lat.toFixed(2)}°N`, 4, y - 3); // keep clear of the longitude labels on top
    }
  }

  drawScale(g, h, v) {
    // Mercator scale varies with latitude: metres on the ground per pixel = scale · cos(lat).
    const lat = (2 * Math.atan(Math.exp(v.cy / R)) - Math.PI / 2);
    const groundPerPx = v.scale * Math.cos(lat);
    const nice = [100, 200, 500, 1000, 2000, 5000, 10000, 20000];
    const metres = nice.find((m) => m / groundPerPx > 80) ?? 50000;
    const px = metres / groundPerPx;
    const x = this.canvas.clientWidth - px - 20, y = h - 26; // clear of the attribution below
    g.strokeStyle = "#e6edf3"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(x, y - 5); g.lineTo(x, y); g.lineTo(x + px, y); g.lineTo(x + px, y - 5); g.stroke();
    g.fillStyle = "#e6edf3"; g.font = "12px system-ui";
    g.fillText(metres >= 1000 ? `${metres / 1000} km` : `${metres} m`, x + px / 2 - 14, y - 8);
  }
}
