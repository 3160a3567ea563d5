"""SQL for the clinical loop's records (schema: migration 2 in `_migrations.py`; shapes: emergency/care/_model.py).

Two writers share these tables and own different columns, so neither overwrites the other's work:
- the clinical loop (in the gateway process) writes what the devices and rules establish: encounters' device-driven
  fields, crew notes, times from devices and geofences, alerts' clinical content and their resolution;
- people at the console write what people decide: incidents and assignments, destinations, identity links,
  handoff edits, alert delivery and acknowledgement, activations, milestones, discharge and follow-up outcomes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from emergency.care._model import (
    Activation,
    ActivationState,
    Acuity,
    Alert,
    AlertKind,
    AlertState,
    Disposition,
    Encounter,
    EncounterStatus,
    Finding,
    FollowUp,
    FollowUpState,
    Incident,
    Priority,
    Severity,
    Team,
    TimeRecord,
    TimeSource,
    Treatment,
)
from emergency.protocol import EcgFrame, Vitals
from emergency.store._store import DB_ERRORS, LinkEvent, Store, StoreError, from_us, to_us

# What may succeed when tried again: the server away, restarting, shutting down, or out of connections.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    OSError,
)
ACTIVE_STATUSES = (EncounterStatus.PRE_REGISTERED.value, EncounterStatus.ARRIVED.value)


class RecordNotFound(StoreError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found", retryable=False)


def _us(value: Any) -> int | None:
    return None if value is None else to_us(value)


def _ts(value: int | None) -> Any:
    return None if value is None else from_us(value)


def _times(rows: Sequence[asyncpg.Record]) -> tuple[TimeRecord, ...]:
    records = [TimeRecord(r["name"], to_us(r["at"]), TimeSource(r["source"]), r["actor"]) for r in rows]
    return tuple(sorted(records, key=lambda t: t.at))


def _incident(row: asyncpg.Record, times: Sequence[asyncpg.Record] = ()) -> Incident:
    return Incident(
        id=row["id"],
        call_received_at=to_us(row["call_received_at"]),
        priority=Priority(row["priority"]),
        complaint=row["complaint"],
        lat=row["lat"],
        lon=row["lon"],
        address=row["address"],
        unit=row["unit"],
        created_by=row["created_by"],
        closed_at=_us(row["closed_at"]),
        times=_times(times),
    )


def _encounter(
    row: asyncpg.Record, times: Sequence[asyncpg.Record] = (), notes: Sequence[asyncpg.Record] = ()
) -> Encounter:
    findings = tuple(Finding(to_us(n["at"]), n["text"], n["code"], n["value"]) for n in notes if n["kind"] == "finding")
    treatments = tuple(
        Treatment(to_us(n["at"]), n["text"], n["code"], n["dose"], n["dose_unit"])
        for n in notes
        if n["kind"] == "treatment"
    )
    return Encounter(
        id=row["id"],
        alias=row["alias"],
        incident_id=row["incident_id"],
        unit=row["unit"],
        status=EncounterStatus(row["status"]),
        contact_at=to_us(row["contact_at"]),
        destination=row["destination"],
        age=row["age"],
        sex=row["sex"],
        chief_complaint=row["chief_complaint"],
        acuity=Acuity(row["acuity"]),
        eta_at=_us(row["eta_at"]),
        door_at=_us(row["door_at"]),
        patient_id=row["patient_id"],
        patient_name=row["patient_name"],
        last_known_well_at=_us(row["last_known_well_at"]),
        symptom_onset_at=_us(row["symptom_onset_at"]),
        disposition=Disposition(row["disposition"]) if row["disposition"] else None,
        diagnosis=row["diagnosis"],
        findings=findings,
        treatments=treatments,
        times=_times(times),
        handoff_notes=json.loads(row["handoff_notes"]),
    )


def _alert(row: asyncpg.Record) -> Alert:
    return Alert(
        id=row["id"],
        unit=row["unit"],
        encounter_id=row["encounter_id"],
        kind=AlertKind(row["kind"]),
        severity=Severity(row["severity"]),
        state=AlertState(row["state"]),
        summary=row["summary"],
        detail=json.loads(row["detail"]),
        raised_at=to_us(row["raised_at"]),
        updated_at=to_us(row["updated_at"]),
        delivered_at=_us(row["delivered_at"]),
        acknowledged_at=_us(row["acknowledged_at"]),
        acknowledged_by=row["acknowledged_by"],
        acknowledged_role=row["acknowledged_role"],
        resolved_at=_us(row["resolved_at"]),
        repeats=row["repeats"],
        escalation=row["escalation"],
        backlog=row["backlog"],
    )


def _activation(row: asyncpg.Record) -> Activation:
    return Activation(
        id=row["id"],
        encounter_id=row["encounter_id"],
        team=Team(row["team"]),
        state=ActivationState(row["state"]),
        reason=row["reason"],
        requested_at=to_us(row["requested_at"]),
        requested_by=row["requested_by"],
        acknowledged_at=_us(row["acknowledged_at"]),
        acknowledged_by=row["acknowledged_by"],
    )


def _follow_up(row: asyncpg.Record) -> FollowUp:
    return FollowUp(
        id=row["id"],
        encounter_id=row["encounter_id"],
        label=row["label"],
        due_at=to_us(row["due_at"]),
        state=FollowUpState(row["state"]),
        alive=row["alive"],
        readmitted=row["readmitted"],
        mace=row["mace"],
        notes=row["notes"],
        recorded_at=_us(row["recorded_at"]),
        recorded_by=row["recorded_by"],
    )


class CareStore:
    """The clinical records on the store's pool. Every method raises `StoreError` (never asyncpg's errors)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _pool(self) -> asyncpg.Pool:
        return self._store.pool

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except StoreError:
            raise
        except _TRANSIENT as exc:
            raise StoreError(f"care records: {exc}", retryable=True) from exc
        except DB_ERRORS as exc:
            raise StoreError(f"care records: {exc}", retryable=False) from exc

    async def record_link_event(self, event: LinkEvent) -> None:
        """A link observation the clinical loop made (a device clock found off by a steady amount)."""
        await self._store.record_link_events([event])

    # -- ids -------------------------------------------------------------------------------------------------

    async def reserve_ids(self, table: str, count: int) -> list[int]:
        """Ids from `table`'s sequence, so a record can be named (and published) before it is written."""
        if table not in ("incidents", "encounters", "alerts", "activations"):
            raise ValueError(table)

        async def go() -> list[int]:
            rows = await self._pool.fetch(
                "SELECT nextval(pg_get_serial_sequence($1, 'id')) AS id FROM generate_series(1, $2)", table, count
            )
            return [r["id"] for r in rows]

        result: list[int] = await self._run(go)
        return result

    # -- the clinical loop's writes ----------------------------------------------------------------------------

    async def save_incident_from_device(self, incident: Incident) -> None:
        """An incident the loop opened because a unit made patient contact with no incident assigned."""

        async def go() -> None:
            await self._pool.execute(
                """INSERT INTO incidents
                       (id, call_received_at, priority, complaint, lat, lon, address, unit, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING""",
                incident.id, from_us(incident.call_received_at), int(incident.priority), incident.complaint,
                incident.lat, incident.lon, incident.address, incident.unit, incident.created_by,
            )  # fmt: skip

        await self._run(go)

    async def save_encounter_from_device(self, e: Encounter) -> None:
        """Insert or update the device-driven fields; a person's destination choice is kept (COALESCE)."""

        async def go() -> None:
            await self._pool.execute(
                """INSERT INTO encounters (id, alias, incident_id, unit, status, contact_at, destination, age, sex,
                       chief_complaint, acuity, eta_at, door_at, last_known_well_at, symptom_onset_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                   ON CONFLICT (id) DO UPDATE SET
                       status = CASE WHEN encounters.status IN ('discharged', 'cancelled') THEN encounters.status
                                     ELSE EXCLUDED.status END,
                       destination = COALESCE(encounters.destination, EXCLUDED.destination),
                       age = EXCLUDED.age, sex = EXCLUDED.sex, chief_complaint = EXCLUDED.chief_complaint,
                       acuity = EXCLUDED.acuity, eta_at = EXCLUDED.eta_at,
                       door_at = COALESCE(encounters.door_at, EXCLUDED.door_at),
                       last_known_well_at = EXCLUDED.last_known_well_at,
                       symptom_onset_at = EXCLUDED.symptom_onset_at,
                       updated_at = now()""",
                e.id, e.alias, e.incident_id, e.unit, e.status.value, from_us(e.contact_at), e.destination, e.age,
                e.sex, e.chief_complaint, e.acuity.value, _ts(e.eta_at), _ts(e.door_at), _ts(e.last_known_well_at),
                _ts(e.symptom_onset_at),
            )  # fmt: skip

        await self._run(go)

    async def record_incident_time(self, incident_id: int, t: TimeRecord) -> bool:
        """The first time of each kind is kept; returns whether this one was new."""

        async def go() -> bool:
            status = await self._pool.execute(
                """INSERT INTO incident_times (incident_id, name, at, source, actor) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT DO NOTHING""",
                incident_id, t.name, from_us(t.at), t.source.value, t.actor,
            )  # fmt: skip
            return bool(status.endswith(" 1"))

        result: bool = await self._run(go)
        return result

    async def record_encounter_time(self, encounter_id: int, t: TimeRecord) -> bool:
        async def go() -> bool:
            status = await self._pool.execute(
                """INSERT INTO encounter_times (encounter_id, name, at, source, actor) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT DO NOTHING""",
                encounter_id, t.name, from_us(t.at), t.source.value, t.actor,
            )  # fmt: skip
            return bool(status.endswith(" 1"))

        result: bool = await self._run(go)
        return result

    async def record_note(self, key: tuple[str, int, int], encounter_id: int, note: Finding | Treatment) -> None:
        unit, boot, seq = key
        kind = "finding" if isinstance(note, Finding) else "treatment"
        value = note.value if isinstance(note, Finding) else None
        dose = note.dose if isinstance(note, Treatment) else None
        dose_unit = note.dose_unit if isinstance(note, Treatment) else None

        async def go() -> None:
            await self._pool.execute(
                """INSERT INTO encounter_notes (unit, boot, seq, encounter_id, at, kind, text, code, value, dose,
                       dose_unit) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING""",
                unit, boot, seq, encounter_id, from_us(note.at), kind, note.text, note.code, value, dose, dose_unit,
            )  # fmt: skip

        await self._run(go)

    async def save_alert_from_rules(self, a: Alert, event: str, *, reopen: bool) -> None:
        """Write the clinical content of an alert (and its lifecycle event). Delivery and acknowledgement are
        people's and are kept, unless `reopen` (the condition worsened) asks for acknowledgement again."""

        async def go() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    """INSERT INTO alerts (id, unit, encounter_id, kind, severity, state, summary, detail, raised_at,
                           updated_at, resolved_at, repeats, escalation, backlog)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                       ON CONFLICT (id) DO UPDATE SET
                           encounter_id = COALESCE(EXCLUDED.encounter_id, alerts.encounter_id),
                           severity = EXCLUDED.severity, summary = EXCLUDED.summary, detail = EXCLUDED.detail,
                           updated_at = EXCLUDED.updated_at, resolved_at = EXCLUDED.resolved_at,
                           repeats = EXCLUDED.repeats, escalation = EXCLUDED.escalation, backlog = EXCLUDED.backlog,
                           state = CASE WHEN EXCLUDED.state = 'resolved' THEN 'resolved'
                                        WHEN $15 THEN 'raised' ELSE alerts.state END,
                           acknowledged_at = CASE WHEN $15 THEN NULL ELSE alerts.acknowledged_at END,
                           acknowledged_by = CASE WHEN $15 THEN NULL ELSE alerts.acknowledged_by END,
                           acknowledged_role = CASE WHEN $15 THEN NULL ELSE alerts.acknowledged_role END""",
                    a.id, a.unit, a.encounter_id, a.kind.value, a.severity.value, a.state.value, a.summary,
                    json.dumps(a.detail), from_us(a.raised_at), from_us(a.updated_at), _ts(a.resolved_at),
                    a.repeats, a.escalation, a.backlog, reopen,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO alert_events (alert_id, at, event, actor, detail)"
                    " VALUES ($1, now(), $2, 'center', $3)",
                    a.id, event, json.dumps({"summary": a.summary, "severity": a.severity.value, "backlog": a.backlog}),
                )  # fmt: skip

        await self._run(go)

    async def save_activation(self, a: Activation) -> Activation:
        """Request a team; an open activation of the same team for the encounter is returned instead of a second."""

        async def go() -> Activation:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    """INSERT INTO activations (id, encounter_id, team, state, reason, requested_at, requested_by)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING *""",
                    a.id, a.encounter_id, a.team.value, a.state.value, a.reason, from_us(a.requested_at),
                    a.requested_by,
                )  # fmt: skip
                if row is None:
                    row = await conn.fetchrow(
                        "SELECT * FROM activations WHERE encounter_id = $1 AND team = $2 AND state <> 'cancelled'",
                        a.encounter_id, a.team.value,
                    )  # fmt: skip
                return _activation(row)

        result: Activation = await self._run(go)
        return result

    async def change_destination(self, encounter_id: int, old: str | None, new: str) -> bool:
        """The loop's own re-routing (a diagnosis needs a capability): only if no one changed it meanwhile."""

        async def go() -> bool:
            status = await self._pool.execute(
                """UPDATE encounters SET destination = $3, updated_at = now()
                   WHERE id = $1 AND destination IS NOT DISTINCT FROM $2""",
                encounter_id, old, new,
            )  # fmt: skip
            return bool(status.endswith(" 1"))

        result: bool = await self._run(go)
        return result

    # -- reads -------------------------------------------------------------------------------------------------

    async def open_incidents(self) -> list[Incident]:
        async def go() -> list[Incident]:
            rows = await self._pool.fetch("SELECT * FROM incidents WHERE closed_at IS NULL ORDER BY id")
            times = await self._pool.fetch(
                "SELECT * FROM incident_times WHERE incident_id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
            return [_incident(r, [t for t in times if t["incident_id"] == r["id"]]) for r in rows]

        result: list[Incident] = await self._run(go)
        return result

    async def incident(self, incident_id: int) -> Incident:
        async def go() -> Incident:
            row = await self._pool.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)
            if row is None:
                raise RecordNotFound(f"incident {incident_id}")
            times = await self._pool.fetch("SELECT * FROM incident_times WHERE incident_id = $1", incident_id)
            return _incident(row, times)

        result: Incident = await self._run(go)
        return result

    async def encounters(self, where: str = "status = ANY($1::text[])", *args: Any) -> list[Encounter]:
        async def go() -> list[Encounter]:
            params = args or (list(ACTIVE_STATUSES),)
            rows = await self._pool.fetch(f"SELECT * FROM encounters WHERE {where} ORDER BY id", *params)
            ids = [r["id"] for r in rows]
            times = await self._pool.fetch("SELECT * FROM encounter_times WHERE encounter_id = ANY($1::bigint[])", ids)
            notes = await self._pool.fetch(
                "SELECT * FROM encounter_notes WHERE encounter_id = ANY($1::bigint[]) ORDER BY at", ids
            )
            return [
                _encounter(
                    r,
                    [t for t in times if t["encounter_id"] == r["id"]],
                    [n for n in notes if n["encounter_id"] == r["id"]],
                )
                for r in rows
            ]

        result: list[Encounter] = await self._run(go)
        return result

    async def active_encounters(self) -> list[Encounter]:
        return await self.encounters()

    async def encounter(self, encounter_id: int) -> Encounter:
        found = await self.encounters("id = $1", encounter_id)
        if not found:
            raise RecordNotFound(f"encounter {encounter_id}")
        return found[0]

    async def alerts(self, *, open_only: bool = True, encounter_id: int | None = None) -> list[Alert]:
        async def go() -> list[Alert]:
            rows = await self._pool.fetch(
                """SELECT * FROM alerts WHERE ($1::bool IS FALSE OR state <> 'resolved')
                   AND ($2::bigint IS NULL OR encounter_id = $2) ORDER BY raised_at""",
                open_only, encounter_id,
            )  # fmt: skip
            return [_alert(r) for r in rows]

        result: list[Alert] = await self._run(go)
        return result

    async def activations(self, encounter_id: int | None = None) -> list[Activation]:
        async def go() -> list[Activation]:
            rows = await self._pool.fetch(
                "SELECT * FROM activations WHERE ($1::bigint IS NULL OR encounter_id = $1) ORDER BY id", encounter_id
            )
            return [_activation(r) for r in rows]

        result: list[Activation] = await self._run(go)
        return result

    async def follow_ups(self, *, encounter_id: int | None = None, due_only: bool = False) -> list[FollowUp]:
        async def go() -> list[FollowUp]:
            rows = await self._pool.fetch(
                """SELECT * FROM follow_ups WHERE ($1::bigint IS NULL OR encounter_id = $1)
                   AND ($2::bool IS FALSE OR state = 'due') ORDER BY due_at""",
                encounter_id, due_only,
            )  # fmt: skip
            return [_follow_up(r) for r in rows]

        result: list[FollowUp] = await self._run(go)
        return result

    # -- telemetry for exports ---------------------------------------------------------------------------------

    async def vitals_series(self, unit: str, since: int, until: int, *, every_s: int = 60) -> list[Vitals]:
        """One vitals set per `every_s` (the last of each interval), and every cuff reading, between two device
        times."""

        async def go() -> list[Vitals]:
            rows = await self._pool.fetch(
                """(SELECT DISTINCT ON (floor(extract(epoch FROM ts) / $4)) *
                    FROM vitals WHERE unit = $1 AND ts >= $2 AND ts <= $3
                    ORDER BY floor(extract(epoch FROM ts) / $4), ts DESC)
                   UNION
                   (SELECT * FROM vitals WHERE unit = $1 AND ts >= $2 AND ts <= $3 AND sbp IS NOT NULL)""",
                unit, from_us(since), from_us(until), every_s,
            )  # fmt: skip
            out = [
                Vitals(
                    r["unit"],
                    r["boot"],
                    r["seq"],
                    to_us(r["ts"]),
                    r["hr"],
                    r["sbp"],
                    r["dbp"],
                    r["map"],
                    r["spo2"],
                    r["rr"],
                    r["temp"],
                    r["etco2"],
                    _us(r["nibp_ts"]),
                )
                for r in rows
            ]
            return sorted(out, key=lambda v: v.ts)

        result: list[Vitals] = await self._run(go)
        return result

    async def latest_vitals(self, unit: str, since: int, until: int) -> Vitals | None:
        """Each vital sign's newest value between two device times (the cuff's pressures are minutes apart)."""
        fields = ("hr", "sbp", "dbp", "map", "spo2", "rr", "temp", "etco2", "nibp_ts")
        picks = ", ".join(f"(array_agg({f} ORDER BY ts DESC) FILTER (WHERE {f} IS NOT NULL))[1] AS {f}" for f in fields)

        async def go() -> Vitals | None:
            row = await self._pool.fetchrow(
                f"""SELECT max(ts) AS ts, {picks} FROM vitals WHERE unit = $1 AND ts >= $2 AND ts <= $3""",
                unit, from_us(since), from_us(until),
            )  # fmt: skip
            if row is None or row["ts"] is None:
                return None
            return Vitals(
                unit, 0, 0, to_us(row["ts"]), row["hr"], row["sbp"], row["dbp"], row["map"], row["spo2"], row["rr"],
                row["temp"], row["etco2"], _us(row["nibp_ts"]),
            )  # fmt: skip

        result: Vitals | None = await self._run(go)
        return result

    async def ecg_frames(self, unit: str, since: int, until: int, *, limit: int = 200) -> list[EcgFrame]:
        """The newest `limit` 12-lead frames between two device times, oldest first."""

        async def go() -> list[EcgFrame]:
            rows = await self._pool.fetch(
                """SELECT * FROM ecg_frames WHERE unit = $1 AND ts >= $2 AND ts <= $3
                   ORDER BY ts DESC LIMIT $4""",
                unit, from_us(since), from_us(until), limit,
            )  # fmt: skip
            frames = [
                EcgFrame(
                    r["unit"],
                    r["boot"],
                    r["seq"],
                    to_us(r["ts"]),
                    r["fs"],
                    tuple(r["leads"]),
                    r["lsb_uv"],
                    r["n"],
                    bytes(r["data"]),
                )
                for r in rows
            ]
            return frames[::-1]

        result: list[EcgFrame] = await self._run(go)
        return result

    # -- people's writes ---------------------------------------------------------------------------------------

    async def create_incident(
        self,
        *,
        call_received_at: int,
        priority: Priority,
        complaint: str,
        lat: float | None,
        lon: float | None,
        address: str | None,
        created_by: str,
    ) -> Incident:
        async def go() -> Incident:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    """INSERT INTO incidents (call_received_at, priority, complaint, lat, lon, address, created_by)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
                    from_us(call_received_at), int(priority), complaint, lat, lon, address, created_by,
                )  # fmt: skip
                await conn.execute(
                    """INSERT INTO incident_times (incident_id, name, at, source, actor)
                       VALUES ($1, 'call_received', $2, 'dispatcher', $3)""",
                    row["id"], from_us(call_received_at), created_by,
                )  # fmt: skip
                times = await conn.fetch("SELECT * FROM incident_times WHERE incident_id = $1", row["id"])
                return _incident(row, times)

        result: Incident = await self._run(go)
        return result

    async def assign_unit(self, incident_id: int, unit: str, *, at: int, by: str) -> Incident:
        """Assign a unit; refused (StoreError) when the unit already has another open incident."""

        async def go() -> Incident:
            async with self._pool.acquire() as conn, conn.transaction():
                try:
                    row = await conn.fetchrow(
                        "UPDATE incidents SET unit = $2 WHERE id = $1 AND closed_at IS NULL RETURNING id",
                        incident_id, unit,
                    )  # fmt: skip
                except asyncpg.UniqueViolationError as exc:
                    raise StoreError(f"unit {unit} already has an open incident", retryable=False) from exc
                if row is None:
                    raise RecordNotFound(f"open incident {incident_id}")
                for name in ("dispatch_notified", "unit_notified"):
                    await conn.execute(
                        """INSERT INTO incident_times (incident_id, name, at, source, actor)
                           VALUES ($1, $2, $3, 'dispatcher', $4) ON CONFLICT DO NOTHING""",
                        incident_id, name, from_us(at), by,
                    )  # fmt: skip
            return await self.incident(incident_id)

        result: Incident = await self._run(go)
        return result

    async def close_incident(self, incident_id: int, *, at: int) -> None:
        await self._run(
            self._pool.execute, "UPDATE incidents SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL",
            incident_id, from_us(at),
        )  # fmt: skip

    async def mark_delivered(self, alert_id: int, *, at: int) -> Alert | None:
        """First delivery to someone who may acknowledge; None when already past `raised`."""

        async def go() -> Alert | None:
            # One statement: the state and its event are written together, in one round trip.
            row = await self._pool.fetchrow(
                """WITH delivered AS (
                       UPDATE alerts SET state = 'delivered', delivered_at = $2 WHERE id = $1 AND state = 'raised'
                       RETURNING *
                   ), event AS (
                       INSERT INTO alert_events (alert_id, at, event, actor)
                       SELECT id, $2, 'delivered', NULL FROM delivered
                   )
                   SELECT * FROM delivered""",
                alert_id, from_us(at),
            )  # fmt: skip
            return None if row is None else _alert(row)

        result: Alert | None = await self._run(go)
        return result

    async def acknowledge_alert(self, alert_id: int, *, at: int, by: str, role: str) -> Alert:
        async def go() -> Alert:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    """UPDATE alerts SET state = 'acknowledged', acknowledged_at = $2, acknowledged_by = $3,
                           acknowledged_role = $4
                       WHERE id = $1 AND state IN ('raised', 'delivered') RETURNING *""",
                    alert_id, from_us(at), by, role,
                )  # fmt: skip
                if row is None:
                    row = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
                    if row is None:
                        raise RecordNotFound(f"alert {alert_id}")
                    return _alert(row)  # already acknowledged or resolved: acknowledging again changes nothing
                await conn.execute(
                    "INSERT INTO alert_events (alert_id, at, event, actor, detail)"
                    " VALUES ($1, $2, 'acknowledged', $3, $4)",
                    alert_id, from_us(at), by, json.dumps({"role": role}),
                )  # fmt: skip
                return _alert(row)

        result: Alert = await self._run(go)
        return result

    async def acknowledge_activation(self, activation_id: int, *, at: int, by: str) -> Activation:
        async def go() -> Activation:
            row = await self._pool.fetchrow(
                """UPDATE activations SET state = 'acknowledged', acknowledged_at = $2, acknowledged_by = $3
                   WHERE id = $1 AND state = 'requested' RETURNING *""",
                activation_id, from_us(at), by,
            )  # fmt: skip
            if row is None:
                row = await self._pool.fetchrow("SELECT * FROM activations WHERE id = $1", activation_id)
                if row is None:
                    raise RecordNotFound(f"activation {activation_id}")
            return _activation(row)

        result: Activation = await self._run(go)
        return result

    async def update_encounter(self, encounter_id: int, **fields: Any) -> Encounter:
        """Set people-owned fields: destination, patient_id, patient_name, handoff_notes, status, disposition,
        diagnosis, door_at (when entered by a person)."""
        allowed = {"destination", "patient_id", "patient_name", "handoff_notes", "status", "disposition",
                   "diagnosis", "door_at"}  # fmt: skip
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"fields {sorted(set(fields) - allowed)} cannot be set here")
        values = [json.dumps(v) if k == "handoff_notes" else _ts(v) if k == "door_at" else v for k, v in fields.items()]
        assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(fields))

        async def go() -> None:
            status = await self._pool.execute(
                f"UPDATE encounters SET {assignments}, updated_at = now() WHERE id = $1", encounter_id, *values
            )
            if status.endswith(" 0"):
                raise RecordNotFound(f"encounter {encounter_id}")

        await self._run(go)
        return await self.encounter(encounter_id)

    async def schedule_follow_ups(self, encounter_id: int, plan: Sequence[tuple[str, int]]) -> list[FollowUp]:
        async def go() -> None:
            await self._pool.executemany(
                "INSERT INTO follow_ups (encounter_id, label, due_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                [(encounter_id, label, from_us(due)) for label, due in plan],
            )

        await self._run(go)
        return await self.follow_ups(encounter_id=encounter_id)

    async def record_outcome(
        self,
        follow_up_id: int,
        *,
        state: FollowUpState,
        alive: bool | None,
        readmitted: bool | None,
        mace: bool | None,
        notes: str | None,
        at: int,
        by: str,
    ) -> FollowUp:
        async def go() -> FollowUp:
            row = await self._pool.fetchrow(
                """UPDATE follow_ups SET state = $2, alive = $3, readmitted = $4, mace = $5, notes = $6,
                       recorded_at = $7, recorded_by = $8 WHERE id = $1 RETURNING *""",
                follow_up_id, state.value, alive, readmitted, mace, notes, from_us(at), by,
            )  # fmt: skip
            if row is None:
                raise RecordNotFound(f"follow-up {follow_up_id}")
            return _follow_up(row)

        result: FollowUp = await self._run(go)
        return result
