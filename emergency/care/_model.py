"""The clinical loop's records: incidents, encounters, their times, alerts, team activations, follow-ups.

Plain frozen dataclasses, the same shape in the store, on the center's bus (`emergency.bus` care topics) and in the
FHIR export. Times are µs since the Unix epoch; a time that came from a device is on the device's clock, one set by
a person or the center is on the center's clock, and `TimeSource` says which.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    """Dispatch priority of an incident: 1 is an immediate threat to life."""

    IMMEDIATE = 1
    EMERGENCY = 2
    URGENT = 3
    NON_URGENT = 4


class TimeSource(enum.StrEnum):
    DEVICE = "device"  # a crew event, on the device's clock
    DISPATCHER = "dispatcher"  # entered by a person at the console
    GEOFENCE = "geofence"  # the unit's GPS fix entered the destination's geofence
    CENTER = "center"  # derived by the center (e.g. the first ECG frame after patient contact)


class ETime(enum.StrEnum):
    """A unit's response times, in NEMSIS v3.5 eTimes order (`NEMSIS_ELEMENT` gives the element)."""

    CALL_RECEIVED = "call_received"
    DISPATCH_NOTIFIED = "dispatch_notified"
    UNIT_NOTIFIED = "unit_notified"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    AT_PATIENT = "at_patient"  # first medical contact (FMC)
    LEFT_SCENE = "left_scene"
    AT_DESTINATION = "at_destination"
    TRANSFER_OF_CARE = "transfer_of_care"
    BACK_IN_SERVICE = "back_in_service"


NEMSIS_ELEMENT: dict[ETime, str] = {
    ETime.CALL_RECEIVED: "eTimes.01",
    ETime.DISPATCH_NOTIFIED: "eTimes.02",
    ETime.UNIT_NOTIFIED: "eTimes.03",
    ETime.EN_ROUTE: "eTimes.05",
    ETime.ON_SCENE: "eTimes.06",
    ETime.AT_PATIENT: "eTimes.07",
    ETime.LEFT_SCENE: "eTimes.09",
    ETime.AT_DESTINATION: "eTimes.11",
    ETime.TRANSFER_OF_CARE: "eTimes.12",
    ETime.BACK_IN_SERVICE: "eTimes.13",
}


class Milestone(enum.StrEnum):
    """Clinical times of an encounter beyond the unit's eTimes; the quality indicators are computed from these."""

    FIRST_ECG = "first_ecg"  # first 12-lead frame received after patient contact
    ECG_TRANSMITTED = "ecg_transmitted"  # the first ECG reached the center
    STEMI_DIAGNOSIS = "stemi_diagnosis"  # STEMI recognised (alert raised or physician confirmed)
    DOOR = "door"  # arrival at the destination hospital (geofence or crew)
    CATH_LAB_ACTIVATED = "cath_lab_activated"
    CATH_LAB_ARRIVAL = "cath_lab_arrival"
    WIRE_CROSSING = "wire_crossing"  # first device: door-to-balloon / FMC-to-device end
    CT_START = "ct_start"
    NEEDLE = "needle"  # thrombolysis bolus: door-to-needle end
    PUNCTURE = "puncture"  # arterial puncture for thrombectomy: door-to-puncture end
    DISCHARGE = "discharge"


class EncounterStatus(enum.StrEnum):
    PRE_REGISTERED = "pre_registered"  # patient contact made; expected at the destination
    ARRIVED = "arrived"  # door time set
    IN_HOSPITAL = "in_hospital"  # care transferred to the hospital
    DISCHARGED = "discharged"
    CANCELLED = "cancelled"


class Acuity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AlertKind(enum.StrEnum):
    VITAL_THRESHOLD = "vital_threshold"
    NEWS2 = "news2"
    SHOCK_INDEX = "shock_index"
    QSOFA = "qsofa"
    STEMI = "stemi"
    LVO_STROKE = "lvo_stroke"
    TRAUMA = "trauma"
    DEVICE_ALARM = "device_alarm"
    TELEMETRY_LOST = "telemetry_lost"
    SEQ_GAP = "seq_gap"


class Severity(enum.StrEnum):
    CRITICAL = "critical"  # audible, repeats until acknowledged, escalates
    WARNING = "warning"  # visible; repeats once if unacknowledged
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"critical": 3, "warning": 2, "info": 1}[self.value]


class AlertState(enum.StrEnum):
    RAISED = "raised"
    DELIVERED = "delivered"  # shown on at least one console of a role that may acknowledge it
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"  # the condition cleared (or the encounter closed) before or after acknowledgement


class Team(enum.StrEnum):
    CATH_LAB = "cath_lab"
    STROKE = "stroke"
    TRAUMA = "trauma"


class ActivationState(enum.StrEnum):
    REQUESTED = "requested"
    ACKNOWLEDGED = "acknowledged"  # the team confirmed it is assembling
    CANCELLED = "cancelled"


class FollowUpState(enum.StrEnum):
    DUE = "due"
    DONE = "done"
    UNREACHABLE = "unreachable"


class Disposition(enum.StrEnum):
    HOME = "home"
    ADMITTED = "admitted"
    TRANSFERRED = "transferred"
    DIED = "died"
    LEFT = "left_against_advice"


@dataclass(frozen=True, slots=True)
class TimeRecord:
    name: str  # an ETime or a Milestone value
    at: int
    source: TimeSource
    actor: str | None = None  # the person who entered it, or the unit whose device sent it


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    call_received_at: int
    priority: Priority
    complaint: str
    lat: float | None
    lon: float | None
    address: str | None
    unit: str | None  # the unit assigned, if any
    created_by: str
    closed_at: int | None = None
    times: tuple[TimeRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Encounter:
    """A patient pre-registered at a destination hospital. `alias` is unique and can be read aloud; the patient's
    real identity, when known, is linked by `patient_id` (never by creating a second encounter)."""

    id: int
    alias: str
    incident_id: int
    unit: str
    status: EncounterStatus
    contact_at: int  # first medical contact, device time
    destination: str | None  # hospital code
    age: int | None = None
    sex: str | None = None
    chief_complaint: str | None = None
    acuity: Acuity = Acuity.LOW
    eta_at: int | None = None
    door_at: int | None = None
    patient_id: str | None = None  # the hospital's medical record number once identified
    patient_name: str | None = None
    last_known_well_at: int | None = None
    symptom_onset_at: int | None = None
    disposition: Disposition | None = None
    diagnosis: str | None = None
    findings: tuple[Finding, ...] = ()
    treatments: tuple[Treatment, ...] = ()
    times: tuple[TimeRecord, ...] = ()
    handoff_notes: dict[str, str] = field(default_factory=dict)  # crew's edits per ATMIST-ER section


@dataclass(frozen=True, slots=True)
class Finding:
    at: int
    text: str
    code: str | None = None
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Treatment:
    at: int
    text: str
    code: str | None = None
    dose: float | None = None
    dose_unit: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert per (unit, kind) while its condition persists: the condition updates it, never re-raises it."""

    id: int
    unit: str
    encounter_id: int | None
    kind: AlertKind
    severity: Severity
    state: AlertState
    summary: str
    detail: dict[str, Any]
    raised_at: int  # device time of the data that raised it
    updated_at: int
    delivered_at: int | None = None
    acknowledged_at: int | None = None
    acknowledged_by: str | None = None
    acknowledged_role: str | None = None
    resolved_at: int | None = None
    repeats: int = 0
    escalation: int = 0  # 0: the first role; 1: escalated to the second role
    backlog: bool = False  # raised from data that arrived late (an outage backlog), not from live data


@dataclass(frozen=True, slots=True)
class Activation:
    id: int
    encounter_id: int
    team: Team
    state: ActivationState
    reason: str
    requested_at: int
    requested_by: str  # "center" when automatic
    acknowledged_at: int | None = None
    acknowledged_by: str | None = None


@dataclass(frozen=True, slots=True)
class FollowUp:
    id: int
    encounter_id: int
    label: str  # "7 days", "30 days"
    due_at: int
    state: FollowUpState
    alive: bool | None = None
    readmitted: bool | None = None
    mace: bool | None = None  # major adverse cardiac events
    notes: str | None = None
    recorded_at: int | None = None
    recorded_by: str | None = None
