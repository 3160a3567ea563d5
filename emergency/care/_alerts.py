"""The alert book: turns the conditions that hold for each unit into alerts with a lifecycle. Pure; no clock.

Lifecycle: raised → delivered (shown to someone who may acknowledge it) → acknowledged (by a person in an allowed
role) → resolved (the condition cleared, or the encounter ended). While a condition persists its alert is updated,
never raised again ("no storms"); an update is emitted only when what a person would read changes. An
unacknowledged critical alert repeats every `repeat_after_s` and, after `escalate_after_repeats` repeats, is
escalated to the second role. A condition seen only in late data (an outage backlog) is recorded as a backlog alert:
visible, never audible, never repeated, until live data shows it too.

Conditions are evaluated on device time (`at`); repeats and escalation run on the center's clock (`now`), because
they are about people, not the patient.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from emergency.care._model import Alert, AlertKind, AlertState, Severity
from emergency.care._rules import STICKY, Condition

# Link conditions clear as soon as the link says so; there is no reading to wait for.
IMMEDIATE_CLEAR: frozenset[AlertKind] = frozenset({AlertKind.TELEMETRY_LOST, AlertKind.SEQ_GAP})
UNACKNOWLEDGED = (AlertState.RAISED, AlertState.DELIVERED)


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    repeat_after_s: float = 120.0
    escalate_after_repeats: int = 1
    warning_repeats: int = 1  # a warning repeats at most this often; a critical alert until acknowledged
    clear_after_s: float = 60.0  # a reading-based condition absent this long (device time) resolves its alert
    first_roles: tuple[str, ...] = ("ed_nurse", "ed_physician")
    escalation_roles: tuple[str, ...] = ("ed_physician",)

    def roles(self, alert: Alert) -> tuple[str, ...]:
        """Who must be told about this alert now."""
        return self.escalation_roles if alert.escalation else self.first_roles


class AlertEvent(enum.StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    WORSENED = "worsened"  # severity went up: needs acknowledging again
    REPEATED = "repeated"
    ESCALATED = "escalated"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertChange:
    event: AlertEvent
    alert: Alert


@dataclass(slots=True)
class _Open:
    alert: Alert
    absent_since: int | None = None
    next_repeat_at: int | None = None


class AlertBook:
    """The open alerts of every unit this process evaluates; ids are the store's, bound after the first write."""

    def __init__(self, policy: AlertPolicy | None = None) -> None:
        self.policy = policy or AlertPolicy()
        # By unit, then kind: a unit's evaluation looks at that unit's open alerts only, not at the fleet's (with
        # thousands open across a city, a scan of them all per vitals message was half the gateway's CPU).
        self._open: dict[str, dict[AlertKind, _Open]] = {}

    def __iter__(self) -> Iterator[Alert]:
        return (entry.alert for entry in self._entries())

    def _entries(self) -> Iterator[_Open]:
        return (entry for kinds in self._open.values() for entry in kinds.values())

    def _entry(self, unit: str, kind: AlertKind) -> _Open | None:
        kinds = self._open.get(unit)
        return kinds.get(kind) if kinds else None

    def open_alert(self, unit: str, kind: AlertKind) -> Alert | None:
        entry = self._entry(unit, kind)
        return entry.alert if entry else None

    def reconcile(
        self,
        unit: str,
        encounter_id: int | None,
        conditions: Mapping[AlertKind, Condition],
        *,
        at: int,
        now: int,
        backlog: bool,
        kinds: frozenset[AlertKind] | None = None,
    ) -> list[AlertChange]:
        """Bring the unit's alerts in line with the conditions that hold at device time `at`.

        `kinds` limits which alert kinds these conditions speak for (e.g. link conditions vs clinical ones); a kind
        outside it is left alone. A backlog evaluation may raise and update, but never resolves a live alert.
        """
        changes: list[AlertChange] = []
        for kind, condition in conditions.items():
            entry = self._entry(unit, kind)
            if entry is None:
                changes.append(self._raise(unit, encounter_id, condition, now=now, backlog=backlog))
                continue
            entry.absent_since = None
            change = self._update(entry, condition, encounter_id, now=now, backlog=backlog)
            if change is not None:
                changes.append(change)
        for kind, entry in list(self._open.get(unit, {}).items()):
            if kind in conditions or (kinds is not None and kind not in kinds):
                continue
            if kind in STICKY or (backlog and not entry.alert.backlog):
                continue
            if kind in IMMEDIATE_CLEAR:
                changes.append(self._resolve(entry, at=now))
                continue
            if entry.absent_since is None:
                entry.absent_since = at
            elif at - entry.absent_since >= self.policy.clear_after_s * 1e6:
                changes.append(self._resolve(entry, at=at))
        return changes

    def _raise(self, unit: str, encounter_id: int | None, c: Condition, *, now: int, backlog: bool) -> AlertChange:
        alert = Alert(
            id=0,
            unit=unit,
            encounter_id=encounter_id,
            kind=c.kind,
            severity=c.severity,
            state=AlertState.RAISED,
            summary=c.summary,
            detail=c.detail,
            raised_at=c.at,
            updated_at=c.at,
            backlog=backlog,
        )
        entry = _Open(alert, next_repeat_at=None if backlog else now + self._repeat_us)
        self._open.setdefault(unit, {})[c.kind] = entry
        return AlertChange(AlertEvent.RAISED, alert)

    def _update(
        self, entry: _Open, c: Condition, encounter_id: int | None, *, now: int, backlog: bool
    ) -> AlertChange | None:
        old = entry.alert
        if backlog and not old.backlog:
            return None  # late data adds nothing to a live alert
        went_live = old.backlog and not backlog
        worsened = c.severity.rank > old.severity.rank
        if not (went_live or worsened or c.summary != old.summary or encounter_id != old.encounter_id):
            return None
        alert = dataclasses.replace(
            old,
            severity=c.severity if worsened or went_live else old.severity,
            summary=c.summary,
            detail=c.detail,
            updated_at=max(old.updated_at, c.at),
            encounter_id=encounter_id if encounter_id is not None else old.encounter_id,
            backlog=backlog,
        )
        if worsened or went_live:
            alert = dataclasses.replace(
                alert,
                state=AlertState.RAISED,
                acknowledged_at=None,
                acknowledged_by=None,
                acknowledged_role=None,
                repeats=0,
                escalation=0,
            )
            entry.next_repeat_at = now + self._repeat_us
        entry.alert = alert
        event = AlertEvent.WORSENED if worsened else AlertEvent.RAISED if went_live else AlertEvent.UPDATED
        return AlertChange(event, alert)

    def _resolve(self, entry: _Open, *, at: int) -> AlertChange:
        unit = entry.alert.unit
        kinds = self._open[unit]
        del kinds[entry.alert.kind]
        if not kinds:
            del self._open[unit]
        alert = dataclasses.replace(entry.alert, state=AlertState.RESOLVED, resolved_at=at)
        return AlertChange(AlertEvent.RESOLVED, alert)

    def close_unit(self, unit: str, *, at: int) -> list[AlertChange]:
        """The unit's encounter ended: every open alert of the unit is resolved, sticky ones included."""
        return [self._resolve(entry, at=at) for entry in list(self._open.get(unit, {}).values())]

    @property
    def _repeat_us(self) -> int:
        return round(self.policy.repeat_after_s * 1e6)

    def due(self, now: int) -> list[AlertChange]:
        """Repeats and escalations that are due at center time `now`."""
        changes: list[AlertChange] = []
        for entry in self._entries():
            alert = entry.alert
            if entry.next_repeat_at is None or now < entry.next_repeat_at or alert.state not in UNACKNOWLEDGED:
                continue
            if alert.severity is Severity.INFO or (
                alert.severity is Severity.WARNING and alert.repeats >= self.policy.warning_repeats
            ):
                entry.next_repeat_at = None
                continue
            repeats = alert.repeats + 1
            escalate = alert.escalation == 0 and repeats >= self.policy.escalate_after_repeats
            entry.alert = dataclasses.replace(alert, repeats=repeats, escalation=1 if escalate else alert.escalation)
            entry.next_repeat_at = now + self._repeat_us
            changes.append(AlertChange(AlertEvent.ESCALATED if escalate else AlertEvent.REPEATED, entry.alert))
        return changes

    def adopt(self, alert: Alert, *, now: int) -> None:
        """Take over an open alert from the store (a restart): it keeps its id, state and repeat schedule."""
        repeat_at = None if alert.backlog or alert.state not in UNACKNOWLEDGED else now + self._repeat_us
        self._open.setdefault(alert.unit, {})[alert.kind] = _Open(alert, next_repeat_at=repeat_at)

    def bind_id(self, unit: str, kind: AlertKind, alert_id: int) -> None:
        entry = self._entry(unit, kind)
        if entry is not None and entry.alert.id != alert_id:
            entry.alert = dataclasses.replace(entry.alert, id=alert_id)

    def merge_external(self, alert: Alert) -> None:
        """Take in a person's change made elsewhere (delivered, acknowledged) from the alert's published snapshot."""
        entry = self._entry(alert.unit, alert.kind)
        if entry is None or (entry.alert.id and entry.alert.id != alert.id):
            return
        mine = entry.alert
        if alert.state is AlertState.ACKNOWLEDGED and mine.state is not AlertState.ACKNOWLEDGED:
            entry.alert = dataclasses.replace(
                mine,
                id=alert.id,
                state=AlertState.ACKNOWLEDGED,
                acknowledged_at=alert.acknowledged_at,
                acknowledged_by=alert.acknowledged_by,
                acknowledged_role=alert.acknowledged_role,
            )
            entry.next_repeat_at = None
        elif alert.state is AlertState.DELIVERED and mine.state is AlertState.RAISED:
            entry.alert = dataclasses.replace(
                mine, id=alert.id, state=AlertState.DELIVERED, delivered_at=alert.delivered_at
            )
