"""The clinical loop: pre-registration, times, alerts, activations and ETA, evaluated as each message arrives.

It runs beside the gateway, in the same process, and is handed every accepted device message (`observe`) and every
link observation (`observe_link`) synchronously, before the commit: the gateway owns a partition of the units, and
the per-unit state here needs exactly that affinity. `observe` is cheap and never waits: it updates the unit's
state, evaluates the rules, and queues what must be written and published. Three named tasks do the rest:

- `care.bus`: publishes snapshots of changed records on the center's bus (`emergency.bus` care topics) and takes in
  people's changes made at consoles (acknowledgements, destinations, discharges, assignments).
- `care.writer`: writes records to the store, in order, retrying while the database is away. Alerts are published
  before they are written, so a database outage never delays one.
- `care.ticker`: once a second, repeats and escalates unacknowledged alerts and analyses 12-leads (in a thread).

Everything clinical is evaluated on the device's clock; data that arrives late (an outage backlog) fills the record
but raises only backlog alerts, which are shown and never sounded (see `_clock.py` for how late and skewed differ).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import math
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import numpy as np
from pydantic import ValidationError

from emergency.bus import CARE_FILTER, CareKind, care_topic, parse_care_topic
from emergency.care._alerts import AlertBook, AlertChange, AlertEvent, AlertPolicy
from emergency.care._alias import alias_for
from emergency.care._clock import ClockTracker
from emergency.care._model import (
    Activation,
    ActivationState,
    Acuity,
    Alert,
    AlertKind,
    Encounter,
    EncounterStatus,
    ETime,
    Finding,
    Incident,
    Milestone,
    Priority,
    Severity,
    Team,
    TimeRecord,
    TimeSource,
    Treatment,
)
from emergency.care._rules import Condition, PatientState, Thresholds, evaluate, load_thresholds
from emergency.care._wire import CareRecord, care_kind, decode_record, encode_record
from emergency.ecg import EcgFindings, analyze
from emergency.geo import DriveTimes, StreetMap
from emergency.mqtt import MqttLink, MqttLinkError, backoff_delay
from emergency.protocol import (
    DeviceEvent,
    DeviceMessage,
    EcgFrame,
    EventKind,
    FindingCode,
    GpsFix,
    UnitStatus,
    Vitals,
)
from emergency.settings import CareSettings, MqttEndpoint
from emergency.sites import Capability, Hospital, Sites
from emergency.store import LinkEvent, Store, StoreError
from emergency.store._care import CareStore

log = logging.getLogger(__name__)

_STATUS_TIMES: dict[UnitStatus, ETime] = {
    UnitStatus.DISPATCHED: ETime.UNIT_NOTIFIED,
    UnitStatus.EN_ROUTE: ETime.EN_ROUTE,
    UnitStatus.ON_SCENE: ETime.ON_SCENE,
    UnitStatus.TRANSPORTING: ETime.LEFT_SCENE,
    UnitStatus.AT_DESTINATION: ETime.AT_DESTINATION,
    UnitStatus.AVAILABLE: ETime.BACK_IN_SERVICE,
}
_ACTIVATES: dict[AlertKind, tuple[Team, Capability]] = {
    AlertKind.STEMI: (Team.CATH_LAB, Capability.PCI),
    AlertKind.LVO_STROKE: (Team.STROKE, Capability.THROMBECTOMY),
    AlertKind.TRAUMA: (Team.TRAUMA, Capability.TRAUMA_CENTRE),
}
_LINK_KINDS = frozenset({AlertKind.TELEMETRY_LOST})
_GAP_KINDS = frozenset({AlertKind.SEQ_GAP})
_CLINICAL_KINDS = frozenset(AlertKind) - _LINK_KINDS - _GAP_KINDS
_ETA_MIN_CHANGE_US = 30_000_000  # an ETA is republished when it moves by more than this
# An ETA is recomputed from at most one fix in this much device time: it moves by seconds per second of driving, and
# two nearest-node lookups per fix per unit were 7 % of the gateway's process at 500 units.
_ETA_EVERY_US = 5_000_000
_ECG_WORKER_NICENESS = 10  # added to a 12-lead worker's niceness (0 normal, 19 lowest)
_ID_BLOCK = 64
_HELD_ALERTS_MAX = 100_000


def now_us() -> int:
    return time.time_ns() // 1000


class EtaSource(Protocol):
    def eta_s(self, lat: float, lon: float, hospital: Hospital) -> float: ...


class StraightLineEta:
    """Drive time as straight-line distance × 1.4 at 30 km/h: the fallback when no street map is loaded."""

    def eta_s(self, lat: float, lon: float, hospital: Hospital) -> float:
        return distance_m((lat, lon), hospital.position) * 1.4 / 8.3


class StreetEta:
    """Drive time on the street map to the hospital: one reversed Dijkstra per hospital, kept here by hospital (the
    sites are few), then a nearest-node lookup per GPS fix. Asking the map each time snapped the hospital again: half
    of each ETA's 30 µs."""

    def __init__(self, streets: StreetMap) -> None:
        self._streets = streets
        self._to: dict[Hospital, DriveTimes] = {}

    def eta_s(self, lat: float, lon: float, hospital: Hospital) -> float:
        times = self._to.get(hospital)
        if times is None:
            times = self._to[hospital] = self._streets.drive_times_to(hospital.lat, hospital.lon)
        return times.eta_s(lat, lon)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(math.sqrt(h))


@dataclass(slots=True)
class _Unit:
    unit: str
    clock: ClockTracker
    patient: PatientState = field(default_factory=PatientState)
    status: UnitStatus | None = None
    incident: Incident | None = None
    encounter: Encounter | None = None
    ecg: collections.deque[EcgFrame] = field(default_factory=lambda: collections.deque(maxlen=64))
    ecg_analysed_to: int = 0  # device time up to which the 12-lead has been analysed
    ecg_from: int = 0  # device time the last encounter ended: earlier frames were that patient's
    eta_from: int | None = None  # device time of the fix the ETA was last computed from
    pending_contact: DeviceEvent | None = None  # waiting for an id (the store was away)
    gap_until: int | None = None
    # Status times of the current response seen before it had an incident (the crew left before the call was
    # entered); they are given to the incident the patient contact opens.
    early_times: list[TimeRecord] = field(default_factory=list)
    position: tuple[float, float] | None = None
    first_ecg_of: int | None = None  # the encounter whose first 12-lead is recorded


class ClinicalLoop:
    """`async with ClinicalLoop(...) as loop:` then hand it messages with `observe`; see the module docstring."""

    def __init__(
        self,
        settings: CareSettings,
        mqtt: MqttEndpoint,
        store: Store,
        sites: Sites,
        *,
        eta: EtaSource | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        self._settings = settings
        self._mqtt = mqtt
        self._records = CareStore(store)
        self._sites = sites
        self._eta = eta or StraightLineEta()
        self._thresholds = thresholds or load_thresholds(settings.thresholds_file)
        self.book = AlertBook(
            AlertPolicy(
                repeat_after_s=settings.repeat_after_s,
                escalate_after_repeats=settings.escalate_after_repeats,
                clear_after_s=settings.clear_after_s,
            )
        )
        self._units: dict[str, _Unit] = {}
        tables = ("incidents", "encounters", "alerts", "activations")
        self._ids: dict[str, collections.deque[int]] = {t: collections.deque() for t in tables}
        # Bounded by the number of records: each key holds only the latest snapshot or write of a record.
        self._to_publish: dict[str, tuple[str, bytes]] = {}
        self._publish_wake = asyncio.Event()
        # While the bus is up: its link, and the snapshot of each record awaiting its PUBACK (one per record).
        self._bus_link: MqttLink | None = None
        self._in_flight: dict[str, asyncio.Task[bool]] = {}
        self._writes: collections.OrderedDict[str, Callable[[], Awaitable[object]]] = collections.OrderedDict()
        self._write_wake = asyncio.Event()
        self._write_seq = 0
        self._refilling: set[str] = set()  # tables whose id block is being refilled
        # Alert changes that came while no alert id was left (a burst larger than the block), in order; emitted as
        # soon as the refill lands. Bounded: past _HELD_ALERTS_MAX (the store away for long) the newest are dropped.
        self._held_alerts: list[tuple[str, AlertChange]] = []
        # 12-lead analysis runs in worker processes: ~30 ms of numpy per analysis would otherwise hold the GIL
        # against ingest in this process. No workers (ecg_workers=0): a thread.
        self._ecg_pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._quiet = asyncio.Event()  # set while nothing waits to be written or published
        self._quiet.set()
        self._tasks: asyncio.TaskGroup | None = None
        self.bus_ready = asyncio.Event()
        self.writes_failed = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._load()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._tasks.create_task(self._bus_forever(), name="care.bus")
        self._tasks.create_task(self._write_forever(), name="care.writer")
        self._tasks.create_task(self._tick_forever(), name="care.ticker")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None
        # Give queued writes a moment to land before the tasks are cancelled (they are retried on restart anyway:
        # every write is an idempotent upsert of what the devices will resend or the rules will re-establish).
        try:
            await self.settled(5)
        except TimeoutError:
            log.warning("clinical loop stopping with %d writes not done", len(self._writes))
        for task in list(self._tasks._tasks):
            task.cancel()
        await self._tasks.__aexit__(None, None, None)
        if self._ecg_pool is not None:
            self._ecg_pool.shutdown(wait=False, cancel_futures=True)

    async def _load(self) -> None:
        """Take up where the records are: open incidents, active encounters, open alerts."""
        for incident in await self._records.open_incidents():
            if incident.unit:
                self._unit(incident.unit).incident = incident
        for encounter in await self._records.active_encounters():
            self._unit(encounter.unit).encounter = encounter
        for alert in await self._records.alerts(open_only=True):
            self.book.adopt(alert, now=now_us())
        for table in self._ids:
            self._ids[table].extend(await self._records.reserve_ids(table, _ID_BLOCK))

    def _new_ecg_pool(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if self._settings.ecg_workers == 0:
            return None
        # spawn, not fork: a forked child would inherit this process's event loop, sockets and threads.
        context = multiprocessing.get_context("spawn")
        return concurrent.futures.ProcessPoolExecutor(
            self._settings.ecg_workers, mp_context=context, initializer=_start_ecg_worker
        )

    def _unit(self, unit: str) -> _Unit:
        u = self._units.get(unit)
        if u is None:
            clock = ClockTracker(late_after_s=self._settings.late_after_s, settle_s=self._settings.skew_settle_s)
            u = self._units[unit] = _Unit(unit, clock)
        return u

    def _take_id(self, table: str) -> int | None:
        ids = self._ids[table]
        if len(ids) < _ID_BLOCK // 2:
            self._start_refill(table)
        return ids.popleft() if ids else None

    def _start_refill(self, table: str) -> None:
        if table not in self._refilling and self._tasks is not None:
            # Not through the write queue: ids depend on no other write, and an alert must not wait behind them.
            self._refilling.add(table)
            self._tasks.create_task(self._refill(table), name=f"care.ids[{table}]")

    async def _refill(self, table: str) -> None:
        attempt = 0
        try:
            while len(self._ids[table]) < _ID_BLOCK // 2 or (table == "alerts" and self._held_alerts):
                try:
                    self._ids[table].extend(await self._records.reserve_ids(table, _ID_BLOCK))
                    if table == "alerts":
                        self._release_held_alerts()
                except StoreError as exc:
                    attempt += 1
                    log.warning("no %s ids reserved (%s); retrying", table, exc)
                    await asyncio.sleep(backoff_delay(attempt))
        finally:
            self._refilling.discard(table)

    # -- input -------------------------------------------------------------------------------------------------

    def observe(self, message: DeviceMessage, rx: int, *, center_behind: bool = False) -> None:
        """Fold in one accepted device message (called by the gateway, before the commit). `center_behind`: the
        gateway was behind when it read it, so its lateness is the center's, not a device clock's."""
        u = self._unit(message.unit)
        verdict = u.clock.observe(message.ts, rx, center_behind=center_behind)
        if verdict.skew_adopted_s is not None:
            log.warning("unit %s clock is %+.1f s off the center's; adopted", u.unit, verdict.skew_adopted_s)
            skew = LinkEvent(at=rx, unit=u.unit, kind="clock_skew", detail={"offset_s": verdict.skew_adopted_s})
            self._write(f"skew:{u.unit}:{rx}", lambda: self._records.record_link_event(skew))
        late = verdict.late
        if isinstance(message, Vitals):
            if u.patient.observe_vitals(message):
                self._evaluate(u, at=message.ts, late=late)
        elif isinstance(message, EcgFrame):
            self._observe_ecg(u, message, rx)
        elif isinstance(message, GpsFix):
            self._observe_fix(u, message, late=late)
        else:
            self._observe_event(u, message, late=late)

    def queues(self) -> dict[str, int]:
        """What waits in the loop's own queues (the gateway exports them on /metrics)."""
        return {
            "care_writes": len(self._writes),
            "care_snapshots": len(self._to_publish),
            "held_alerts": len(self._held_alerts),
        }

    def observe_link(self, event: LinkEvent) -> None:
        """A link observation from the gateway's monitor: a unit went silent or resumed, or a seq gap stays open."""
        u = self._unit(event.unit)
        conditions: dict[AlertKind, Condition] = {}
        if event.kind == "seq_gap":
            u.gap_until = event.at + round(self._settings.seq_gap_hold_s * 1e6)
            stream = event.stream.value if event.stream else "?"
            summary = f"data missing on {stream}: seq {event.first_seq}..{event.last_seq}"
            conditions[AlertKind.SEQ_GAP] = Condition(
                AlertKind.SEQ_GAP, Severity.WARNING, summary, {"stream": stream, "first_seq": event.first_seq,
                "last_seq": event.last_seq}, event.at,
            )  # fmt: skip
            self._reconcile(u, conditions, at=event.at, late=False, kinds=_GAP_KINDS)
            return
        if event.kind not in ("silent", "live"):
            return
        if event.kind == "silent" and u.encounter is not None:
            severity = Severity.CRITICAL if u.encounter.acuity is Acuity.CRITICAL else Severity.WARNING
            conditions[AlertKind.TELEMETRY_LOST] = Condition(
                AlertKind.TELEMETRY_LOST, severity, "telemetry lost", {"last_rx": event.detail.get("last_rx_us")},
                event.at,
            )  # fmt: skip
        self._reconcile(u, conditions, at=event.at, late=False, kinds=_LINK_KINDS)

    def _observe_ecg(self, u: _Unit, frame: EcgFrame, rx: int) -> None:
        if (u.ecg and frame.ts <= u.ecg[-1].ts) or frame.ts < u.ecg_from:
            # A replayed frame (the analysis reads the newest contiguous run only), or one of the patient whose
            # encounter has ended (the gateway observes a read's 12-lead after its events): stored, not analysed.
            return
        u.ecg.append(frame)
        e = u.encounter
        if e is not None and u.first_ecg_of != e.id and frame.ts >= e.contact_at:
            # Once per encounter: after this, a frame costs the clinical loop no look at the encounter's times.
            u.first_ecg_of = e.id
            if not any(t.name == Milestone.FIRST_ECG.value for t in e.times):
                self._encounter_time(u, TimeRecord(Milestone.FIRST_ECG, frame.ts, TimeSource.DEVICE, u.unit))
                self._encounter_time(u, TimeRecord(Milestone.ECG_TRANSMITTED, rx, TimeSource.CENTER, u.unit))

    def _observe_fix(self, u: _Unit, fix: GpsFix, *, late: bool) -> None:
        if late:
            return  # a backlog position is history; it sets neither the ETA nor a door time
        u.position = (fix.lat, fix.lon)
        e = u.encounter
        if e is None or e.destination is None or e.status is not EncounterStatus.PRE_REGISTERED:
            return
        try:
            hospital = self._sites.hospital(e.destination)
        except KeyError:
            return
        if distance_m(u.position, hospital.position) <= hospital.geofence_m:
            self._arrive(u, fix.ts, TimeSource.GEOFENCE)
            return
        if u.status not in (UnitStatus.TRANSPORTING, None):
            return
        if u.eta_from is not None and 0 <= fix.ts - u.eta_from < _ETA_EVERY_US:
            return
        u.eta_from = fix.ts
        eta_at = fix.ts + round(self._eta.eta_s(fix.lat, fix.lon, hospital) * 1e6)
        if e.eta_at is None or abs(eta_at - e.eta_at) > _ETA_MIN_CHANGE_US:
            self._save_encounter(u, dataclasses.replace(e, eta_at=eta_at))

    def _arrive(self, u: _Unit, at: int, source: TimeSource) -> None:
        e = u.encounter
        if e is None or e.door_at is not None:
            return
        self._save_encounter(u, dataclasses.replace(e, status=EncounterStatus.ARRIVED, door_at=at, eta_at=at))
        self._encounter_time(u, TimeRecord(Milestone.DOOR, at, source, u.unit))
        self._incident_time(u, TimeRecord(ETime.AT_DESTINATION, at, source, u.unit))

    def _observe_event(self, u: _Unit, event: DeviceEvent, *, late: bool) -> None:
        d = event.detail
        if u.patient.observe_event(event):
            self._evaluate(u, at=event.ts, late=late)
        if event.kind is EventKind.STATUS:
            status = UnitStatus(str(d["status"]))
            u.status = status
            if status in _STATUS_TIMES:
                self._incident_time(u, TimeRecord(_STATUS_TIMES[status], event.ts, TimeSource.DEVICE, u.unit))
            if status is UnitStatus.AT_DESTINATION:
                self._arrive(u, event.ts, TimeSource.DEVICE)
            elif status is UnitStatus.AVAILABLE:
                self._back_in_service(u, event.ts)
            return
        if event.kind is EventKind.PATIENT_CONTACT:
            self._pre_register(u, event)
            return
        e = u.encounter
        if e is None:
            return
        key = (event.unit, event.boot, event.seq)
        if event.kind is EventKind.CHIEF_COMPLAINT:
            self._save_encounter(u, dataclasses.replace(e, chief_complaint=str(d["text"])))
        elif event.kind is EventKind.FINDING:
            note = Finding(event.ts, str(d["text"]), _opt_str(d.get("code")), _opt_float(d.get("value")))
            self._note(u, key, note)
            at = d.get("at")
            if d.get("code") == FindingCode.LAST_KNOWN_WELL and isinstance(at, int):
                self._save_encounter(u, dataclasses.replace(e, last_known_well_at=at))
            elif d.get("code") == FindingCode.SYMPTOM_ONSET and isinstance(at, int):
                self._save_encounter(u, dataclasses.replace(e, symptom_onset_at=at))
        elif event.kind is EventKind.TREATMENT:
            note_t = Treatment(
                event.ts, str(d["text"]), _opt_str(d.get("code")), _opt_float(d.get("dose")),
                _opt_str(d.get("dose_unit")),
            )  # fmt: skip
            self._note(u, key, note_t)
        elif event.kind is EventKind.TRANSFER_OF_CARE:
            self._incident_time(u, TimeRecord(ETime.TRANSFER_OF_CARE, event.ts, TimeSource.DEVICE, u.unit))
            if e.door_at is None:
                self._arrive(u, event.ts, TimeSource.DEVICE)
                e = u.encounter or e
            self._save_encounter(u, dataclasses.replace(e, status=EncounterStatus.IN_HOSPITAL))
            self._end_encounter(u, event.ts)

    # -- pre-registration --------------------------------------------------------------------------------------

    def _pre_register(self, u: _Unit, event: DeviceEvent) -> None:
        if u.encounter is not None:
            if event.ts < u.encounter.contact_at:  # a replay of an earlier contact
                return
            if u.encounter.contact_at == event.ts:
                return
        if u.incident is None:
            incident_id = self._take_id("incidents")
            if incident_id is None:
                u.pending_contact = event
                return
            incident = Incident(
                id=incident_id, call_received_at=event.ts, priority=Priority.EMERGENCY,
                complaint="(patient contact reported by the crew)", lat=u.position[0] if u.position else None,
                lon=u.position[1] if u.position else None, address=None, unit=u.unit, created_by=u.unit,
            )  # fmt: skip
            u.incident = incident
            self._write(f"incident:{incident.id}", lambda: self._records.save_incident_from_device(incident))
            self._publish(incident)
            for early in u.early_times:
                self._incident_time(u, early)
        u.early_times.clear()
        encounter_id = self._take_id("encounters")
        if encounter_id is None:
            u.pending_contact = event
            return
        u.pending_contact = None
        d = event.detail
        age = int(d["age"]) if isinstance(d.get("age"), int) else None
        sex = str(d["sex"]) if d.get("sex") in ("male", "female") else None
        encounter = Encounter(
            id=encounter_id, alias=alias_for(encounter_id), incident_id=u.incident.id, unit=u.unit,
            status=EncounterStatus.PRE_REGISTERED, contact_at=event.ts,
            destination=self._nearest(u, Capability.ED), age=age, sex=sex,
        )  # fmt: skip
        log.info("unit %s: patient pre-registered as %s (encounter %d)", u.unit, encounter.alias, encounter.id)
        self._save_encounter(u, encounter)
        self._incident_time(u, TimeRecord(ETime.AT_PATIENT, event.ts, TimeSource.DEVICE, u.unit))
        # Alerts raised before contact (a patient already on the monitor) now belong to the encounter.
        self._evaluate(u, at=event.ts, late=False)

    def _nearest(self, u: _Unit, capability: Capability) -> str | None:
        candidates = self._sites.with_capability(capability)
        if not candidates:
            return None
        if u.position is None:
            return candidates[0].code
        here = u.position
        return min(candidates, key=lambda h: distance_m(here, h.position)).code

    def _back_in_service(self, u: _Unit, at: int) -> None:
        if u.encounter is not None:
            e = u.encounter
            status = EncounterStatus.IN_HOSPITAL if e.door_at is not None else EncounterStatus.CANCELLED
            self._save_encounter(u, dataclasses.replace(e, status=status))
            self._end_encounter(u, at)
        if u.incident is not None:
            incident_id = u.incident.id
            self._write(f"close:{incident_id}", lambda: self._records.close_incident(incident_id, at=at))
            self._publish(dataclasses.replace(u.incident, closed_at=at))
            u.incident = None
        u.early_times.clear()

    def _end_encounter(self, u: _Unit, at: int) -> None:
        """The crew's part is over (at device time `at`): the unit's alerts resolve and its next patient starts
        afresh."""
        self._emit(u, self.book.close_unit(u.unit, at=at))
        u.encounter = None
        u.patient = PatientState()
        u.ecg.clear()
        u.ecg_from = at

    # -- rules -------------------------------------------------------------------------------------------------

    def _evaluate(self, u: _Unit, *, at: int, late: bool) -> None:
        self._reconcile(u, evaluate(u.patient, self._thresholds), at=at, late=late, kinds=_CLINICAL_KINDS)

    def _reconcile(
        self, u: _Unit, conditions: dict[AlertKind, Condition], *, at: int, late: bool, kinds: frozenset[AlertKind]
    ) -> None:
        encounter_id = u.encounter.id if u.encounter else None
        changes = self.book.reconcile(u.unit, encounter_id, conditions, at=at, now=now_us(), backlog=late, kinds=kinds)
        if changes:
            self._emit(u, changes)
            self._update_acuity(u)

    def _emit(self, u: _Unit, changes: list[AlertChange]) -> None:
        for change in changes:
            alert = change.alert
            if alert.id == 0:
                alert_id = None if self._held_alerts else self._take_id("alerts")
                if alert_id is None:
                    self._hold_alert(u, change)
                    continue
                self.book.bind_id(alert.unit, alert.kind, alert_id)
                alert = dataclasses.replace(alert, id=alert_id)
            if change.event is not AlertEvent.UPDATED or alert.severity is not Severity.INFO:
                log.info("alert %s on %s: %s (%s)", change.event.value, alert.unit, alert.summary, alert.severity.value)
            self._publish(alert)
            reopen = change.event in (AlertEvent.WORSENED, AlertEvent.RAISED) and alert.repeats == 0
            event = change.event.value
            self._write(
                f"alert:{alert.id}:{self._next_write_seq()}",
                functools.partial(self._records.save_alert_from_rules, alert, event, reopen=reopen),
            )
            if change.event in (AlertEvent.RAISED, AlertEvent.WORSENED) and not alert.backlog:
                self._on_raised(u, alert)

    def _hold_alert(self, u: _Unit, change: AlertChange) -> None:
        if not self._held_alerts:
            log.warning("no alert id left (a burst of alerts, or the store away); alerts held until ids are reserved")
            self._start_refill("alerts")
        if len(self._held_alerts) >= _HELD_ALERTS_MAX:
            log.error("alert change dropped, %d already held without ids: %s", _HELD_ALERTS_MAX, change.alert.summary)
            return
        self._held_alerts.append((u.unit, change))

    def _release_held_alerts(self) -> None:
        """Emit held alert changes in order, now that ids have been reserved. The changes of one alert share its id;
        what does not get an id stays held for the next refill."""
        held, self._held_alerts = self._held_alerts, []
        given: dict[tuple[str, AlertKind, int], int] = {}
        for index, (unit, change) in enumerate(held):
            alert = change.alert
            key = (alert.unit, alert.kind, alert.raised_at)
            alert_id = given.get(key) or self._take_id("alerts")
            if alert_id is None:
                self._held_alerts = held[index:] + self._held_alerts
                return
            given[key] = alert_id
            current = self.book.open_alert(alert.unit, alert.kind)
            if current is not None and current.id == 0 and current.raised_at == alert.raised_at:
                self.book.bind_id(alert.unit, alert.kind, alert_id)
            alert = dataclasses.replace(alert, id=alert_id)
            self._emit(self._unit(unit), [dataclasses.replace(change, alert=alert)])
        log.info("held alerts released: %d changes", len(held))

    def _on_raised(self, u: _Unit, alert: Alert) -> None:
        """A new live diagnosis: time it, send the patient where it can be treated, call the team."""
        e = u.encounter
        if e is None or alert.kind not in _ACTIVATES:
            return
        team, capability = _ACTIVATES[alert.kind]
        if alert.kind is AlertKind.STEMI:
            self._encounter_time(u, TimeRecord(Milestone.STEMI_DIAGNOSIS, alert.raised_at, TimeSource.CENTER))
        if e.destination is None or capability not in self._hospital_capabilities(e.destination):
            better = self._nearest(u, capability)
            if better is not None and better != e.destination:
                old = e.destination
                log.info("unit %s: destination %s → %s (%s)", u.unit, old, better, capability.value)
                e = dataclasses.replace(e, destination=better)
                u.encounter = e
                self._write(
                    f"destination:{e.id}:{self._next_write_seq()}",
                    functools.partial(self._records.change_destination, e.id, old, better),
                )
                self._save_encounter(u, e)
        if not self._settings.auto_activate:
            return
        activation_id = self._take_id("activations")
        if activation_id is None:
            return
        activation = Activation(
            id=activation_id, encounter_id=e.id, team=team, state=ActivationState.REQUESTED,
            reason=alert.summary, requested_at=now_us(), requested_by="center",
        )  # fmt: skip
        self._write(f"activation:{activation.id}", lambda: self._save_activation(activation))
        if team is Team.CATH_LAB:
            self._encounter_time(
                u, TimeRecord(Milestone.CATH_LAB_ACTIVATED, activation.requested_at, TimeSource.CENTER)
            )

    async def _save_activation(self, activation: Activation) -> None:
        saved = await self._records.save_activation(activation)
        self._publish(saved)

    def _hospital_capabilities(self, code: str) -> frozenset[Capability]:
        try:
            return self._sites.hospital(code).capabilities
        except KeyError:
            return frozenset()

    def _update_acuity(self, u: _Unit) -> None:
        e = u.encounter
        if e is None:
            return
        ranks = [a.severity.rank for a in self.book if a.unit == u.unit and not a.backlog]
        top = max(ranks, default=0)
        acuity = Acuity.CRITICAL if top >= 3 else Acuity.HIGH if top == 2 else Acuity.LOW
        if acuity is not e.acuity:
            self._save_encounter(u, dataclasses.replace(e, acuity=acuity))

    # -- records: publish now, write in order ------------------------------------------------------------------

    def _save_encounter(self, u: _Unit, encounter: Encounter) -> None:
        u.encounter = (
            encounter if encounter.status in (EncounterStatus.PRE_REGISTERED, EncounterStatus.ARRIVED) else None
        )
        self._publish(encounter)
        self._write(f"encounter:{encounter.id}", lambda: self._records.save_encounter_from_device(encounter))

    def _encounter_time(self, u: _Unit, t: TimeRecord) -> None:
        e = u.encounter
        if e is None or any(x.name == t.name for x in e.times):
            return
        e = dataclasses.replace(e, times=(*e.times, t))
        u.encounter = e
        self._publish(e)
        eid = e.id
        self._write(f"etime:{eid}:{t.name}", lambda: self._records.record_encounter_time(eid, t))

    def _incident_time(self, u: _Unit, t: TimeRecord) -> None:
        i = u.incident
        if i is None:
            u.early_times.append(t)
            return
        if any(x.name == t.name for x in i.times):
            return
        i = dataclasses.replace(i, times=(*i.times, t))
        u.incident = i
        self._publish(i)
        iid = i.id
        self._write(f"itime:{iid}:{t.name}", lambda: self._records.record_incident_time(iid, t))

    def _note(self, u: _Unit, key: tuple[str, int, int], note: Finding | Treatment) -> None:
        e = u.encounter
        if e is None:
            return
        if isinstance(note, Finding):
            e = dataclasses.replace(e, findings=(*e.findings, note))
        else:
            e = dataclasses.replace(e, treatments=(*e.treatments, note))
        u.encounter = e
        self._publish(e)
        eid = e.id
        self._write(f"note:{key}", lambda: self._records.record_note(key, eid, note))

    def _next_write_seq(self) -> int:
        self._write_seq += 1
        return self._write_seq

    def _publish(self, record: CareRecord) -> None:
        kind = care_kind(record)
        topic = care_topic(kind, record.unit if isinstance(record, Alert | Encounter) else record.id)
        key = f"{kind.value}:{record.id}"
        self._to_publish[key] = (topic, encode_record(record))
        self._quiet.clear()
        if kind is CareKind.ALERT and self._bus_link is not None and key not in self._in_flight:
            # Written in the step that raised it: not after the rest of the ingest batch and the publisher's turn.
            self._send(self._bus_link, key, now=True)
        self._publish_wake.set()

    def _write(self, key: str, job: Callable[[], Awaitable[object]], *, ordered: bool = True) -> None:
        """Queue a write; a later write with the same key replaces it in place (records are upserts)."""
        if key in self._writes and not ordered:
            return
        self._writes[key] = job
        self._quiet.clear()
        self._write_wake.set()

    async def _write_forever(self) -> None:
        attempt = 0
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            while self._writes:
                key, job = next(iter(self._writes.items()))
                try:
                    await job()
                except StoreError as exc:
                    if exc.retryable:
                        attempt += 1
                        delay = backoff_delay(attempt)
                        log.warning("care record %s not written (%s); retrying in %.1f s", key, exc, delay)
                        await asyncio.sleep(delay)
                        continue
                    self.writes_failed += 1
                    log.error("care record %s refused by the store: %s", key, exc)
                attempt = 0
                if self._writes.get(key) is job:
                    del self._writes[key]
            self._check_quiet()

    async def settled(self, within_s: float = 30) -> None:
        """Wait until every queued write is done and every snapshot published (for tests and shutdown)."""
        async with asyncio.timeout(within_s):
            await self._quiet.wait()

    def _check_quiet(self) -> None:
        if not self._writes and not self._to_publish:
            self._quiet.set()

    # -- the bus -----------------------------------------------------------------------------------------------

    async def _bus_forever(self) -> None:
        attempt = 0
        while True:
            try:
                client_id = f"{self._settings.client_id}-{random.randrange(16**8):08x}"
                async with MqttLink(self._mqtt, client_id=client_id) as link:
                    # No-local: our own snapshots are not merged back into our own state.
                    await link.subscribe([(CARE_FILTER, 1)], no_local=True)
                    self.bus_ready.set()
                    attempt = 0
                    publisher = asyncio.create_task(self._publish_queued(link), name="care.bus.publish")
                    try:
                        async for batch in link.batches():
                            for message in batch:
                                self._merge(message.topic, message.payload)
                    finally:
                        publisher.cancel()
                        await asyncio.gather(publisher, return_exceptions=True)
            except MqttLinkError as exc:
                self.bus_ready.clear()
                attempt += 1
                log.warning("care bus connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff_delay(attempt))

    async def _publish_queued(self, link: MqttLink) -> None:
        """Publish queued snapshots until cancelled (the reader then reconnects, and what was not yet published is
        still queued: a snapshot leaves the queue only once the broker has acknowledged it). Every queued snapshot
        is in flight at once, alerts ahead of the rest (`now`), so that an alert never waits for others; a record
        changed while its snapshot is in flight goes again when that one is acknowledged (one in flight per record,
        so they arrive in order)."""
        self._bus_link = link
        self._publish_wake.set()  # what was queued while disconnected
        try:
            while True:
                await self._publish_wake.wait()
                self._publish_wake.clear()
                for key in list(self._to_publish):
                    if key not in self._in_flight:
                        self._send(link, key, now=key.startswith("alert:"))
                self._check_quiet()
        finally:
            self._bus_link = None
            for task in self._in_flight.values():
                task.cancel()
            self._in_flight.clear()

    def _send(self, link: MqttLink, key: str, *, now: bool = False) -> None:
        """Send the queued snapshot of `key` (with `now`, ahead of the other records' and to the socket before
        returning); it leaves the queue when the broker acknowledges it."""
        topic, payload = self._to_publish[key]
        try:
            acknowledged = link.start_publish(topic, payload, now=now)
        except MqttLinkError:
            return  # the link is ending: the reader reconnects and the snapshot, still queued, goes then
        task = asyncio.create_task(self._publish_one(link, key, topic, payload, acknowledged))
        self._in_flight[key] = task
        task.add_done_callback(functools.partial(self._published, key))

    async def _publish_one(
        self, link: MqttLink, key: str, topic: str, payload: bytes, acknowledged: asyncio.Future[int]
    ) -> bool:
        try:
            # Patient: a busy broker answers late, and sending the snapshot again meanwhile would only add to what
            # it has to get through (decision 49). A lost link ends the wait.
            await link.acknowledged(acknowledged, topic, patient=True)
        except MqttLinkError as exc:
            # Still queued: sent again after the reconnect (a lost link, which the reader reports) or with the next
            # wake-up (refused).
            log.log(logging.WARNING if link.connected else logging.DEBUG, "care snapshot %s held (%s)", key, exc)
            return False
        if self._to_publish.get(key) == (topic, payload):
            del self._to_publish[key]
            self._check_quiet()
        return True

    def _published(self, key: str, task: asyncio.Task[bool]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if key in self._to_publish and not task.cancelled() and task.exception() is None and task.result():
            self._publish_wake.set()  # changed while in flight: its newer snapshot goes now

    def _merge(self, topic: str, payload: bytes) -> None:
        """Take in a change a person made at a console."""
        try:
            kind = parse_care_topic(topic)
            record = decode_record(kind, payload)
        except (ValueError, ValidationError) as exc:
            log.error("malformed care record on %s: %s", topic, exc)
            return
        if isinstance(record, Alert):
            self.book.merge_external(record)
        elif isinstance(record, Incident):
            if record.unit is None:
                return
            u = self._unit(record.unit)
            if record.closed_at is not None:
                if u.incident is not None and u.incident.id == record.id:
                    u.incident = None
            elif u.incident is None or u.incident.id == record.id:
                u.incident = record
                for early in u.early_times:
                    self._incident_time(u, early)
                u.early_times.clear()
        elif isinstance(record, Encounter):
            u = self._unit(record.unit)
            if u.encounter is None or u.encounter.id != record.id:
                return
            mine = u.encounter
            if record.status not in (EncounterStatus.PRE_REGISTERED, EncounterStatus.ARRIVED):
                self._end_encounter(u, now_us() - u.clock.skew_us)  # now, on the unit's clock
                return
            u.encounter = dataclasses.replace(
                mine,
                destination=record.destination,
                patient_id=record.patient_id,
                patient_name=record.patient_name,
                handoff_notes=record.handoff_notes,
                door_at=mine.door_at or record.door_at,
                status=record.status if mine.door_at is None and record.door_at is not None else mine.status,
            )

    # -- the ticker: repeats, escalation, 12-lead analysis -----------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = now_us()
            for change in self.book.due(now):
                u = self._unit(change.alert.unit)
                self._emit(u, [change])
            due: list[_Unit] = []
            for u in list(self._units.values()):
                if u.pending_contact is not None:
                    self._pre_register(u, u.pending_contact)
                if u.gap_until is not None and now >= u.gap_until:
                    u.gap_until = None
                    self._reconcile(u, {}, at=now, late=False, kinds=_GAP_KINDS)
                if self._ecg_due(u):
                    due.append(u)
            # A 12-lead analysis costs ~30 ms of CPU: a budget per second keeps a large fleet from starving ingest;
            # the units analysed longest ago go first, so under load every unit's interval stretches evenly.
            due.sort(key=lambda u: u.ecg_analysed_to)
            for u in due[: self._settings.ecg_analyses_per_s]:
                await self._analyse_ecg(u)

    def _ecg_due(self, u: _Unit) -> bool:
        if u.encounter is None or not u.ecg:
            return False
        return u.ecg[-1].ts - u.ecg_analysed_to >= self._settings.ecg_interval_s * 1e6

    async def _analyse_ecg(self, u: _Unit) -> None:
        leads = contiguous_leads(u.ecg, self._settings.ecg_window_s)
        if leads is None:
            return
        names, signals, fs, end_ts = leads
        u.ecg_analysed_to = end_ts
        sex, age = u.patient.sex, u.patient.age
        try:
            if self._ecg_pool is None:
                self._ecg_pool = self._new_ecg_pool()  # on first use: a loop that never analyses starts nothing
            job = functools.partial(analyze, dict(zip(names, signals, strict=True)), fs, sex=sex, age=age)
            findings: EcgFindings = await asyncio.get_running_loop().run_in_executor(self._ecg_pool, job)
        except ValueError as exc:
            log.info("unit %s: 12-lead not analysed (%s)", u.unit, exc)
            return
        except concurrent.futures.BrokenExecutor as exc:
            # A worker died (killed, out of memory): start a fresh pool; this unit is analysed again next round.
            log.error("12-lead analysis worker lost (%s); restarting it", exc)
            if self._ecg_pool is not None:
                self._ecg_pool.shutdown(wait=False, cancel_futures=True)
            self._ecg_pool = self._new_ecg_pool()
            u.ecg_analysed_to = 0
            return
        if u.encounter is None:
            return
        u.patient.observe_ecg(findings, end_ts)
        late = u.clock.observe(end_ts, now_us()).late
        self._evaluate(u, at=end_ts, late=late)


def _start_ecg_worker() -> None:
    """In a 12-lead worker, before its first job.

    Ctrl-C or SIGTERM to the process group stops the parent, which shuts the pool down in order; a worker killed by
    the same signal would only show up as a lost worker during a clean shutdown. A worker whose parent dies anyway
    exits when its call queue closes.

    The worker runs at a lower scheduling priority: an analysis is ~30 ms of CPU that can wait, while the gateway,
    the broker and the console carry the alerts; on a busy machine it takes the CPU they leave (decision 28)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(_ECG_WORKER_NICENESS)


def contiguous_leads(
    frames: Sequence[EcgFrame], window_s: float
) -> tuple[tuple[str, ...], list[np.ndarray], float, int] | None:
    """The newest run of back-to-back frames with the same leads, at least `window_s` long, in millivolts."""
    if not frames:
        return None
    run = [frames[-1]]
    for frame in reversed(list(frames)[:-1]):
        head = run[-1]
        expected = head.ts - round(frame.n * 1e6 / frame.fs)
        if frame.leads != head.leads or frame.fs != head.fs or abs(frame.ts - expected) > 2_000:
            break
        run.append(frame)
    run.reverse()
    fs = run[0].fs
    if sum(f.n for f in run) / fs < window_s:
        return None
    blocks = [np.frombuffer(f.data, dtype="<i2").reshape(len(f.leads), f.n) for f in run]
    samples = np.concatenate(blocks, axis=1)[:, -round(window_s * fs) :].astype(np.float64) * (run[0].lsb_uv / 1000.0)
    end_ts = run[-1].ts + round(run[-1].n * 1e6 / fs)
    return run[0].leads, list(samples), fs, end_ts


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
