"""HL7 FHIR R4 export of one encounter: the answer of `GET /fhir/Encounter/{id}/$everything`.

`encounter_bundle` is a pure function from the center's records to a FHIR R4 `Bundle` (type `searchset`, as the
`$everything` operation returns) as plain JSON-compatible data. docs/fhir.md has the mapping table and says why each
resource type was chosen. Resource ids are UUIDs derived from the encounter id, the kind of record and its index (the
record's own id or sequence number where it has one), so the same records always export byte-identically and a
record keeps its id when others are added. `validate_bundle` parses a bundle with the FHIR models of
`fhir.resources` (R4B, a superset of the R4 resources used here); the export never needs it at run time.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

import numpy as np

from emergency.care._handoff import Handoff, SectionKey, latest_vitals, news2_for_encounter, spo2_scale_of
from emergency.care._model import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    EncounterStatus,
    Incident,
    Milestone,
    Severity,
    Team,
)
from emergency.ecg import EcgFindings
from emergency.protocol import EXTRA_LEADS, STANDARD_LEADS, Vitals
from emergency.scores import News2Parameter, News2Result, SpO2Scale
from emergency.sites import Hospital

__all__ = [
    "LOINC",
    "MDC",
    "MDC_ECG_AMPL_ST",
    "MDC_ECG_ELEC_POTL",
    "SNOMED",
    "FhirExportError",
    "encounter_bundle",
    "validate_bundle",
]

JSON = dict[str, Any]

# --- code systems and codes (docs/fhir.md cites where each was checked) ------------------------------------------

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# The center's own naming systems.
ALIAS_SYSTEM = "urn:emergency-center:alias"
ENCOUNTER_SYSTEM = "urn:emergency-center:encounter"
INCIDENT_SYSTEM = "urn:emergency-center:incident"
HOSPITAL_SYSTEM = "urn:emergency-center:hospital"
UNIT_SYSTEM = "urn:emergency-center:unit"
ALERT_SYSTEM = "urn:emergency-center:alert"
ALERT_KIND_SYSTEM = "urn:emergency-center:alert-kind"
ACTIVATION_SYSTEM = "urn:emergency-center:activation"
TEAM_SYSTEM = "urn:emergency-center:team"
ATMIST_SYSTEM = "urn:emergency-center:atmist-er"

_VITALSIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/"

# ISO/IEEE 11073-10101 ECG lead discriminators (MDC_ECG_LEAD_*, partition 2 "SCADA"), as listed in DICOM CID 3001.
_MDC_LEAD = {
    "I": 1,
    "II": 2,
    "V1": 3,
    "V2": 4,
    "V3": 5,
    "V4": 6,
    "V5": 7,
    "V6": 8,
    "V7": 9,
    "V3R": 11,
    "V4R": 12,
    "V5R": 13,
    "III": 61,
    "aVR": 62,
    "aVL": 63,
    "aVF": 64,
    "V8": 66,
    "V9": 67,
}
_MDC_SCADA = 2 << 16
# Per-lead measurement codes are the base term plus the lead discriminator (11073-10101; DICOM CID 3688).
MDC_ECG_ELEC_POTL: dict[str, int] = {lead: _MDC_SCADA + 256 + n for lead, n in _MDC_LEAD.items()}
MDC_ECG_AMPL_ST: dict[str, int] = {lead: _MDC_SCADA + 768 + n for lead, n in _MDC_LEAD.items()}
_LEAD_ORDER = STANDARD_LEADS + EXTRA_LEADS

ECG_SAMPLE_FACTOR_MV = 0.001  # the waveform's integers are microvolts

_STEMI = {"system": SNOMED, "code": "401303003", "display": "Acute ST segment elevation myocardial infarction"}
_NEWS2_TOTAL = {
    "system": SNOMED,
    "code": "1104051000000101",
    "display": "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score",
}
_NEWS2_PART = "Royal College of Physicians NEWS2 (National Early Warning Score 2) - {} score"
_NEWS2_COMPONENT = {
    News2Parameter.RESPIRATION_RATE: ("1104301000000104", "respiration rate"),
    News2Parameter.AIR_OR_OXYGEN: ("1104331000000105", "air or oxygen"),
    News2Parameter.SYSTOLIC_BP: ("1104341000000101", "systolic blood pressure"),
    News2Parameter.PULSE: ("1104351000000103", "pulse"),
    News2Parameter.CONSCIOUSNESS: ("1104361000000100", "consciousness"),
    News2Parameter.TEMPERATURE: ("1104371000000107", "temperature"),
}
_NEWS2_SPO2 = {
    SpO2Scale.SCALE_1: ("1104311000000102", "oxygen saturation scale 1"),
    SpO2Scale.SCALE_2: ("1104321000000108", "oxygen saturation scale 2"),
}

_ENCOUNTER_STATUS = {
    EncounterStatus.PRE_REGISTERED: "planned",
    EncounterStatus.ARRIVED: "arrived",
    EncounterStatus.IN_HOSPITAL: "in-progress",
    EncounterStatus.DISCHARGED: "finished",
    EncounterStatus.CANCELLED: "cancelled",
}
_LOCATION_STATUS = {
    EncounterStatus.PRE_REGISTERED: "planned",
    EncounterStatus.ARRIVED: "active",
    EncounterStatus.IN_HOSPITAL: "active",
    EncounterStatus.DISCHARGED: "completed",
}
_ISSUE_SEVERITY = {Severity.CRITICAL: "high", Severity.WARNING: "moderate", Severity.INFO: "low"}
_TASK_STATUS = {
    ActivationState.REQUESTED: "requested",
    ActivationState.ACKNOWLEDGED: "accepted",
    ActivationState.CANCELLED: "cancelled",
}
_ALERT_NAMES = {
    AlertKind.VITAL_THRESHOLD: "vital sign out of range",
    AlertKind.NEWS2: "NEWS2",
    AlertKind.SHOCK_INDEX: "shock index",
    AlertKind.QSOFA: "qSOFA",
    AlertKind.STEMI: "STEMI",
    AlertKind.LVO_STROKE: "large-vessel-occlusion stroke",
    AlertKind.TRAUMA: "major trauma",
    AlertKind.DEVICE_ALARM: "monitor alarm",
    AlertKind.TELEMETRY_LOST: "telemetry lost",
    AlertKind.SEQ_GAP: "telemetry gap",
}
_TEAM_NAMES = {Team.CATH_LAB: "cath lab team", Team.STROKE: "stroke team", Team.TRAUMA: "trauma team"}

# A fixed namespace: ids are uuid5(namespace, "{encounter}/{kind}/{index}"), stable across runs and processes.
_ID_NAMESPACE = uuid.UUID("a04b05b2-9dee-452c-99ad-4fa2dccdbe28")


class FhirExportError(ValueError):
    """The records cannot be exported as given (e.g. ECG leads without a sampling rate); `reason` says why."""

    def __init__(self, encounter_id: int, reason: str) -> None:
        super().__init__(f"encounter {encounter_id}: {reason}")
        self.encounter_id = encounter_id
        self.reason = reason


# --- small builders ---------------------------------------------------------------------------------------------


def _instant(at_us: int) -> str:
    """A FHIR dateTime/instant in UTC with millisecond precision, from µs since the epoch."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coding(system: str, code: str, display: str | None = None) -> JSON:
    out: JSON = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def _concept(*codings: JSON, text: str | None = None) -> JSON:
    out: JSON = {}
    if codings:
        out["coding"] = list(codings)
    if text is not None:
        out["text"] = text
    return out


def _quantity(value: float, unit: str, code: str) -> JSON:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _category(code: str, display: str) -> list[JSON]:
    return [_concept(_coding(OBSERVATION_CATEGORY, code, display))]


def _narrative(*paragraphs: str) -> JSON:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _hospital_reference(code: str, hospital: Hospital | None) -> JSON:
    ref: JSON = {"identifier": {"system": HOSPITAL_SYSTEM, "value": code}}
    ref["display"] = hospital.name if hospital is not None else code
    return ref


@dataclass(slots=True)
class _Entries:
    """The bundle being built: deterministic ids, fullUrls and references, in the order resources are added."""

    encounter_id: int
    base_url: str
    entries: list[JSON] = field(default_factory=list)

    def id_for(self, kind: str, index: int = 0) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.encounter_id}/{kind}/{index}"))

    def reference(self, resource_type: str, resource_id: str) -> str:
        if self.base_url.startswith("urn:uuid:"):
            return f"urn:uuid:{resource_id}"
        return f"{resource_type}/{resource_id}"

    def full_url(self, resource_type: str, resource_id: str) -> str:
        if self.base_url.startswith("urn:uuid:"):
            return f"urn:uuid:{resource_id}"
        return f"{self.base_url.rstrip('/')}/{resource_type}/{resource_id}"

    def add(self, resource_type: str, kind: str, index: int, body: JSON, *, match: bool = False) -> str:
        """Add a resource; returns the reference other resources use for it."""
        resource_id = self.id_for(kind, index)
        resource = {"resourceType": resource_type, "id": resource_id, **body}
        self.entries.append(
            {
                "fullUrl": self.full_url(resource_type, resource_id),
                "resource": resource,
                "search": {"mode": "match" if match else "include"},
            }
        )
        return self.reference(resource_type, resource_id)


# --- Patient and Encounter --------------------------------------------------------------------------------------


def _alias_identifier(alias: str) -> JSON:
    return {"use": "temp", "type": {"text": "pre-arrival alias"}, "system": ALIAS_SYSTEM, "value": alias}


def _patient(encounter: Encounter) -> JSON:
    identifiers = [_alias_identifier(encounter.alias)]
    if encounter.patient_id:
        mrn_system = f"urn:emergency-center:mrn:{encounter.destination or 'unknown'}"
        identifiers.append(
            {
                "use": "usual",
                "type": _concept(_coding(IDENTIFIER_TYPE, "MR", "Medical record number")),
                "system": mrn_system,
                "value": encounter.patient_id,
            }
        )
    names = [{"use": "temp", "text": encounter.alias}]
    if encounter.patient_name:
        names.append({"use": "official", "text": encounter.patient_name})
    patient: JSON = {"identifier": identifiers, "active": True, "name": names}
    if encounter.sex in ("male", "female"):
        patient["gender"] = encounter.sex
    if encounter.age is not None:
        # Only the age is known: the birth year is the contact year minus the age, so it may be one year late.
        contact_year = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=encounter.contact_at)).year
        patient["birthDate"] = f"{contact_year - encounter.age:04d}"
    return patient


def _discharge_at(encounter: Encounter) -> int | None:
    times = [t.at for t in encounter.times if t.name == Milestone.DISCHARGE]
    return max(times) if times else None


def _encounter(encounter: Encounter, incident: Incident | None, hospital: Hospital | None, patient: str) -> JSON:
    identifiers: list[JSON] = [
        {"use": "official", "system": ENCOUNTER_SYSTEM, "value": str(encounter.id)},
        _alias_identifier(encounter.alias),
        {"use": "secondary", "system": INCIDENT_SYSTEM, "value": str(encounter.incident_id)},
    ]
    period: JSON = {"start": _instant(encounter.contact_at)}
    discharge_at = _discharge_at(encounter)
    if discharge_at is not None:
        period["end"] = _instant(discharge_at)
    origin = f"ambulance {encounter.unit}"
    if incident is not None and incident.address:
        origin = f"{incident.address} (ambulance {encounter.unit})"
    body: JSON = {
        "identifier": identifiers,
        "status": _ENCOUNTER_STATUS[encounter.status],
        "class": _coding(ACT_CODE, "EMER", "emergency"),
        "subject": {"reference": patient, "display": encounter.alias},
        "period": period,
        "hospitalization": {
            "preAdmissionIdentifier": _alias_identifier(encounter.alias),
            "origin": {"identifier": {"system": UNIT_SYSTEM, "value": encounter.unit}, "display": origin},
        },
    }
    complaint = encounter.chief_complaint or (incident.complaint if incident is not None else None)
    if complaint:
        body["reasonCode"] = [_concept(text=complaint)]
    if encounter.destination:
        destination = _hospital_reference(encounter.destination, hospital)
        location: JSON = {"location": destination}
        if encounter.status in _LOCATION_STATUS:
            location["status"] = _LOCATION_STATUS[encounter.status]
        body["location"] = [location]
        body["serviceProvider"] = _hospital_reference(encounter.destination, hospital)
    return body


# --- vital signs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _VitalSpec:
    field: str
    kind: str
    text: str
    codings: tuple[tuple[str, str], ...]  # LOINC (code, display), first one the profile's
    unit: str  # UCUM code
    unit_display: str
    profile: str | None


_VITALS = (
    _VitalSpec("hr", "heart-rate", "heart rate", (("8867-4", "Heart rate"),), "/min", "beats/minute", "heartrate"),
    _VitalSpec(
        "spo2",
        "spo2",
        "oxygen saturation",
        (
            ("2708-6", "Oxygen saturation in Arterial blood"),
            ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        ),
        "%",
        "%",
        "oxygensat",
    ),
    _VitalSpec(
        "rr",
        "respiratory-rate",
        "respiratory rate",
        (("9279-1", "Respiratory rate"),),
        "/min",
        "breaths/minute",
        "resprate",
    ),
    _VitalSpec("temp", "temperature", "body temperature", (("8310-5", "Body temperature"),), "Cel", "°C", "bodytemp"),
    _VitalSpec(
        "etco2",
        "etco2",
        "end-tidal CO2",
        (("19889-5", "Carbon dioxide [Partial pressure] in Exhaled gas --at end expiration"),),
        "mm[Hg]",
        "mmHg",
        None,
    ),
)
_SYSTOLIC = ("8480-6", "Systolic blood pressure")
_DIASTOLIC = ("8462-4", "Diastolic blood pressure")
_BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
_MEAN_BP = ("8478-0", "Mean blood pressure")


def _vital_observation(
    codings: Sequence[tuple[str, str]], text: str, profile: str | None, at: int, subject: str, encounter: str
) -> JSON:
    body: JSON = {}
    if profile is not None:
        body["meta"] = {"profile": [_VITALSIGNS_PROFILE + profile]}
    body |= {
        "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": _concept(*(_coding(LOINC, c, d) for c, d in codings), text=text),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter},
        "effectiveDateTime": _instant(at),
    }
    return body


def _bp_component(code: tuple[str, str], value: float | None) -> JSON:
    component: JSON = {"code": _concept(_coding(LOINC, *code), text=code[1])}
    if value is None:
        component["dataAbsentReason"] = _concept(_coding(DATA_ABSENT, "unknown", "Unknown"))
    else:
        component["valueQuantity"] = _quantity(value, "mmHg", "mm[Hg]")
    return component


def _add_vitals(out: _Entries, vitals: Sequence[Vitals], subject: str, encounter: str) -> dict[str, str]:
    """Add one Observation per measured value; returns, per vital, the reference of its latest Observation."""
    latest: dict[str, str] = {}
    cuff_readings: set[int] = set()
    for v in sorted(vitals, key=lambda v: (v.ts, v.boot, v.seq)):
        # Named by the message's own identity (boot, seq), so adding other sets never renames these.
        kind = f"vitals/{v.unit}/{v.boot}"
        device: JSON = {
            "identifier": {"system": UNIT_SYSTEM, "value": v.unit},
            "display": f"monitor of ambulance {v.unit}",
        }
        for spec in _VITALS:
            value = getattr(v, spec.field)
            if value is None:
                continue
            body = _vital_observation(spec.codings, spec.text, spec.profile, v.ts, subject, encounter)
            body["valueQuantity"] = _quantity(value, spec.unit_display, spec.unit)
            body["device"] = device
            latest[spec.field] = out.add("Observation", f"{kind}/{spec.kind}", v.seq, body)
        nibp_at = v.nibp_ts if v.nibp_ts is not None else v.ts
        # A monitor may repeat its last cuff reading in every message; one reading is one Observation.
        if (v.sbp is not None or v.dbp is not None or v.map is not None) and nibp_at not in cuff_readings:
            cuff_readings.add(nibp_at)
            if v.sbp is not None or v.dbp is not None:
                body = _vital_observation((_BP_PANEL,), "blood pressure", "bp", nibp_at, subject, encounter)
                body["component"] = [_bp_component(_SYSTOLIC, v.sbp), _bp_component(_DIASTOLIC, v.dbp)]
                body["device"] = device
                latest["sbp"] = out.add("Observation", f"{kind}/blood-pressure", v.seq, body)
            if v.map is not None:
                body = _vital_observation((_MEAN_BP,), "mean arterial pressure", None, nibp_at, subject, encounter)
                body["valueQuantity"] = _quantity(v.map, "mmHg", "mm[Hg]")
                body["device"] = device
                out.add("Observation", f"{kind}/mean-blood-pressure", v.seq, body)
    return latest


# --- 12-lead ECG ------------------------------------------------------------------------------------------------


def _lead_display(lead: str) -> str:
    return f"MDC_ECG_ELEC_POTL_{lead.upper() if lead.startswith('a') else lead}"


def _sampled_data(samples_mv: np.ndarray, fs: float) -> JSON:
    values = np.asarray(samples_mv, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    counts = np.rint(np.where(finite, values, 0.0) / ECG_SAMPLE_FACTOR_MV).astype(np.int64)
    # "E" is SampledData's marker for a sample the device could not measure.
    data = " ".join(str(c) if ok else "E" for c, ok in zip(counts.tolist(), finite.tolist(), strict=True))
    return {
        "origin": _quantity(0, "mV", "mV"),
        "period": 1000.0 / fs,
        "factor": ECG_SAMPLE_FACTOR_MV,
        "dimensions": 1,
        "data": data,
    }


def _ecg_waveform(
    encounter: Encounter,
    leads: Mapping[str, np.ndarray],
    fs: float,
    start_us: int | None,
    subject: str,
    encounter_ref: str,
) -> JSON:
    unknown = sorted(set(leads) - set(MDC_ECG_ELEC_POTL))
    if unknown:
        raise FhirExportError(encounter.id, f"no IEEE 11073 code for ECG lead(s) {', '.join(unknown)}")
    if not (math.isfinite(fs) and fs > 0):
        raise FhirExportError(encounter.id, f"ECG sampling rate {fs!r} is not a positive frequency")
    body: JSON = {
        "status": "final",
        "category": _category("procedure", "Procedure"),
        "code": _concept(_coding(LOINC, "11524-6", "EKG study"), text="12-lead ECG"),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
    }
    n = max((np.asarray(x).size for x in leads.values()), default=0)
    if start_us is not None:
        body["effectivePeriod"] = {
            "start": _instant(start_us),
            "end": _instant(start_us + round(n * 1_000_000 / fs)),
        }
    body["device"] = {
        "identifier": {"system": UNIT_SYSTEM, "value": encounter.unit},
        "display": f"monitor of ambulance {encounter.unit}",
    }
    body["component"] = [
        {
            "code": _concept(_coding(MDC, str(MDC_ECG_ELEC_POTL[lead]), _lead_display(lead)), text=f"Lead {lead}"),
            "valueSampledData": _sampled_data(leads[lead], fs),
        }
        for lead in _LEAD_ORDER
        if lead in leads
    ]
    return body


def _ecg_impression(findings: EcgFindings) -> str:
    """One line saying what the analysis found, for the findings Observation's value text."""
    if findings.quality == "unusable":
        return "ECG unusable: " + (findings.reasons[0] if findings.reasons else "no reason given")
    if findings.stemi:
        text = "STEMI" + (f", {findings.stemi_territory}" if findings.stemi_territory else "")
        if findings.reciprocal_depression:
            text += f"; reciprocal depression in {', '.join(findings.reciprocal_depression)}"
        return text
    return findings.reasons[0] if findings.reasons else "no ST elevation meeting STEMI criteria"


def _ecg_findings(
    findings: EcgFindings, start_us: int | None, subject: str, encounter_ref: str, waveform: str | None
) -> JSON:
    impression = _ecg_impression(findings)
    body: JSON = {
        # Automated analysis: preliminary until a physician over-reads it.
        "status": "preliminary",
        "category": _category("procedure", "Procedure"),
        "code": _concept(_coding(LOINC, "8601-7", "EKG impression"), text="12-lead ECG analysis"),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
    }
    if start_us is not None:
        body["effectiveDateTime"] = _instant(start_us)
    body["valueCodeableConcept"] = _concept(_STEMI, text=impression) if findings.stemi else _concept(text=impression)
    if findings.stemi:
        body["interpretation"] = [_concept(_coding(INTERPRETATION, "A", "Abnormal"))]
    notes = [*findings.reasons, *findings.notes]
    if findings.unreadable_leads:
        notes.append(f"unreadable leads: {', '.join(findings.unreadable_leads)}")
    notes.append(f"quality {findings.quality}; {findings.beats_used} of {findings.beats_detected} beats used")
    body["note"] = [{"text": n} for n in notes]
    body["method"] = _concept(
        text="automated 12-lead analysis: J-point ST deviation, STEMI criteria of the 4th Universal Definition of MI"
    )
    if waveform is not None:
        body["derivedFrom"] = [{"reference": waveform}]
    components: list[JSON] = []
    if math.isfinite(findings.heart_rate_bpm):
        components.append(
            {
                "code": _concept(_coding(LOINC, "8867-4", "Heart rate"), text="heart rate from the ECG"),
                "valueQuantity": _quantity(round(findings.heart_rate_bpm, 1), "beats/minute", "/min"),
            }
        )
    for lead in _LEAD_ORDER:
        if lead in findings.st_deviation_mv and lead in MDC_ECG_AMPL_ST:
            display = f"MDC_ECG_AMPL_ST_{lead.upper() if lead.startswith('a') else lead}"
            components.append(
                {
                    "code": _concept(_coding(MDC, str(MDC_ECG_AMPL_ST[lead]), display), text=f"ST deviation {lead}"),
                    "valueQuantity": _quantity(round(findings.st_deviation_mv[lead], 3), "mV", "mV"),
                }
            )
    if components:
        body["component"] = components
    return body


# --- NEWS2 ------------------------------------------------------------------------------------------------------


def _score(value: int) -> JSON:
    return _quantity(value, "score", "{score}")


def _news2(
    result: News2Result,
    scale: SpO2Scale,
    at: int,
    subject: str,
    encounter_ref: str,
    derived_from: Sequence[str],
) -> JSON:
    total = _score(result.total)
    if not result.complete:
        total["comparator"] = ">="  # a partial score is a lower bound
    body: JSON = {
        "status": "final",
        "category": _category("survey", "Survey"),
        "code": _concept(_NEWS2_TOTAL, text="NEWS2"),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
        "effectiveDateTime": _instant(at),
        "valueQuantity": total,
        "interpretation": [_concept(text=f"{result.clinical_risk.value} clinical risk")],
    }
    if not result.complete:
        missing = ", ".join(m.value.replace("_", " ") for m in result.missing)
        body["note"] = [{"text": f"partial score: not recorded: {missing}"}]
    components: list[JSON] = []
    for parameter, points in result.parameter_scores.items():
        code, name = _NEWS2_SPO2[scale] if parameter is News2Parameter.SPO2 else _NEWS2_COMPONENT[parameter]
        components.append(
            {
                "code": _concept(_coding(SNOMED, code, _NEWS2_PART.format(name)), text=name),
                "valueQuantity": _score(points),
            }
        )
    if components:
        body["component"] = components
    if derived_from:
        body["derivedFrom"] = [{"reference": r} for r in derived_from]
    return body


# --- alerts, activations, handoff -------------------------------------------------------------------------------


def _detected_issue(alert: Alert, subject: str, evidence: Sequence[str]) -> JSON:
    name = _ALERT_NAMES.get(alert.kind, alert.kind.value.replace("_", " "))
    codings = [_coding(ALERT_KIND_SYSTEM, alert.kind.value, name)]
    if alert.kind is AlertKind.STEMI:
        codings.append(_STEMI)
    body: JSON = {
        "identifier": [{"system": ALERT_SYSTEM, "value": str(alert.id)}],
        # Raised or shown: not yet seen by a clinician who may act on it.
        "status": "preliminary" if alert.state in (AlertState.RAISED, AlertState.DELIVERED) else "final",
        "code": _concept(*codings, text=name),
        "severity": _ISSUE_SEVERITY[alert.severity],
        "patient": {"reference": subject},
        "identifiedDateTime": _instant(alert.raised_at),
        "author": {"display": "emergency center alerting rules"},
        "detail": alert.summary,
    }
    if evidence:
        body["evidence"] = [{"detail": [{"reference": r} for r in evidence]}]
    mitigations: list[JSON] = []
    if alert.acknowledged_at is not None:
        who = alert.acknowledged_role or "clinician"
        mitigation: JSON = {"action": _concept(text=f"acknowledged by {who}"), "date": _instant(alert.acknowledged_at)}
        if alert.acknowledged_by:
            mitigation["author"] = {"display": alert.acknowledged_by}
        mitigations.append(mitigation)
    if alert.resolved_at is not None:
        mitigations.append({"action": _concept(text="condition cleared"), "date": _instant(alert.resolved_at)})
    if mitigations:
        body["mitigation"] = mitigations
    return body


def _task(activation: Activation, hospital: Hospital | None, subject: str, encounter_ref: str) -> JSON:
    team = _TEAM_NAMES.get(activation.team, activation.team.value)
    owner = f"{team}, {hospital.name}" if hospital is not None else team
    body: JSON = {
        "identifier": [{"system": ACTIVATION_SYSTEM, "value": str(activation.id)}],
        "status": _TASK_STATUS[activation.state],
        "intent": "order",
        "priority": "stat",
        "code": _concept(_coding(TEAM_SYSTEM, activation.team.value, team), text=f"activate the {team}"),
        "description": activation.reason,
        "for": {"reference": subject},
        "encounter": {"reference": encounter_ref},
        "authoredOn": _instant(activation.requested_at),
        "lastModified": _instant(activation.acknowledged_at or activation.requested_at),
        "requester": {"display": activation.requested_by},
        "owner": {"display": owner},
        "reasonCode": _concept(text=activation.reason),
    }
    if activation.acknowledged_by:
        body["note"] = [{"text": f"confirmed by {activation.acknowledged_by}"}]
    return body


def _composition(
    handoff: Handoff,
    encounter: Encounter,
    subject: str,
    encounter_ref: str,
    section_entries: Mapping[SectionKey, Sequence[str]],
) -> JSON:
    sections: list[JSON] = []
    for s in handoff.sections:
        paragraphs = [s.effective] if s.edited is None else [s.edited, f"Composed by the center: {s.text}"]
        section: JSON = {
            "title": s.title,
            "code": _concept(_coding(ATMIST_SYSTEM, s.key.value, s.title)),
            "text": _narrative(*paragraphs),
        }
        entries = section_entries.get(s.key, ())
        if entries:
            section["entry"] = [{"reference": r} for r in entries]
        sections.append(section)
    done = encounter.status in (EncounterStatus.IN_HOSPITAL, EncounterStatus.DISCHARGED)
    return {
        "status": "final" if done else "preliminary",
        "type": _concept(_coding(LOINC, "18761-7", "Transfer summary note"), text="ATMIST-ER handoff"),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
        "date": _instant(handoff.composed_at),
        "author": [
            {"identifier": {"system": UNIT_SYSTEM, "value": encounter.unit}, "display": f"ambulance {encounter.unit}"}
        ],
        "title": f"ATMIST-ER handoff, {encounter.alias}",
        "section": sections,
    }


# --- the bundle -------------------------------------------------------------------------------------------------


def encounter_bundle(
    encounter: Encounter,
    incident: Incident | None,
    *,
    vitals: Sequence[Vitals],
    ecg_leads: Mapping[str, np.ndarray] | None,
    ecg_fs: float | None,
    ecg_start_us: int | None,
    ecg_findings: EcgFindings | None,
    alerts: Sequence[Alert],
    activations: Sequence[Activation],
    handoff: Handoff,
    hospital: Hospital | None,
    base_url: str = "urn:uuid:",
) -> JSON:
    """The encounter and everything recorded for it as a FHIR R4 `Bundle` (type searchset) of plain JSON data.

    `vitals` are the sets to export (every one becomes Observations; pass a sampled series, not every second).
    `ecg_leads` are one 12-lead (or extended) recording in mV sampled at `ecg_fs` Hz, starting at `ecg_start_us`
    on the device clock; `ecg_findings` is its analysis. With the default `base_url` every fullUrl and reference
    is a `urn:uuid:`; with a server base ("https://host/fhir") fullUrls are absolute and references relative
    ("Observation/<id>"). Raises `FhirExportError` for leads without a sampling rate or with no IEEE 11073 code.
    """
    out = _Entries(encounter.id, base_url)
    patient_id = out.id_for("patient")
    subject = out.reference("Patient", patient_id)
    encounter_ref = out.add("Encounter", "encounter", 0, _encounter(encounter, incident, hospital, subject), match=True)
    out.add("Patient", "patient", 0, _patient(encounter))

    latest = _add_vitals(out, vitals, subject, encounter_ref)
    waveform: str | None = None
    if ecg_leads:
        if ecg_fs is None:
            raise FhirExportError(encounter.id, "ECG leads given without their sampling rate")
        waveform = out.add(
            "Observation",
            "ecg/waveform",
            0,
            _ecg_waveform(encounter, ecg_leads, ecg_fs, ecg_start_us, subject, encounter_ref),
        )
    findings_ref: str | None = None
    if ecg_findings is not None:
        findings_ref = out.add(
            "Observation",
            "ecg/findings",
            0,
            _ecg_findings(ecg_findings, ecg_start_us, subject, encounter_ref, waveform),
        )

    news2_ref: str | None = None
    merged = latest_vitals(vitals)
    score = news2_for_encounter(encounter, merged)
    if merged is not None and score is not None:
        sources = [latest[name] for name in ("rr", "spo2", "sbp", "hr", "temp") if name in latest]
        news2_ref = out.add(
            "Observation",
            "score/news2",
            0,
            _news2(score, spo2_scale_of(encounter), merged.ts, subject, encounter_ref, sources),
        )

    issues: list[str] = []
    for alert in sorted(alerts, key=lambda a: (a.raised_at, a.id)):
        evidence: list[str] = []
        if alert.kind is AlertKind.STEMI and findings_ref is not None:
            evidence.append(findings_ref)
        elif alert.kind is AlertKind.NEWS2 and news2_ref is not None:
            evidence.append(news2_ref)
        issues.append(out.add("DetectedIssue", "alert", alert.id, _detected_issue(alert, subject, evidence)))
    tasks = [
        out.add("Task", "activation", activation.id, _task(activation, hospital, subject, encounter_ref))
        for activation in sorted(activations, key=lambda a: (a.requested_at, a.id))
    ]

    signs = [*(latest[name] for name in ("hr", "sbp", "spo2", "rr", "temp", "etco2") if name in latest)]
    signs += [r for r in (news2_ref, findings_ref, waveform) if r is not None]
    section_entries: dict[SectionKey, Sequence[str]] = {
        SectionKey.INJURIES: [r for r in (findings_ref,) if r is not None],
        SectionKey.SIGNS: signs,
        SectionKey.REQUIREMENTS: [*tasks, *issues],
    }
    out.add("Composition", "handoff", 0, _composition(handoff, encounter, subject, encounter_ref, section_entries))
    return {
        "resourceType": "Bundle",
        "id": out.id_for("bundle"),
        "type": "searchset",
        "entry": out.entries,
    }


def validate_bundle(bundle: Mapping[str, Any]) -> None:
    """Parse `bundle` and every resource in it with the FHIR models of `fhir.resources` (R4B, which keeps the R4
    shape of every resource this export uses); raises `pydantic.ValidationError` for anything that is not FHIR."""
    from fhir.resources.R4B.bundle import Bundle  # imported on use: loading the models takes a moment

    Bundle.model_validate(dict(bundle))
