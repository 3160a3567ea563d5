"""The fleet as the console sees it, and the JSON messages browsers receive. Pure: no I/O here."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from emergency.bus import LinkState
from emergency.codec import VITAL_FIELDS
from emergency.protocol import DeviceEvent, DeviceMessage, EcgFrame, EventKind, FindingCode, GpsFix, Vitals
from emergency.scores import Consciousness, News2Inputs, ScoreInputError, SpO2Scale, news2

Json = dict[str, Any]


@dataclass(slots=True)
class UnitView:
    unit: str
    status: str | None = None
    lat: float | None = None
    lon: float | None = None
    speed: float | None = None
    heading: float | None = None
    fix_ts: int | None = None
    vitals: dict[str, float] = field(default_factory=dict)
    vitals_ts: int | None = None
    link: str = "unknown"
    last_rx: int | None = None
    news2: Json | None = None
    # NEWS2's crew-recorded parameters, from `finding` events (docs/protocol.md finding codes).
    consciousness: str | None = None
    on_oxygen: bool | None = None
    spo2_scale_2: bool = False

    def as_json(self) -> Json:
        # Written out, not dataclasses.asdict: that deep-copies field by field, 24 µs a unit against 0.5, and a
        # connecting client's fleet snapshot holds every unit. `news2` is shared: score() replaces it, never edits it.
        return {
            "unit": self.unit, "status": self.status, "lat": self.lat, "lon": self.lon, "speed": self.speed,
            "heading": self.heading, "fix_ts": self.fix_ts, "vitals": dict(self.vitals), "vitals_ts": self.vitals_ts,
            "link": self.link, "last_rx": self.last_rx, "news2": self.news2, "consciousness": self.consciousness,
            "on_oxygen": self.on_oxygen, "spo2_scale_2": self.spo2_scale_2,
        }  # fmt: skip

    def score(self) -> None:
        self.news2 = news2_json(self.vitals, self.consciousness, self.on_oxygen, self.spo2_scale_2)

    def observe_finding(self, event: DeviceEvent) -> bool:
        """Take in a crew finding that NEWS2 reads; returns whether the score's inputs changed."""
        code, detail = event.detail.get("code"), event.detail
        if code == FindingCode.AVPU:
            letter = str(detail.get("text", "")).strip().upper()[:1]
            self.consciousness = letter if letter in "ACVPU" and letter else self.consciousness
        elif code == FindingCode.SUPPLEMENTAL_O2 and isinstance(detail.get("value"), int | float):
            self.on_oxygen = float(detail["value"]) > 0
        elif code == FindingCode.SPO2_SCALE_2:
            self.spo2_scale_2 = True
        else:
            return False
        return True


def news2_json(
    vitals: dict[str, float],
    consciousness: str | None = None,
    on_oxygen: bool | None = None,
    spo2_scale_2: bool = False,
) -> Json | None:
    """NEWS2 from the monitor's latest values and the crew's findings. Oxygen and consciousness come from the crew,
    not the monitor, so until they are recorded the score is partial: a lower bound, shown as such."""
    try:
        result = news2(
            News2Inputs(
                respiration_rate=vitals.get("rr"),
                spo2=vitals.get("spo2"),
                on_oxygen=on_oxygen,
                systolic_bp=vitals.get("sbp"),
                pulse=vitals.get("hr"),
                consciousness=Consciousness(consciousness) if consciousness else None,
                temperature=vitals.get("temp"),
                spo2_scale=SpO2Scale.SCALE_2 if spo2_scale_2 else SpO2Scale.SCALE_1,
            )
        )
    except ScoreInputError:
        return None  # the codec's ranges make this unreachable; a score is never worth a crash
    return {
        "total": result.total,
        "risk": result.clinical_risk.value,
        "partial": bool(result.missing),
        "missing": [str(m) for m in result.missing],
    }


def ecg_json(frame: EcgFrame, rx: int) -> Json:
    """The frame for a browser: the device's raw int16 LE lead-major bytes, base64; no per-sample work here."""
    return {
        "type": "ecg",
        "unit": frame.unit,
        "seq": frame.seq,
        "ts": frame.ts,
        "rx": rx,
        "fs": frame.fs,
        "leads": list(frame.leads),
        "lsb_uv": frame.lsb_uv,
        "n": frame.n,
        "data": base64.b64encode(frame.data).decode("ascii"),
    }


class FleetState:
    def __init__(self) -> None:
        self.units: dict[str, UnitView] = {}

    def _unit(self, unit: str) -> UnitView:
        view = self.units.get(unit)
        if view is None:
            view = self.units[unit] = UnitView(unit)
        return view

    def apply(self, message: DeviceMessage, rx: int) -> Json | None:
        """Fold a live device message into the state; returns the update to send every client (None for ECG)."""
        view = self._unit(message.unit)
        view.last_rx = rx
        if view.link != "live":
            view.link = "live"
        base: Json = {"unit": message.unit, "ts": message.ts, "rx": rx}
        if isinstance(message, GpsFix):
            if view.fix_ts is not None and message.ts < view.fix_ts:
                return None  # a replayed backlog fix is history, not the unit's position now
            view.lat, view.lon, view.speed, view.heading, view.fix_ts = (
                message.lat, message.lon, message.speed, message.heading, message.ts,
            )  # fmt: skip
            return {"type": "gps", **base, "lat": message.lat, "lon": message.lon, "speed": message.speed,
                    "heading": message.heading, "acc": message.acc}  # fmt: skip
        if isinstance(message, Vitals):
            values = {k: getattr(message, k) for k in VITAL_FIELDS if getattr(message, k) is not None}
            if view.vitals_ts is None or message.ts >= view.vitals_ts:
                view.vitals.update(values)
                view.vitals_ts = message.ts
                view.score()
            return {"type": "vitals", **base, **values, "nibp_ts": message.nibp_ts, "news2": view.news2}
        if isinstance(message, DeviceEvent):
            if message.kind is EventKind.STATUS:
                view.status = str(message.detail["status"])
                return {"type": "status", **base, "status": view.status}
            if message.kind is EventKind.PATIENT_CONTACT:  # a new patient: the crew's NEWS2 inputs start afresh
                view.consciousness, view.on_oxygen, view.spo2_scale_2 = None, None, False
                view.score()
            elif message.kind is EventKind.FINDING and view.observe_finding(message):
                view.score()
            return {"type": "event", **base, "kind": message.kind.value, "detail": dict(message.detail)}
        return None

    def apply_link(self, state: LinkState) -> Json:
        view = self._unit(state.unit)
        view.link = state.condition.value
        view.last_rx = max(view.last_rx or 0, state.last_rx)
        return {"type": "link", "unit": state.unit, "condition": state.condition.value, "since": state.since,
                "last_rx": state.last_rx}  # fmt: skip

    def seed_position(self, fix: GpsFix) -> None:
        view = self._unit(fix.unit)
        if view.fix_ts is None:
            view.lat, view.lon, view.speed, view.heading, view.fix_ts = fix.lat, fix.lon, 0.0, fix.heading, fix.ts

    def snapshot(self) -> list[Json]:
        return [view.as_json() for view in sorted(self.units.values(), key=lambda v: v.unit)]
