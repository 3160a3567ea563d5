"""FHIR R4 export: a rich encounter's bundle parses with the FHIR models, carries the right LOINC, SNOMED CT and
IEEE 11073 codes, round-trips the 12-lead samples, and exports identically every time."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class

from emergency.care import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    EncounterStatus,
    FhirExportError,
    Finding,
    Incident,
    Milestone,
    Priority,
    Severity,
    Team,
    TimeRecord,
    TimeSource,
    Treatment,
    compose_handoff,
    encounter_bundle,
    latest_vitals,
    validate_bundle,
)
from emergency.ecg import EcgFindings, analyze
from emergency.protocol import EXTRA_LEADS, Vitals
from emergency.sites import DEMO_SITES
from firmware_sim import EcgModel, EcgSynth

T0 = 1_714_557_600_000_000  # 2024-05-01 10:00:00 UTC
MIN = 60_000_000
FS = 500.0
ESPLANADI = DEMO_SITES.hospital("ESP")

# The IEEE 11073-10101 codes of each lead's electric potential (MDC_ECG_ELEC_POTL_*), written out as published
# rather than computed the way the exporter computes them.
MDC_LEAD_POTENTIAL = {
    "I": 131329,
    "II": 131330,
    "V1": 131331,
    "V2": 131332,
    "V3": 131333,
    "V4": 131334,
    "V5": 131335,
    "V6": 131336,
    "III": 131389,
    "aVR": 131390,
    "aVL": 131391,
    "aVF": 131392,
}
MDC_EXTRA_LEAD_POTENTIAL = {"V7": 131337, "V3R": 131339, "V4R": 131340, "V5R": 131341, "V8": 131394, "V9": 131395}

# Required bindings in R4 that the pydantic models do not check (they check structure, not value sets).
R4_CODES = {
    ("Encounter", "status"): {
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "entered-in-error",
        "unknown",
    },
    ("Observation", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
    },
    ("DetectedIssue", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
    },
    ("DetectedIssue", "severity"): {"high", "moderate", "low"},
    ("Task", "status"): {
        "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress", "on-hold",
        "failed", "completed", "entered-in-error",
    },
    ("Task", "intent"): {
        "unknown", "proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order",
        "option",
    },
    ("Task", "priority"): {"routine", "urgent", "asap", "stat"},
    ("Composition", "status"): {"preliminary", "final", "amended", "entered-in-error"},
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
}  # fmt: skip


def twelve_lead(st_vector_mv: tuple[float, float, float], leads: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Ten seconds of the simulator's ECG in mV, per lead."""
    synth = (
        EcgSynth(EcgModel(heart_rate_bpm=84, st_vector_mv=st_vector_mv), seed=11)
        if leads is None
        else EcgSynth(EcgModel(heart_rate_bpm=84, st_vector_mv=st_vector_mv), seed=11, leads=leads)
    )
    counts = np.hstack([synth.frame_counts(125) for _ in range(40)]).astype(float) * synth.lsb_uv / 1000
    return dict(zip(synth.leads, counts, strict=True))


def rich_encounter() -> Encounter:
    return Encounter(
        id=42,
        alias="BRAVO-7",
        incident_id=7,
        unit="A12",
        status=EncounterStatus.PRE_REGISTERED,
        contact_at=T0,
        destination="ESP",
        age=63,
        sex="male",
        chief_complaint="central chest pain",
        eta_at=T0 + 30 * MIN,
        patient_id="RJ-0042117",
        patient_name="Wang Wei",
        symptom_onset_at=T0 - 45 * MIN,
        findings=(Finding(T0 + 2 * MIN, "A", code="avpu"),),
        treatments=(Treatment(T0 + 5 * MIN, "aspirin", dose=300, dose_unit="mg"),),
        times=(TimeRecord(Milestone.FIRST_ECG, T0 + 3 * MIN, TimeSource.CENTER),),
        handoff_notes={"mechanism": "chest pain while shovelling snow"},
    )


INCIDENT = Incident(
    id=7,
    call_received_at=T0 - 20 * MIN,
    priority=Priority.IMMEDIATE,
    complaint="chest pain",
    lat=31.23,
    lon=121.47,
    address="88 Huaihai Road",
    unit="A12",
    created_by="dispatcher.zhao",
)
VITALS = [
    Vitals("A12", 1, 10, T0 + 4 * MIN, hr=92, sbp=102, dbp=64, map=77, spo2=95, rr=20, temp=36.9, etco2=33,
           nibp_ts=T0 + 4 * MIN),
    Vitals("A12", 1, 11, T0 + 5 * MIN, hr=95, sbp=102, dbp=64, map=77, spo2=94, rr=21, nibp_ts=T0 + 4 * MIN),
    Vitals("A12", 1, 12, T0 + 6 * MIN, hr=97, spo2=94, rr=22, etco2=34),
]  # fmt: skip


def alerts_and_activations() -> tuple[list[Alert], list[Activation]]:
    stemi = Alert(
        id=5,
        unit="A12",
        encounter_id=42,
        kind=AlertKind.STEMI,
        severity=Severity.CRITICAL,
        state=AlertState.ACKNOWLEDGED,
        summary="STEMI, inferior",
        detail={},
        raised_at=T0 + 7 * MIN,
        updated_at=T0 + 7 * MIN,
        acknowledged_at=T0 + 8 * MIN,
        acknowledged_by="dr.li",
        acknowledged_role="ed_physician",
    )
    news2 = Alert(
        id=6,
        unit="A12",
        encounter_id=42,
        kind=AlertKind.NEWS2,
        severity=Severity.WARNING,
        state=AlertState.RAISED,
        summary="NEWS2 ≥ 5 (medium risk)",
        detail={},
        raised_at=T0 + 6 * MIN,
        updated_at=T0 + 6 * MIN,
    )
    cath_lab = Activation(
        id=3,
        encounter_id=42,
        team=Team.CATH_LAB,
        state=ActivationState.ACKNOWLEDGED,
        reason="STEMI inferior",
        requested_at=T0 + 8 * MIN,
        requested_by="dr.li",
        acknowledged_at=T0 + 9 * MIN,
        acknowledged_by="cath.nurse",
    )
    return [stemi, news2], [cath_lab]


@pytest.fixture(scope="module")
def ecg() -> tuple[dict[str, Any], EcgFindings]:
    leads = twelve_lead((0.0, 0.25, 0.0))
    return leads, analyze(leads, FS, sex="male", age=63)


def build(ecg: tuple[dict[str, Any], EcgFindings], **overrides: Any) -> dict[str, Any]:
    leads, findings = ecg
    encounter = rich_encounter()
    alerts, activations = alerts_and_activations()
    handoff = compose_handoff(
        encounter,
        vitals=latest_vitals(VITALS),
        ecg=findings,
        alerts=alerts,
        activations=activations,
        hospital=ESPLANADI,
        now_us=T0 + 10 * MIN,
    )
    kwargs: dict[str, Any] = {
        "vitals": VITALS,
        "ecg_leads": leads,
        "ecg_fs": FS,
        "ecg_start_us": T0 + 3 * MIN,
        "ecg_findings": findings,
        "alerts": alerts,
        "activations": activations,
        "handoff": handoff,
        "hospital": ESPLANADI,
    } | overrides
    return encounter_bundle(encounter, INCIDENT, **kwargs)


def records_only(encounter: Encounter) -> dict[str, Any]:
    """The bundle of an encounter with no vitals, ECG, alerts or activations."""
    handoff = compose_handoff(encounter, vitals=None, ecg=None, alerts=[], activations=[], hospital=None, now_us=T0)
    return encounter_bundle(
        encounter,
        None,
        vitals=[],
        ecg_leads=None,
        ecg_fs=None,
        ecg_start_us=None,
        ecg_findings=None,
        alerts=[],
        activations=[],
        handoff=handoff,
        hospital=None,
    )


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def codes(concept: dict[str, Any], system: str) -> set[str]:
    return {c["code"] for c in concept.get("coding", []) if c["system"] == system}


def observation(bundle: dict[str, Any], system: str, code: str) -> list[dict[str, Any]]:
    return [o for o in resources(bundle, "Observation") if code in codes(o["code"], system)]


def test_rich_bundle_parses_with_the_fhir_models(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """The whole bundle, and every resource in it on its own, parses with the FHIR models after a JSON round trip."""
    bundle = json.loads(json.dumps(build(ecg)))
    validate_bundle(bundle)
    assert bundle["type"] == "searchset"
    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[:2] == ["Encounter", "Patient"]
    assert {"Observation", "DetectedIssue", "Task", "Composition"} <= set(kinds)
    assert [e["search"]["mode"] for e in bundle["entry"]].count("match") == 1


def test_required_codes_come_from_their_r4_value_sets(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """Every status, severity, intent, priority and gender is a code of its R4 value set."""
    bundle = build(ecg)
    for (resource_type, element), allowed in R4_CODES.items():
        for resource in resources(bundle, resource_type):
            if element in resource:
                assert resource[element] in allowed, (resource_type, element, resource[element])


def test_every_reference_resolves_inside_the_bundle(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """Every `reference` in the bundle names an entry's fullUrl, and ids are unique."""
    bundle = build(ecg)
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["reference"]] if isinstance(node.get("reference"), str) else []
            return own + [r for v in node.values() for r in references(v)]
        if isinstance(node, list):
            return [r for v in node for r in references(v)]
        return []

    found = references([e["resource"] for e in bundle["entry"]])
    assert found and set(found) <= set(full_urls)


def test_patient_and_encounter_carry_the_alias_and_the_identity(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """The patient is known by the alias (temporary) and, once identified, by the hospital's MRN; the encounter is
    an emergency encounter planned at the destination with the alias as pre-admission identifier."""
    bundle = build(ecg)
    (patient,) = resources(bundle, "Patient")
    alias = {"use": "temp", "type": {"text": "pre-arrival alias"}, "system": "urn:emergency-center:alias"}
    assert patient["identifier"][0] == alias | {"value": "BRAVO-7"}
    assert patient["identifier"][1]["type"]["coding"][0]["code"] == "MR"
    assert patient["identifier"][1]["value"] == "RJ-0042117"
    assert patient["name"] == [{"use": "temp", "text": "BRAVO-7"}, {"use": "official", "text": "Wang Wei"}]
    assert (patient["gender"], patient["birthDate"]) == ("male", "1961")

    (encounter,) = resources(bundle, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["status"] == "planned"
    assert encounter["period"] == {"start": "2024-05-01T10:00:00.000Z"}
    assert encounter["hospitalization"]["preAdmissionIdentifier"]["value"] == "BRAVO-7"
    assert encounter["hospitalization"]["origin"]["display"] == "88 Huaihai Road (ambulance A12)"
    assert encounter["location"][0] == {
        "location": {
            "identifier": {"system": "urn:emergency-center:hospital", "value": "ESP"},
            "display": ESPLANADI.name,
        },
        "status": "planned",
    }
    assert encounter["subject"]["reference"] == bundle["entry"][1]["fullUrl"]


def test_vital_signs_use_their_loinc_codes_and_ucum_units(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """Each measured vital sign is a vital-signs Observation with its LOINC code, UCUM unit and device time; a cuff
    reading repeated by the monitor is exported once."""
    bundle = build(ecg)
    expected_units = {"8867-4": "/min", "9279-1": "/min", "59408-5": "%", "8310-5": "Cel", "19889-5": "mm[Hg]",
                      "8478-0": "mm[Hg]"}  # fmt: skip
    for code, unit in expected_units.items():
        found = observation(bundle, "http://loinc.org", code)
        assert found, code
        for o in found:
            assert o["category"][0]["coding"][0]["code"] == "vital-signs"
            assert o["valueQuantity"]["system"] == "http://unitsofmeasure.org"
            assert o["valueQuantity"]["code"] == unit
    assert len(observation(bundle, "http://loinc.org", "8867-4")) == 3
    (spo2, *_) = observation(bundle, "http://loinc.org", "59408-5")
    assert codes(spo2["code"], "http://loinc.org") == {"2708-6", "59408-5"}
    assert spo2["effectiveDateTime"] == "2024-05-01T10:04:00.000Z"

    (bp,) = observation(bundle, "http://loinc.org", "85354-9")  # the second message repeats the same cuff reading
    assert bp["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]
    components = {next(iter(codes(c["code"], "http://loinc.org"))): c["valueQuantity"] for c in bp["component"]}
    assert components == {
        "8480-6": {"value": 102, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "8462-4": {"value": 64, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }
    assert len(observation(bundle, "http://loinc.org", "8478-0")) == 1


def test_twelve_lead_is_one_observation_with_a_coded_component_per_lead(
    ecg: tuple[dict[str, Any], EcgFindings],
) -> None:
    """The 12-lead is one EKG-study Observation whose components carry each lead's IEEE 11073 code and samples that
    decode back to the recorded millivolts."""
    leads, _ = ecg
    bundle = build(ecg)
    (waveform,) = observation(bundle, "http://loinc.org", "11524-6")
    by_code = {}
    for component in waveform["component"]:
        (coding,) = component["code"]["coding"]
        assert coding["system"] == "urn:iso:std:iso:11073:10101"
        by_code[int(coding["code"])] = component["valueSampledData"]
    assert set(by_code) == set(MDC_LEAD_POTENTIAL.values())
    for lead, code in MDC_LEAD_POTENTIAL.items():
        sampled = by_code[code]
        assert sampled["origin"] == {"value": 0, "unit": "mV", "system": "http://unitsofmeasure.org", "code": "mV"}
        assert (sampled["period"], sampled["dimensions"]) == (2.0, 1)
        decoded = np.array([int(x) for x in sampled["data"].split()]) * sampled["factor"]
        assert decoded.shape == leads[lead].shape
        assert np.max(np.abs(decoded - leads[lead])) <= sampled["factor"] / 2 + 1e-12
    assert waveform["effectivePeriod"] == {"start": "2024-05-01T10:03:00.000Z", "end": "2024-05-01T10:03:10.000Z"}


def test_right_sided_and_posterior_leads_keep_their_codes(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """V3R–V5R and V7–V9 are exported with their own IEEE 11073 codes beside the standard twelve."""
    _, findings = ecg
    leads = twelve_lead((0.0, 0.25, 0.0), leads=("I", "II", "V1", "V2", *EXTRA_LEADS))
    bundle = build(ecg, ecg_leads=leads, ecg_findings=findings)
    validate_bundle(bundle)
    (waveform,) = observation(bundle, "http://loinc.org", "11524-6")
    exported = {int(c["code"]["coding"][0]["code"]) for c in waveform["component"]}
    assert exported == {131329, 131330, 131331, 131332, *MDC_EXTRA_LEAD_POTENTIAL.values()}


def test_stemi_is_a_coded_finding_and_the_alert_points_at_it(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """The analysed STEMI is an EKG-impression Observation coded with SNOMED CT 401303003, derived from the
    waveform, and the STEMI DetectedIssue cites it as evidence."""
    _, findings = ecg
    assert findings.stemi
    bundle = build(ecg)
    (impression,) = observation(bundle, "http://loinc.org", "8601-7")
    assert codes(impression["valueCodeableConcept"], "http://snomed.info/sct") == {"401303003"}
    assert impression["valueCodeableConcept"]["text"].startswith("STEMI, inferior")
    assert impression["status"] == "preliminary"
    (waveform,) = observation(bundle, "http://loinc.org", "11524-6")
    full_url = {e["resource"]["id"]: e["fullUrl"] for e in bundle["entry"]}
    assert impression["derivedFrom"] == [{"reference": full_url[waveform["id"]]}]
    st_leads = {int(c["code"]["coding"][0]["code"]) for c in impression["component"][1:]}
    assert 131841 in st_leads  # MDC_ECG_AMPL_ST_I

    issues = {i["code"]["coding"][0]["code"]: i for i in resources(bundle, "DetectedIssue")}
    stemi = issues["stemi"]
    assert (stemi["status"], stemi["severity"]) == ("final", "high")
    assert stemi["evidence"] == [{"detail": [{"reference": full_url[impression["id"]]}]}]
    assert stemi["mitigation"][0]["action"]["text"] == "acknowledged by ed_physician"
    assert (issues["news2"]["status"], issues["news2"]["severity"]) == ("preliminary", "moderate")


def test_news2_is_a_snomed_coded_score_and_a_lower_bound_while_partial(
    ecg: tuple[dict[str, Any], EcgFindings],
) -> None:
    """NEWS2 is exported with its SNOMED CT code and per-parameter scores; without the oxygen finding its value is
    marked as a lower bound (comparator >=)."""
    bundle = build(ecg)
    (score,) = observation(bundle, "http://snomed.info/sct", "1104051000000101")
    # Latest of each sign: RR 22 (2), SpO2 94 (1), SBP 102 (1), HR 97 (1), temp 36.9 (0), alert (0).
    assert score["valueQuantity"] == {
        "value": 5,
        "unit": "score",
        "system": "http://unitsofmeasure.org",
        "code": "{score}",
        "comparator": ">=",
    }
    assert score["note"] == [{"text": "partial score: not recorded: air or oxygen"}]
    assert len(score["component"]) == 6
    assert len(score["derivedFrom"]) == 5


def test_activation_is_a_task_and_the_handoff_a_composition(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """The acknowledged cath lab activation is an accepted Task; the handoff is a Composition with one narrative
    section per ATMIST-ER section, the crew's edit shown with the composed text kept."""
    bundle = build(ecg)
    (task,) = resources(bundle, "Task")
    assert (task["status"], task["intent"], task["priority"]) == ("accepted", "order", "stat")
    assert task["owner"] == {"display": f"cath lab team, {ESPLANADI.name}"}
    (composition,) = resources(bundle, "Composition")
    assert codes(composition["type"], "http://loinc.org") == {"18761-7"}
    assert [s["code"]["coding"][0]["code"] for s in composition["section"]] == [
        "age", "time_of_onset", "mechanism", "injuries", "signs", "treatment", "eta", "requirements",
    ]  # fmt: skip
    mechanism = composition["section"][2]["text"]["div"]
    assert "chest pain while shovelling snow" in mechanism
    assert "Composed by the center: central chest pain" in mechanism
    full_url = {e["resource"]["id"]: e["fullUrl"] for e in bundle["entry"]}
    assert {"reference": full_url[task["id"]]} in composition["section"][7]["entry"]


def test_alias_only_encounter_still_exports_valid_fhir() -> None:
    """An encounter with nothing but its alias exports a valid bundle: Encounter, Patient and the handoff."""
    bare = Encounter(
        id=9,
        alias="ECHO-2",
        incident_id=1,
        unit="A3",
        status=EncounterStatus.PRE_REGISTERED,
        contact_at=T0,
        destination=None,
    )
    bundle = records_only(bare)
    validate_bundle(bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Encounter", "Patient", "Composition"]
    (patient,) = resources(bundle, "Patient")
    assert "gender" not in patient and "birthDate" not in patient


def test_ids_are_deterministic(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """The same records export byte-identically, a record keeps its id when other records are added, and another
    encounter's resources get other ids."""
    first, second = build(ecg), build(ecg)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    fewer_vitals = build(ecg, vitals=VITALS[2:])
    vital_ids = {
        o["id"]
        for o in resources(fewer_vitals, "Observation")
        if o["category"][0]["coding"][0]["code"] == "vital-signs"
    }
    assert vital_ids and vital_ids <= {o["id"] for o in resources(first, "Observation")}
    bare = Encounter(
        id=43,
        alias="ECHO-3",
        incident_id=1,
        unit="A3",
        status=EncounterStatus.CANCELLED,
        contact_at=T0,
        destination=None,
    )
    other_encounter = records_only(bare)
    ids = {e["resource"]["id"] for e in first["entry"]}
    assert not ids & {e["resource"]["id"] for e in other_encounter["entry"]}


def test_server_base_gives_absolute_full_urls_and_relative_references(
    ecg: tuple[dict[str, Any], EcgFindings],
) -> None:
    """With a server base URL, fullUrls are absolute and references are "Type/id", as a FHIR server returns them."""
    bundle = build(ecg, base_url="https://center.example/fhir/")
    validate_bundle(bundle)
    encounter = bundle["entry"][0]
    assert encounter["fullUrl"] == f"https://center.example/fhir/Encounter/{encounter['resource']['id']}"
    patient_id = bundle["entry"][1]["resource"]["id"]
    assert encounter["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


def test_discharged_encounter_has_an_end_and_a_final_handoff(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """A discharged encounter's period ends at the discharge time and its handoff Composition is final."""
    discharged = dataclasses.replace(
        rich_encounter(),
        status=EncounterStatus.DISCHARGED,
        times=(TimeRecord(Milestone.DISCHARGE, T0 + 600 * MIN, TimeSource.DISPATCHER),),
    )
    bundle = records_only(discharged)
    validate_bundle(bundle)
    (encounter,) = resources(bundle, "Encounter")
    assert (encounter["status"], encounter["period"]["end"]) == ("finished", "2024-05-01T20:00:00.000Z")
    assert encounter["location"][0]["status"] == "completed"
    assert resources(bundle, "Composition")[0]["status"] == "final"


def test_leads_without_a_sampling_rate_are_refused(ecg: tuple[dict[str, Any], EcgFindings]) -> None:
    """ECG samples without their sampling rate cannot be exported and say so."""
    with pytest.raises(FhirExportError, match="sampling rate"):
        build(ecg, ecg_fs=None)
