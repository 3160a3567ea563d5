"""The console's side of the clinical loop: the care records it shows, and the actions people take on them.

Records arrive as snapshots on the center's bus (`center/v1/care/...`, from the clinical loop and from other
consoles) and are folded into `CareView`, which is seeded from the store when the console starts. People's actions
are HTTP calls: each is checked against the caller's role (`guard`), written to the store, audited, and its result
published on the bus so that every console and the clinical loop see it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from aiohttp import web
from pydantic import ValidationError

from console._hub import CARE_NEEDS, Outgoing
from emergency.access import Permission
from emergency.bus import CareKind, care_topic, parse_care_topic
from emergency.care._fhir import encounter_bundle
from emergency.care._followup import due_follow_ups, outcome_summary, schedule_follow_ups
from emergency.care._handoff import SectionKey, compose_handoff
from emergency.care._loop import contiguous_leads
from emergency.care._model import (
    Activation,
    ActivationState,
    Alert,
    AlertState,
    Disposition,
    Encounter,
    EncounterStatus,
    FollowUpState,
    Incident,
    Milestone,
    Priority,
    Team,
    TimeRecord,
    TimeSource,
)
from emergency.care._quality import aggregate, encounter_indicators
from emergency.care._wire import CareRecord, care_kind, decode_record, record_json
from emergency.ecg import analyze
from emergency.protocol import UNIT_PATTERN
from emergency.sites import Sites
from emergency.store import StoreError
from emergency.store._care import CareStore, RecordNotFound

log = logging.getLogger(__name__)

Json = dict[str, Any]
_E = TypeVar("_E", bound=enum.StrEnum)
SECTION_KEYS = frozenset(k.value for k in SectionKey)
_ACTIVE = (EncounterStatus.PRE_REGISTERED, EncounterStatus.ARRIVED)


def now_us() -> int:
    return time.time_ns() // 1000


class CareView:
    """Open incidents, active encounters, open alerts and their activations, as the console shows them."""

    def __init__(self) -> None:
        self.incidents: dict[int, Incident] = {}
        self.encounters: dict[int, Encounter] = {}
        self.alerts: dict[int, Alert] = {}
        self.activations: dict[int, Activation] = {}
        # Each held record's JSON text, encoded once as the record arrives: a connecting client's snapshot is joined
        # from these. At 2 000 encounters, building and encoding it afresh took ~25 ms of the loop per client.
        self._texts: dict[CareKind, dict[int, str]] = {kind: {} for kind in CareKind}

    def apply(self, record: CareRecord) -> Outgoing:
        """Fold in a snapshot; returns the message for browsers."""
        if isinstance(record, Incident):
            held = _hold(self.incidents, record, record.closed_at is None)
        elif isinstance(record, Encounter):
            held = _hold(self.encounters, record, record.status in _ACTIVE)
        elif isinstance(record, Alert):
            held = _hold(self.alerts, record, record.state is not AlertState.RESOLVED)
        else:
            held = _hold(self.activations, record, record.state is not ActivationState.CANCELLED)
        kind, values = care_kind(record), record_json(record)
        text = json.dumps(values, separators=(",", ":"))
        if held:
            self._texts[kind][record.id] = text
        else:
            self._texts[kind].pop(record.id, None)
        message = {"type": "care", "kind": kind.value, "record": values}
        return Outgoing(message, f'{{"type":"care","kind":"{kind.value}","record":{text}}}')

    def snapshot(self, permissions: Collection[Permission]) -> Outgoing:
        """The `care_snapshot` message for a role: every list it may not see (CARE_NEEDS) empty."""
        lists = (
            f'"{kind.value}s":[{",".join(texts.values()) if CARE_NEEDS[kind] in permissions else ""}]'
            for kind, texts in self._texts.items()
        )
        return Outgoing({"type": "care_snapshot"}, '{"type":"care_snapshot",' + ",".join(lists) + "}")

    @staticmethod
    def decode(topic: str, payload: bytes) -> CareRecord | None:
        try:
            return decode_record(parse_care_topic(topic), payload)
        except (ValueError, ValidationError) as exc:
            log.error("malformed care record on %s: %s", topic, exc)
            return None


_R = TypeVar("_R", Incident, Encounter, Alert, Activation)


def _hold(records: dict[int, _R], record: _R, held: bool) -> bool:
    """Keep or forget `record` by id; returns `held`."""
    if held:
        records[record.id] = record
    else:
        records.pop(record.id, None)
    return held


# -- the actions -------------------------------------------------------------------------------------------------

Publish = Callable[[CareRecord], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class CareContext:
    """What the handlers need: the records, the sites, and how to tell everyone about a change."""

    records: CareStore
    sites: Sites
    view: CareView
    publish: Publish
    # Available, live units ranked by drive time to (lat, lon): [{"unit", "drive_time_s", "metres"}], fastest first.
    rank_units: Callable[[float, float], list[Json]]


CARE = web.AppKey("care", CareContext)


def care_topic_of(record: CareRecord) -> str:
    key: int | str = record.unit if isinstance(record, Alert | Encounter) else record.id
    return care_topic(care_kind(record), key)


async def _body(request: web.Request) -> Json:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _int_param(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None


def _field(body: Json, name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise web.HTTPBadRequest(text=f"missing field {name!r}")
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
        raise web.HTTPBadRequest(text=f"field {name!r} must be {kind.__name__}")
    if isinstance(value, str) and not 0 < len(value) <= 1000:
        raise web.HTTPBadRequest(text=f"field {name!r} must be 1–1000 characters")
    return value


def _choice(body: Json, name: str, choices: type[_E]) -> _E:
    """A required field naming one of `choices`; 400 listing them otherwise."""
    try:
        return choices(_field(body, name, str))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be one of {[c.value for c in choices]}") from None


def _json(record: CareRecord | list[CareRecord] | Json) -> web.Response:
    if isinstance(record, dict):
        return web.json_response(record)
    if isinstance(record, list):
        return web.json_response([record_json(r) for r in record])
    return web.json_response(record_json(record))


def _store_errors(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RecordNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        except StoreError as exc:
            if exc.retryable:
                raise web.HTTPServiceUnavailable(text="the records are unavailable; try again") from exc
            raise web.HTTPConflict(text=str(exc)) from exc

    wrapped.__name__ = handler.__name__
    return wrapped


class Principal:
    """Who is calling: the guard's answer to a permitted request."""

    def __init__(self, username: str, role: str) -> None:
        self.username = username
        self.role = role


class Guard:
    """How the care routes check roles and audit: `require` raises HTTPForbidden/HTTPUnauthorized or returns who
    the caller is; `audit` appends to the audit log. Implemented by the console's authentication."""

    async def require(self, request: web.Request, permission: str) -> Principal:
        raise NotImplementedError

    async def require_any(self, request: web.Request, *permissions: str) -> Principal:
        """Like `require`, passing when the caller holds any one of `permissions` (a refusal is audited once)."""
        raise NotImplementedError

    async def audit(
        self,
        request: web.Request,
        action: str,
        *,
        encounter_id: int | None = None,
        unit: str | None = None,
        result: str = "allowed",
        detail: Json | None = None,
    ) -> None:
        raise NotImplementedError


GUARD = web.AppKey("care_guard", Guard)


async def _allowed(request: web.Request, permission: str, action: str, **target: Any) -> Principal:
    guard = request.app[GUARD]
    principal = await guard.require(request, permission)
    await guard.audit(request, action, **target)
    return principal


# -- dispatch ----------------------------------------------------------------------------------------------------


@_store_errors
async def list_incidents(request: web.Request) -> web.Response:
    await _allowed(request, "VIEW_FLEET", "list_incidents")
    return _json(list(request.app[CARE].view.incidents.values()))


@_store_errors
async def create_incident(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    principal = await request.app[GUARD].require(request, "MANAGE_INCIDENTS")
    body = await _body(request)
    try:
        priority = Priority(int(body.get("priority", 2)))
    except (ValueError, TypeError):
        raise web.HTTPBadRequest(text="priority must be 1–4") from None
    lat, lon = _field(body, "lat", float, required=False), _field(body, "lon", float, required=False)
    if (lat is None) != (lon is None) or (lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)):
        raise web.HTTPBadRequest(text="lat and lon must be given together, in range")
    incident = await ctx.records.create_incident(
        call_received_at=_field(body, "call_received_at", int, required=False) or now_us(),
        priority=priority,
        complaint=_field(body, "complaint", str),
        lat=lat,
        lon=lon,
        address=_field(body, "address", str, required=False),
        created_by=principal.username,
    )
    await request.app[GUARD].audit(request, "create_incident", detail={"incident": incident.id})
    await ctx.publish(incident)
    return _json(incident)


@_store_errors
async def assign_unit(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    incident_id = _int_param(request, "id")
    body = await _body(request)
    unit = _field(body, "unit", str)
    if not UNIT_PATTERN.fullmatch(unit):
        raise web.HTTPBadRequest(text="not a unit id")
    principal = await _allowed(request, "MANAGE_INCIDENTS", "assign_unit", unit=unit)
    incident = await ctx.records.assign_unit(incident_id, unit, at=now_us(), by=principal.username)
    await ctx.publish(incident)
    return _json(incident)


@_store_errors
async def unit_candidates(request: web.Request) -> web.Response:
    """The units to send to an incident: available, live, not on another incident, fastest by road first."""
    ctx = request.app[CARE]
    incident_id = _int_param(request, "id")
    await _allowed(request, "MANAGE_INCIDENTS", "unit_candidates", detail={"incident": incident_id})
    incident = ctx.view.incidents.get(incident_id) or await ctx.records.incident(incident_id)
    if incident.lat is None or incident.lon is None:
        return web.json_response([])
    return web.json_response(ctx.rank_units(incident.lat, incident.lon))


# -- alerts and activations --------------------------------------------------------------------------------------


@_store_errors
async def list_alerts(request: web.Request) -> web.Response:
    await _allowed(request, "VIEW_ALERTS", "list_alerts")
    return _json(list(request.app[CARE].view.alerts.values()))


@_store_errors
async def acknowledge_alert(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    alert_id = _int_param(request, "id")
    known = ctx.view.alerts.get(alert_id)
    principal = await _allowed(
        request, "ACK_ALERT", "acknowledge_alert", encounter_id=known.encounter_id if known else None
    )
    alert = await ctx.records.acknowledge_alert(alert_id, at=now_us(), by=principal.username, role=principal.role)
    await ctx.publish(alert)
    return _json(alert)


@_store_errors
async def activate_team(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    body = await _body(request)
    team = _choice(body, "team", Team)
    principal = await _allowed(request, "ACTIVATE_TEAM", "activate_team", encounter_id=encounter_id)
    await ctx.records.encounter(encounter_id)  # 404 for an unknown encounter
    (activation_id,) = await ctx.records.reserve_ids("activations", 1)
    activation = await ctx.records.save_activation(
        Activation(
            id=activation_id,
            encounter_id=encounter_id,
            team=team,
            state=ActivationState.REQUESTED,
            reason=_field(body, "reason", str, required=False) or f"requested by {principal.username}",
            requested_at=now_us(),
            requested_by=principal.username,
        )
    )
    if team is Team.CATH_LAB:
        await ctx.records.record_encounter_time(
            encounter_id,
            TimeRecord(
                Milestone.CATH_LAB_ACTIVATED, activation.requested_at, TimeSource.DISPATCHER, principal.username
            ),
        )
    await ctx.publish(activation)
    return _json(activation)


@_store_errors
async def acknowledge_activation(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    activation_id = _int_param(request, "id")
    known = ctx.view.activations.get(activation_id)
    principal = await _allowed(
        request, "ACK_ACTIVATION", "acknowledge_activation", encounter_id=known.encounter_id if known else None
    )
    activation = await ctx.records.acknowledge_activation(activation_id, at=now_us(), by=principal.username)
    await ctx.publish(activation)
    return _json(activation)


# -- encounters --------------------------------------------------------------------------------------------------


@_store_errors
async def list_encounters(request: web.Request) -> web.Response:
    await _allowed(request, "VIEW_PATIENT_LIVE", "list_encounters")
    return _json(list(request.app[CARE].view.encounters.values()))


@_store_errors
async def get_encounter(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    await _allowed(request, "VIEW_ENCOUNTER", "read_encounter", encounter_id=encounter_id)
    encounter = await ctx.records.encounter(encounter_id)
    incident = await ctx.records.incident(encounter.incident_id)
    return web.json_response(
        {
            "encounter": record_json(encounter),
            "incident": record_json(incident),
            "alerts": [record_json(a) for a in await ctx.records.alerts(open_only=False, encounter_id=encounter_id)],
            "activations": [record_json(a) for a in await ctx.records.activations(encounter_id)],
            "follow_ups": [dataclasses.asdict(f) for f in await ctx.records.follow_ups(encounter_id=encounter_id)],
        }
    )


@_store_errors
async def update_encounter(request: web.Request) -> web.Response:
    """Destination (dispatcher or physician), identity link (ED staff)."""
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    body = await _body(request)
    fields: Json = {}
    if "destination" in body:
        destination = _field(body, "destination", str)
        try:
            ctx.sites.hospital(destination)
        except KeyError:
            raise web.HTTPBadRequest(text=f"unknown hospital {destination!r}") from None
        await request.app[GUARD].require_any(request, "MANAGE_INCIDENTS", "ACTIVATE_TEAM")
        fields["destination"] = destination
    if "patient_id" in body or "patient_name" in body:
        await request.app[GUARD].require(request, "LINK_IDENTITY")
        fields["patient_id"] = _field(body, "patient_id", str, required=False)
        fields["patient_name"] = _field(body, "patient_name", str, required=False)
    if not fields:
        raise web.HTTPBadRequest(text="nothing to change: destination, patient_id, patient_name")
    await request.app[GUARD].audit(request, "update_encounter", encounter_id=encounter_id, detail=sorted(fields))  # type: ignore[arg-type]
    encounter = await ctx.records.update_encounter(encounter_id, **fields)
    await ctx.publish(encounter)
    return _json(encounter)


@_store_errors
async def record_milestone(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    body = await _body(request)
    milestone = _choice(body, "name", Milestone)
    principal = await _allowed(request, "RECORD_MILESTONE", "record_milestone", encounter_id=encounter_id)
    at = _field(body, "at", int, required=False) or now_us()
    await ctx.records.record_encounter_time(
        encounter_id, TimeRecord(milestone, at, TimeSource.DISPATCHER, principal.username)
    )
    encounter = await ctx.records.encounter(encounter_id)
    if milestone is Milestone.DOOR and encounter.door_at is None:
        encounter = await ctx.records.update_encounter(encounter_id, door_at=at, status=EncounterStatus.ARRIVED)
    await ctx.publish(encounter)
    return _json(encounter)


@_store_errors
async def edit_handoff(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    body = await _body(request)
    await _allowed(request, "EDIT_HANDOFF", "edit_handoff", encounter_id=encounter_id)
    encounter = await ctx.records.encounter(encounter_id)
    notes = dict(encounter.handoff_notes)
    for key, value in body.items():
        if key not in SECTION_KEYS:
            raise web.HTTPBadRequest(text=f"handoff sections are {sorted(SECTION_KEYS)}")
        if value is None:
            notes.pop(key, None)
        else:
            notes[key] = _field(body, key, str)
    encounter = await ctx.records.update_encounter(encounter_id, handoff_notes=notes)
    await ctx.publish(encounter)
    return _json(encounter)


@_store_errors
async def discharge(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    principal = await _allowed(request, "DISCHARGE", "discharge", encounter_id=encounter_id)
    body = await _body(request)
    disposition = _choice(body, "disposition", Disposition)
    at = _field(body, "at", int, required=False) or now_us()
    await ctx.records.record_encounter_time(
        encounter_id, TimeRecord(Milestone.DISCHARGE, at, TimeSource.DISPATCHER, principal.username)
    )
    encounter = await ctx.records.update_encounter(
        encounter_id,
        status=EncounterStatus.DISCHARGED,
        disposition=disposition,
        diagnosis=_field(body, "diagnosis", str, required=False),
    )
    plan = schedule_follow_ups(encounter_id, at, disposition)
    follow_ups = await ctx.records.schedule_follow_ups(encounter_id, plan)
    await ctx.publish(encounter)
    return web.json_response(
        {"encounter": record_json(encounter), "follow_ups": [dataclasses.asdict(f) for f in follow_ups]}
    )


async def _exportable(
    ctx: CareContext, encounter_id: int
) -> tuple[Encounter, Incident, list[Alert], list[Activation], Any]:
    encounter = await ctx.records.encounter(encounter_id)
    incident = await ctx.records.incident(encounter.incident_id)
    alerts = await ctx.records.alerts(open_only=False, encounter_id=encounter_id)
    activations = await ctx.records.activations(encounter_id)
    try:
        hospital = ctx.sites.hospital(encounter.destination) if encounter.destination else None
    except KeyError:
        hospital = None
    return encounter, incident, alerts, activations, hospital


def _end_of(encounter: Encounter) -> int:
    ends = [t.at for t in encounter.times if t.name == Milestone.DISCHARGE]
    return ends[0] if ends else now_us()


async def _latest_ecg(ctx: CareContext, encounter: Encounter) -> tuple[Any, float | None, int | None, Any]:
    """The newest 10 s (at least 5 s) of 12-lead recorded during the encounter, and its analysis (in a thread)."""
    frames = await ctx.records.ecg_frames(encounter.unit, encounter.contact_at, _end_of(encounter), limit=80)
    leads = contiguous_leads(frames, 10.0) or contiguous_leads(frames, 5.0)
    if leads is None:
        return None, None, None, None
    names, signals, fs, end_ts = leads
    seconds = len(signals[0]) / fs
    mapping = dict(zip(names, signals, strict=True))
    try:
        findings = await asyncio.to_thread(analyze, mapping, fs, sex=encounter.sex, age=encounter.age)
    except ValueError:
        findings = None
    return mapping, fs, end_ts - round(seconds * 1e6), findings


@_store_errors
async def get_handoff(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    await _allowed(request, "VIEW_PATIENT_LIVE", "read_handoff", encounter_id=encounter_id)
    encounter, _, alerts, activations, hospital = await _exportable(ctx, encounter_id)
    latest = await ctx.records.latest_vitals(encounter.unit, encounter.contact_at, _end_of(encounter))
    _, _, _, findings = await _latest_ecg(ctx, encounter)
    handoff = compose_handoff(
        encounter, vitals=latest, ecg=findings, alerts=alerts, activations=activations,
        hospital=hospital, now_us=now_us(),
    )  # fmt: skip
    return web.json_response(handoff.as_json())


@_store_errors
async def fhir_everything(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    encounter_id = _int_param(request, "id")
    await _allowed(request, "EXPORT_FHIR", "export_fhir", encounter_id=encounter_id)
    encounter, incident, alerts, activations, hospital = await _exportable(ctx, encounter_id)
    vitals = await ctx.records.vitals_series(encounter.unit, encounter.contact_at, _end_of(encounter), every_s=60)
    leads, fs, start, findings = await _latest_ecg(ctx, encounter)
    latest = await ctx.records.latest_vitals(encounter.unit, encounter.contact_at, _end_of(encounter))
    handoff = compose_handoff(
        encounter, vitals=latest, ecg=findings, alerts=alerts, activations=activations,
        hospital=hospital, now_us=now_us(),
    )  # fmt: skip
    bundle = encounter_bundle(
        encounter, incident, vitals=vitals, ecg_leads=leads, ecg_fs=fs, ecg_start_us=start, ecg_findings=findings,
        alerts=alerts, activations=activations, handoff=handoff, hospital=hospital,
    )  # fmt: skip
    return web.json_response(bundle, content_type="application/fhir+json")


# -- follow-up and quality ---------------------------------------------------------------------------------------


@_store_errors
async def list_follow_ups(request: web.Request) -> web.Response:
    await _allowed(request, "RECORD_OUTCOME", "list_follow_ups")
    follow_ups = await request.app[CARE].records.follow_ups(due_only=request.query.get("due") == "1")
    if request.query.get("due") == "1":  # the worklist: due by the end of today's shift, most overdue first
        follow_ups = due_follow_ups(follow_ups, now_us(), lead_us=12 * 3_600_000_000)
    return web.json_response([dataclasses.asdict(f) for f in follow_ups])


@_store_errors
async def record_outcome(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    follow_up_id = _int_param(request, "id")
    body = await _body(request)
    try:
        state = FollowUpState(body.get("state", "done"))
    except ValueError:
        raise web.HTTPBadRequest(text="state must be done or unreachable") from None
    principal = await _allowed(request, "RECORD_OUTCOME", "record_outcome", detail={"follow_up": follow_up_id})
    follow_up = await ctx.records.record_outcome(
        follow_up_id,
        state=state,
        alive=_field(body, "alive", bool, required=False),
        readmitted=_field(body, "readmitted", bool, required=False),
        mace=_field(body, "mace", bool, required=False),
        notes=_field(body, "notes", str, required=False),
        at=now_us(),
        by=principal.username,
    )
    return web.json_response(dataclasses.asdict(follow_up))


@_store_errors
async def quality(request: web.Request) -> web.Response:
    ctx = request.app[CARE]
    await _allowed(request, "VIEW_QUALITY", "quality_report")
    try:
        until = int(request.query.get("until", now_us()))
        since = int(request.query.get("since", until - 30 * 86_400_000_000))
    except ValueError:
        raise web.HTTPBadRequest(text="since and until are µs since the epoch") from None
    encounters = await ctx.records.encounters(
        "contact_at >= to_timestamp($1 / 1e6) AND contact_at < to_timestamp($2 / 1e6)", since, until
    )
    indicators = []
    for e in encounters:
        incident = await ctx.records.incident(e.incident_id)
        alerts = await ctx.records.alerts(open_only=False, encounter_id=e.id)
        indicators.append(encounter_indicators(e, incident, alerts, await ctx.records.activations(e.id)))
    report = aggregate(indicators, since, until)
    fmt = request.query.get("format", "json")
    if fmt == "csv":
        return web.Response(text=report.to_csv(), content_type="text/csv")
    if fmt == "encounters.csv":
        return web.Response(text=report.encounters_csv(), content_type="text/csv")
    return web.json_response(report.as_json())


@_store_errors
async def crew_feedback(request: web.Request) -> web.Response:
    """What became of the patients a unit brought in: the EMS side of the closed loop (alias, not identity)."""
    ctx = request.app[CARE]
    unit = request.query.get("unit")
    if unit is not None and not UNIT_PATTERN.fullmatch(unit):
        raise web.HTTPBadRequest(text="not a unit id")
    await _allowed(request, "VIEW_FEEDBACK", "crew_feedback", unit=unit)
    since = now_us() - 60 * 86_400_000_000
    where = "status = 'discharged' AND contact_at >= to_timestamp($1 / 1e6)"
    encounters = await (
        ctx.records.encounters(where + " AND unit = $2", since, unit) if unit else ctx.records.encounters(where, since)
    )
    out = []
    for e in encounters:
        follow_ups = await ctx.records.follow_ups(encounter_id=e.id)
        out.append(
            {
                "encounter_id": e.id, "alias": e.alias, "unit": e.unit, "contact_at": e.contact_at,
                "chief_complaint": e.chief_complaint, "diagnosis": e.diagnosis,
                "disposition": e.disposition.value if e.disposition else None,
                "outcome": outcome_summary(follow_ups),
            }
        )  # fmt: skip
    return web.json_response(out)


def setup_care(app: web.Application, context: CareContext, guard: Guard) -> None:
    app[CARE] = context
    app[GUARD] = guard
    add = app.router
    add.add_get("/api/incidents", list_incidents)
    add.add_post("/api/incidents", create_incident)
    add.add_post("/api/incidents/{id}/assign", assign_unit)
    add.add_get("/api/incidents/{id}/candidates", unit_candidates)
    add.add_get("/api/alerts", list_alerts)
    add.add_post("/api/alerts/{id}/acknowledge", acknowledge_alert)
    add.add_get("/api/encounters", list_encounters)
    add.add_get("/api/encounters/{id}", get_encounter)
    add.add_patch("/api/encounters/{id}", update_encounter)
    add.add_post("/api/encounters/{id}/activations", activate_team)
    add.add_post("/api/activations/{id}/acknowledge", acknowledge_activation)
    add.add_post("/api/encounters/{id}/milestones", record_milestone)
    add.add_put("/api/encounters/{id}/handoff", edit_handoff)
    add.add_post("/api/encounters/{id}/discharge", discharge)
    add.add_get("/api/follow-ups", list_follow_ups)
    add.add_post("/api/follow-ups/{id}/outcome", record_outcome)
    add.add_get("/api/quality", quality)
    add.add_get("/api/feedback", crew_feedback)
    add.add_get("/api/encounters/{id}/handoff", get_handoff)
    add.add_get("/fhir/Encounter/{id}/$everything", fhir_everything)
