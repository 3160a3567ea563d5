"""The street layer for the browser: polylines by road class, simplified, small enough to send once."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt

from emergency.geo._distance import LocalPlane
from emergency.geo._extract import ATTRIBUTION

SIMPLIFY_M = 1.5  # Douglas–Peucker tolerance: a street drawn at city scale moves by less than a pixel
DECIMALS = 5  # ≈ 1 m


def _chains(pairs: set[tuple[int, int]]) -> list[list[int]]:
    """The undirected segments joined into maximal chains that break at every junction and dead end."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    visited: set[tuple[int, int]] = set()
    chains: list[list[int]] = []

    def walk(start: int, nxt: int) -> list[int]:
        chain = [start]
        previous, here = start, nxt
        while True:
            visited.add((min(previous, here), max(previous, here)))
            chain.append(here)
            onward = [n for n in neighbours[here] if (min(here, n), max(here, n)) not in visited]
            if len(neighbours[here]) != 2 or not onward:
                return chain
            previous, here = here, onward[0]

    # Start at junctions and dead ends first, then whatever is left (closed rings).
    starts = sorted(neighbours, key=lambda n: len(neighbours[n]) == 2)
    for node in starts:
        for n in neighbours[node]:
            if (min(node, n), max(node, n)) not in visited:
                chains.append(walk(node, n))
    return chains


def _simplify(xy: npt.NDArray[np.float64], tolerance: float) -> list[int]:
    """Indices of the points Douglas–Peucker keeps (iterative; both ends always kept)."""
    keep = {0, len(xy) - 1}
    stack = [(0, len(xy) - 1)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2:
            continue
        a, b = xy[lo], xy[hi]
        ab = b - a
        pts = xy[lo + 1 : hi] - a
        norm = float(np.hypot(*ab))
        if norm == 0.0:
            dist = np.hypot(pts[:, 0], pts[:, 1])
        else:
            dist = np.abs(ab[0] * pts[:, 1] - ab[1] * pts[:, 0]) / norm
        worst = int(np.argmax(dist))
        if dist[worst] > tolerance:
            mid = lo + 1 + worst
            keep.add(mid)
            stack += [(lo, mid), (mid, hi)]
    return sorted(keep)


def street_layer(
    lat: npt.NDArray[np.float64],
    lon: npt.NDArray[np.float64],
    u: npt.NDArray[np.int32],
    v: npt.NDArray[np.int32],
    road_class: npt.NDArray[np.uint8],
    classes: tuple[str, ...],
    bounds: tuple[float, float, float, float],
    source: str,
) -> dict[str, Any]:
    """`{"attribution", "source", "bounds": [south, west, north, east], "classes": [...], "lines": {class:
    [[lat0, lon0, lat1, lon1, ...], ...]}}`, classes from most to least important, coordinates to 5 decimals."""
    plane = LocalPlane(float(np.mean(lat)), float(np.mean(lon)))
    xy = plane.project(lat, lon)
    by_class: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for a, b, c in zip(u.tolist(), v.tolist(), road_class.tolist(), strict=True):
        if a != b:
            by_class[c].add((min(a, b), max(a, b)))
    lines: dict[str, list[list[float]]] = {}
    for code in sorted(by_class):
        polylines = []
        for chain in _chains(by_class[code]):
            nodes = np.asarray(chain)
            kept = nodes[_simplify(xy[nodes], SIMPLIFY_M)]
            flat = np.column_stack((np.round(lat[kept], DECIMALS), np.round(lon[kept], DECIMALS))).ravel()
            polylines.append(flat.tolist())
        lines[classes[code]] = polylines
    return {
        "attribution": ATTRIBUTION,
        "source": source,
        "bounds": [round(b, DECIMALS) for b in bounds],
        "classes": [c for c in classes if c in lines],
        "lines": lines,
    }
