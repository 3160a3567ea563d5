"""The ATMIST-ER handoff: composed text per section, crew overrides, unknowns, partial NEWS2, clock times."""

from __future__ import annotations

import dataclasses
from typing import Any

from emergency.care import (
    Activation,
    ActivationState,
    Alert,
    AlertKind,
    AlertState,
    Encounter,
    EncounterStatus,
    Finding,
    SectionKey,
    Severity,
    Team,
    Treatment,
    compose_handoff,
    latest_vitals,
)
from emergency.ecg import EcgFindings
from emergency.protocol import Vitals
from emergency.sites import DEMO_SITES

T0 = 1_714_557_600_000_000  # 2024-05-01 10:00:00 UTC
MIN = 60_000_000
ESPLANADI = DEMO_SITES.hospital("ESP")

STEMI_ECG = EcgFindings(
    heart_rate_bpm=96.4,
    st_deviation_mv={"II": 0.31, "III": 0.35, "aVF": 0.33, "aVL": -0.15, "I": -0.06},
    stemi=True,
    stemi_territory="inferior",
    reciprocal_depression=["aVL"],
    reasons=[
        "ST elevation up to 0.35 mV in II, aVF, III (inferior); reciprocal depression in aVL",
        "meets the STEMI criteria of the 4th Universal Definition of MI if the elevation is new",
    ],
    beats_detected=12,
    beats_used=12,
    quality="good",
    st_elevation_leads=["II", "aVF", "III"],
)
VITALS = Vitals("A12", 1, 40, T0 + 8 * MIN, hr=96, sbp=104, dbp=66, map=79, spo2=95, rr=20, temp=36.8, etco2=34)


def stemi_encounter(**changes: Any) -> Encounter:
    encounter = Encounter(
        id=42,
        alias="BRAVO-7",
        incident_id=7,
        unit="A12",
        status=EncounterStatus.PRE_REGISTERED,
        contact_at=T0,
        destination="ESP",
        age=63,
        sex="male",
        chief_complaint="central crushing chest pain radiating to the left arm",
        eta_at=T0 + 30 * MIN,
        symptom_onset_at=T0 - 45 * MIN,
        findings=(
            Finding(T0 + 2 * MIN, "A", code="avpu"),
            Finding(T0 + 3 * MIN, "oxygen off", code="supplemental_o2", value=0.0),
            Finding(T0 + 4 * MIN, "sweaty, pale"),
        ),
        treatments=(
            Treatment(T0 + 5 * MIN, "aspirin", code="aspirin", dose=300, dose_unit="mg"),
            Treatment(T0 + 6 * MIN, "heparin", dose=5000, dose_unit="IU"),
        ),
    )
    return dataclasses.replace(encounter, **changes)


STEMI_ALERT = Alert(
    id=5,
    unit="A12",
    encounter_id=42,
    kind=AlertKind.STEMI,
    severity=Severity.CRITICAL,
    state=AlertState.ACKNOWLEDGED,
    summary="STEMI, inferior; reciprocal aVL",
    detail={},
    raised_at=T0 + 7 * MIN,
    updated_at=T0 + 7 * MIN,
    acknowledged_at=T0 + 8 * MIN,
    acknowledged_by="dr.li",
    acknowledged_role="ed_physician",
)
CATH_LAB = Activation(
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


def test_stemi_handoff_composes_every_section() -> None:
    """A STEMI encounter with vitals, ECG findings and an acknowledged cath lab reads as the crew would say it."""
    handoff = compose_handoff(
        stemi_encounter(),
        vitals=VITALS,
        ecg=STEMI_ECG,
        alerts=[STEMI_ALERT],
        activations=[CATH_LAB],
        hospital=ESPLANADI,
        now_us=T0 + 10 * MIN,
    )
    texts = {s.key: s.text for s in handoff.sections}
    assert [s.key for s in handoff.sections] == list(SectionKey)
    assert texts == {
        SectionKey.AGE: "63-year-old male",
        SectionKey.TIME_OF_ONSET: "symptom onset 09:15 (55 min ago); first medical contact 10:00",
        SectionKey.MECHANISM: "central crushing chest pain radiating to the left arm",
        SectionKey.INJURIES: "STEMI (inferior); sweaty, pale",
        SectionKey.SIGNS: (
            "HR 96, BP 104/66, SpO2 95%, RR 20, temp 36.8 °C, EtCO2 34 mmHg; ACVPU A; NEWS2 3 (low risk); "
            "ECG rate 96, STEMI inferior, ST elevation in II, aVF, III, reciprocal depression in aVL"
        ),
        SectionKey.TREATMENT: "aspirin 300 mg at 10:05; heparin 5000 IU at 10:06",
        SectionKey.ETA: "10:30 (in 20 min) to Esplanadi Hospital (demo)",
        SectionKey.REQUIREMENTS: "cath lab activated (confirmed 10:09)",
    }
    assert all(s.edited is None for s in handoff.sections)
    assert handoff.as_text().splitlines()[0] == "Age: 63-year-old male"
    assert len(handoff.as_text().splitlines()) == len(SectionKey)


def test_stemi_without_activation_asks_for_the_cath_lab() -> None:
    """An open STEMI alert with no cath lab activation is named as a requirement on arrival."""
    handoff = compose_handoff(
        stemi_encounter(),
        vitals=VITALS,
        ecg=STEMI_ECG,
        alerts=[STEMI_ALERT],
        activations=[],
        hospital=ESPLANADI,
        now_us=T0 + 10 * MIN,
    )
    assert handoff.section("requirements").text == "primary PCI: cath lab not yet activated"


def test_crew_override_wins_and_composed_text_stays() -> None:
    """A crew's edit of a section is what is read and exported, and the composed text stays beside it."""
    edited = "HR 96, BP 104/66, looks grey, inferior STEMI on the 12-lead"
    handoff = compose_handoff(
        stemi_encounter(handoff_notes={"signs": edited}),
        vitals=VITALS,
        ecg=STEMI_ECG,
        alerts=[],
        activations=[],
        hospital=ESPLANADI,
        now_us=T0 + 10 * MIN,
    )
    signs = handoff.section(SectionKey.SIGNS)
    assert signs.edited == edited
    assert signs.effective == edited
    assert signs.text.startswith("HR 96, BP 104/66, SpO2 95%")
    assert f"Signs: {edited}" in handoff.as_text().splitlines()
    as_json = handoff.as_json()["sections"][list(SectionKey).index(SectionKey.SIGNS)]
    assert as_json == {"key": "signs", "title": "Signs", "text": signs.text, "edited": edited, "effective": edited}


def test_missing_data_reads_unknown() -> None:
    """An encounter with nothing but its alias composes every section, saying "unknown" instead of guessing."""
    bare = Encounter(
        id=9,
        alias="ECHO-2",
        incident_id=1,
        unit="A3",
        status=EncounterStatus.PRE_REGISTERED,
        contact_at=T0,
        destination=None,
    )
    handoff = compose_handoff(
        bare, vitals=None, ecg=None, alerts=[], activations=[], hospital=None, now_us=T0 + 5 * MIN
    )
    assert {s.key: s.text for s in handoff.sections} == {
        SectionKey.AGE: "age unknown, sex unknown",
        SectionKey.TIME_OF_ONSET: "onset unknown; first medical contact 10:00",
        SectionKey.MECHANISM: "unknown",
        SectionKey.INJURIES: "unknown",
        SectionKey.SIGNS: "vitals unknown; ECG unknown",
        SectionKey.TREATMENT: "none recorded",
        SectionKey.ETA: "unknown, destination unknown",
        SectionKey.REQUIREMENTS: "none",
    }
    assert handoff.news2 is None
    assert handoff.as_json()["news2"] is None


def test_news2_partial_until_consciousness_and_oxygen_are_recorded() -> None:
    """NEWS2 from the monitor alone is marked partial with what is missing; the crew's findings complete it."""
    monitor_only = stemi_encounter(findings=())
    handoff = compose_handoff(
        monitor_only, vitals=VITALS, ecg=None, alerts=[], activations=[], hospital=None, now_us=T0 + 10 * MIN
    )
    assert "NEWS2 at least 3, partial (oxygen, ACVPU unknown)" in handoff.section("signs").text
    assert handoff.news2 is not None and not handoff.news2.complete
    assert handoff.as_json()["news2"] == {
        "total": 3,
        "partial": True,
        "missing": ["air_or_oxygen", "consciousness"],
        "risk": "low",
    }

    confused_on_oxygen = stemi_encounter(
        findings=(
            Finding(T0 + 2 * MIN, "C", code="avpu"),
            Finding(T0 + 3 * MIN, "oxygen 4 l/min", code="supplemental_o2", value=4.0),
        )
    )
    handoff = compose_handoff(
        confused_on_oxygen, vitals=VITALS, ecg=None, alerts=[], activations=[], hospital=None, now_us=T0 + 10 * MIN
    )
    # HR 96, SBP 104 and SpO2 95 % score 1 each; oxygen adds 2 and new confusion 3: 8, high risk, complete.
    assert "ACVPU C; NEWS2 8 (high risk)" in handoff.section("signs").text
    assert handoff.news2 is not None and handoff.news2.complete


def test_latest_finding_of_a_kind_counts() -> None:
    """When oxygen is started and later stopped, NEWS2 scores the later finding (room air: 3, not 5)."""
    encounter = stemi_encounter(
        findings=(
            Finding(T0 + 9 * MIN, "oxygen off", code="supplemental_o2", value=0.0),
            Finding(T0 + 2 * MIN, "oxygen 4 l/min", code="supplemental_o2", value=4.0),
            Finding(T0 + 2 * MIN, "A", code="avpu"),
        )
    )
    handoff = compose_handoff(
        encounter, vitals=VITALS, ecg=None, alerts=[], activations=[], hospital=None, now_us=T0 + 10 * MIN
    )
    assert "NEWS2 3 (low risk)" in handoff.section("signs").text


def test_times_follow_the_requested_zone() -> None:
    """Clock times are UTC by default and local time when a zone name is given."""
    kwargs: dict[str, Any] = {
        "vitals": None,
        "ecg": None,
        "alerts": [],
        "activations": [],
        "hospital": ESPLANADI,
        "now_us": T0,
    }
    utc = compose_handoff(stemi_encounter(), **kwargs)
    shanghai = compose_handoff(stemi_encounter(), tz="Asia/Shanghai", **kwargs)
    assert utc.section("eta").text == "10:30 (in 30 min) to Esplanadi Hospital (demo)"
    assert shanghai.section("eta").text == "18:30 (in 30 min) to Esplanadi Hospital (demo)"


def test_arrival_replaces_the_eta() -> None:
    """Once the door time is set, the ETA section says when the patient arrived."""
    handoff = compose_handoff(
        stemi_encounter(door_at=T0 + 28 * MIN, status=EncounterStatus.ARRIVED),
        vitals=None,
        ecg=None,
        alerts=[],
        activations=[],
        hospital=ESPLANADI,
        now_us=T0 + 40 * MIN,
    )
    assert handoff.section("eta").text == "arrived 10:28 at Esplanadi Hospital (demo)"


def test_lvo_stroke_recommends_a_thrombectomy_centre() -> None:
    """An open large-vessel-occlusion alert asks for a thrombectomy-capable centre and says when the destination
    is not one."""
    alert = dataclasses.replace(
        STEMI_ALERT,
        kind=AlertKind.LVO_STROKE,
        state=AlertState.RAISED,
        summary="large-vessel-occlusion stroke suspected (RACE 7)",
        detail={"race": 7, "recommendation": "thrombectomy-capable centre"},
    )
    north = DEMO_SITES.hospital("BUL")
    handoff = compose_handoff(
        stemi_encounter(chief_complaint="sudden left-sided weakness", destination="BUL", findings=()),
        vitals=None,
        ecg=None,
        alerts=[alert],
        activations=[],
        hospital=north,
        now_us=T0 + 10 * MIN,
    )
    assert handoff.section("requirements").text == (
        "thrombectomy-capable centre (Bulevardi Hospital (demo) cannot do thrombectomy); stroke team not yet activated"
    )
    assert handoff.section("injuries").text == "large-vessel-occlusion stroke suspected (RACE 7)"


def test_latest_vitals_keep_the_last_cuff_reading() -> None:
    """Folding a series keeps the newest value of every sign, including a cuff pressure taken minutes before."""
    series = [
        Vitals("A12", 1, 1, T0, hr=80, sbp=130, dbp=80, map=97, spo2=97, nibp_ts=T0),
        Vitals("A12", 1, 3, T0 + 2 * MIN, hr=90, spo2=95),
        Vitals("A12", 1, 2, T0 + MIN, hr=85, rr=18),
    ]
    merged = latest_vitals(series)
    assert merged is not None
    assert (merged.ts, merged.seq, merged.hr, merged.spo2, merged.rr) == (T0 + 2 * MIN, 3, 90, 95, 18)
    assert (merged.sbp, merged.dbp, merged.map, merged.nibp_ts) == (130, 80, 97, T0)
    assert latest_vitals([]) is None
