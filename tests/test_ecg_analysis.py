"""12-lead ECG analysis: heart rate, rhythm, J-point ST deviation and the STEMI criteria of the 4th UDMI.

Recordings come from two independent sources: a per-lead Gaussian-wave generator written here (each lead's waves
and ST shift set directly, limb leads derived from I and II by Einthoven and Goldberger), and the project's dipole
simulator `firmware_sim.EcgSynth`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emergency.ecg import EcgFindings, analyze, elevation_threshold_mv
from emergency.protocol import ALLOWED_LEADS, STANDARD_LEADS
from firmware_sim import EcgModel, EcgSynth

Leads = dict[str, npt.NDArray[np.float64]]

# Wave amplitudes (mV) per basis lead: P, Q, R, S, T. The limb leads III, aVR, aVL, aVF are derived from I and II.
SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    "I": (0.10, -0.05, 0.80, -0.15, 0.25),
    "II": (0.15, -0.05, 1.20, -0.20, 0.30),
    "V1": (0.08, 0.00, 0.30, -1.00, 0.10),
    "V2": (0.08, 0.00, 0.60, -1.40, 0.40),
    "V3": (0.08, 0.00, 0.90, -0.90, 0.45),
    "V4": (0.08, -0.05, 1.40, -0.50, 0.40),
    "V5": (0.08, -0.08, 1.30, -0.30, 0.30),
    "V6": (0.08, -0.08, 1.00, -0.15, 0.25),
    "V3R": (0.06, 0.00, 0.25, -0.60, 0.05),
    "V4R": (0.05, 0.00, 0.20, -0.40, 0.05),
    "V7": (0.05, -0.05, 0.50, -0.10, 0.15),
    "V8": (0.05, -0.05, 0.40, -0.10, 0.12),
    "V9": (0.05, -0.05, 0.30, -0.10, 0.10),
}
CHEST = ("V1", "V2", "V3", "V4", "V5", "V6")


def _gauss(t: npt.NDArray[np.float64], centre: float, width: float) -> npt.NDArray[np.float64]:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def _beat(
    t: npt.NDArray[np.float64], shape: tuple[float, float, float, float, float], st_mv: float, rr_s: float, p: bool
) -> npt.NDArray[np.float64]:
    """One beat with its R peak at t = 0; repolarisation (ST end, T) moves with √RR."""
    p_amp, q_amp, r_amp, s_amp, t_amp = shape
    t_centre, t_width = 0.27 * math.sqrt(rr_s), 0.05 * math.sqrt(rr_s)
    wave = (
        q_amp * _gauss(t, -0.025, 0.008)
        + r_amp * _gauss(t, 0.0, 0.010)
        + s_amp * _gauss(t, 0.025, 0.009)
        + t_amp * _gauss(t, t_centre, t_width)
    )
    if p:
        wave += p_amp * _gauss(t, -0.16, 0.02)
    if st_mv:
        # Injury current: a plateau fully up 20 ms after R (before the J point), ending into the T wave.
        rise = 1.0 / (1.0 + np.exp(-(t - 0.02) / 0.004))
        fall = 1.0 / (1.0 + np.exp((t - t_centre) / 0.03))
        wave += st_mv * rise * fall
    return wave


def _ectopic(t: npt.NDArray[np.float64], shape: tuple[float, float, float, float, float]) -> npt.NDArray[np.float64]:
    """A ventricular ectopic beat: no P, a wide QRS against the normal axis and a large discordant T."""
    r_amp = shape[2] - shape[3]
    return -0.9 * r_amp * _gauss(t, 0.0, 0.035) + 0.5 * r_amp * _gauss(t, 0.25, 0.07)


def make_ecg(
    *,
    fs: float = 500.0,
    seconds: float = 10.0,
    rate: float = 75.0,
    st: Mapping[str, float] | None = None,
    leads: tuple[str, ...] = STANDARD_LEADS,
    t_scale: Mapping[str, float] | None = None,
    rr_s: npt.NDArray[np.float64] | None = None,
    p_waves: bool = True,
    ectopic_every: int = 0,
    seed: int = 0,
) -> tuple[Leads, npt.NDArray[np.float64]]:
    """A recording (mV per lead) and the R-peak times (s). `st` gives ST shifts for basis leads (limb: I, II)."""
    rng = np.random.default_rng(seed)
    st = st or {}
    t_scale = t_scale or {}
    n = round(seconds * fs)
    t = np.arange(n) / fs
    if rr_s is None:
        rr_s = np.full(int(seconds * rate / 60) + 3, 60.0 / rate) * (
            1 + rng.normal(0, 0.01, int(seconds * rate / 60) + 3)
        )
    peaks = 0.3 + np.concatenate([[0.0], np.cumsum(rr_s)])
    kinds = np.zeros(len(peaks), dtype=bool)
    if ectopic_every:
        kinds[ectopic_every - 1 :: ectopic_every] = True
        # Premature by 40 % of an RR, with a compensatory pause after.
        for beat in np.flatnonzero(kinds):
            peaks[beat] -= 0.4 * float(np.median(rr_s))
    peaks = peaks[peaks < seconds - 0.05]
    kinds = kinds[: len(peaks)]
    basis = ("I", "II", *(lead for lead in leads if lead in SHAPES and lead not in ("I", "II")))
    out: Leads = {}
    for lead in basis:
        p_amp, q_amp, r_amp, s_amp, t_amp = SHAPES[lead]
        shape = (p_amp, q_amp, r_amp, s_amp, t_amp * t_scale.get(lead, 1.0))
        x = np.zeros(n)
        for k, (peak, ectopic) in enumerate(zip(peaks, kinds, strict=True)):
            lo, hi = max(int((peak - 0.35) * fs), 0), min(int((peak + 0.75) * fs), n)
            local = t[lo:hi] - peak
            rr = float(rr_s[min(k, len(rr_s) - 1)])
            x[lo:hi] += _ectopic(local, shape) if ectopic else _beat(local, shape, st.get(lead, 0.0), rr, p_waves)
        out[lead] = x
    i, ii = out["I"], out["II"]
    limb = {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    out.update(limb)
    return {lead: out[lead] for lead in leads}, peaks


def add_noise(
    leads: Leads, fs: float, *, wander_mv: float = 0.0, mains_mv: float = 0.0, emg_mv: float = 0.0, seed: int = 1
) -> Leads:
    """Baseline wander at 0.3 Hz, 50 Hz mains and broadband muscle noise, each lead with its own phase and gain."""
    rng = np.random.default_rng(seed)
    noisy: Leads = {}
    for lead, x in leads.items():
        t = np.arange(len(x)) / fs
        wander = wander_mv * rng.uniform(0.6, 1.0) * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))
        mains = mains_mv * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))
        noisy[lead] = x + wander + mains + emg_mv * rng.standard_normal(len(x))
    return noisy


def simulated(model: EcgModel, fs: float = 500.0, seconds: float = 10.0, seed: int = 3) -> Leads:
    """The project's dipole simulator, counts converted back to mV."""
    synth = EcgSynth(model, fs=fs, seed=seed)
    counts = synth.frame_counts(round(seconds * fs)).astype(np.float64)
    return {lead: row * synth.lsb_uv / 1000.0 for lead, row in zip(synth.leads, counts, strict=True)}


def true_rate(peaks: npt.NDArray[np.float64]) -> float:
    return 60.0 * (len(peaks) - 1) / float(peaks[-1] - peaks[0])


INFERIOR = {"I": 0.0, "II": 0.25}  # II 0.25, III 0.25, aVF 0.25, aVL −0.125, aVR −0.125
ANTERIOR = {"V1": 0.2, "V2": 0.35, "V3": 0.35, "V4": 0.25}


def assert_small_st(findings: EcgFindings, limit: float = 0.05) -> None:
    worst = max(findings.st_deviation_mv.items(), key=lambda item: abs(item[1]))
    assert abs(worst[1]) < limit, findings.st_deviation_mv


# --- normal, inferior and anterior STEMI --------------------------------------------------------------------------


def test_normal_sinus_rhythm_has_no_stemi_and_near_zero_st() -> None:
    """A normal 12-lead from the wave generator: no STEMI, every |ST| < 0.05 mV, regular rhythm, good quality."""
    leads, peaks = make_ecg()
    findings = analyze(leads, 500.0, sex="male", age=55)
    assert not findings.stemi and findings.stemi_territory is None
    assert_small_st(findings)
    assert set(findings.st_deviation_mv) == set(STANDARD_LEADS)
    assert not findings.rr_irregular and findings.quality == "good"
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 1.0


def test_normal_simulated_ecg_has_no_stemi_and_near_zero_st() -> None:
    """A normal 12-lead from the dipole simulator (with its noise and wander): no STEMI, every |ST| < 0.05 mV."""
    findings = analyze(simulated(EcgModel()), 500.0)
    assert not findings.stemi
    assert_small_st(findings)
    assert abs(findings.heart_rate_bpm - 72.0) < 3.0


def test_inferior_stemi_is_found_with_reciprocal_depression_in_avl() -> None:
    """ST +0.25 mV in II, III, aVF: STEMI, territory inferior, reciprocal depression in aVL, reasons name them."""
    leads, _ = make_ecg(st=INFERIOR)
    findings = analyze(leads, 500.0)
    assert findings.stemi and findings.stemi_territory == "inferior"
    assert "aVL" in findings.reciprocal_depression
    for lead in ("II", "III", "aVF"):
        assert findings.st_deviation_mv[lead] == pytest.approx(0.25, abs=0.03)
        assert lead in findings.st_elevation_leads
    assert findings.st_deviation_mv["aVL"] == pytest.approx(-0.125, abs=0.03)
    assert any("II" in reason and "aVF" in reason and "inferior" in reason for reason in findings.reasons)


def test_inferior_stemi_from_the_simulator() -> None:
    """The simulator's inferior ST vector (0, 0.25, 0) mV is called an inferior STEMI with aVL reciprocal."""
    findings = analyze(simulated(EcgModel(st_vector_mv=(0.0, 0.25, 0.0))), 500.0)
    assert findings.stemi and findings.stemi_territory == "inferior"
    assert "aVL" in findings.reciprocal_depression
    assert findings.st_deviation_mv["II"] > 0.15


def test_anterior_stemi_is_anteroseptal() -> None:
    """ST elevation in V1–V4 (0.2–0.35 mV) is an anteroseptal STEMI even at the highest V2–V3 threshold."""
    leads, _ = make_ecg(st=ANTERIOR)
    findings = analyze(leads, 500.0)
    assert findings.stemi and findings.stemi_territory == "anteroseptal"
    assert findings.st_elevation_leads == ["V1", "V2", "V3", "V4"]
    assert any("most conservative" in reason for reason in findings.reasons)


def test_anterior_stemi_from_the_simulator() -> None:
    """The simulator's anterior ST vector is called a STEMI of an anterior territory with V2 and V3 elevated."""
    findings = analyze(simulated(EcgModel(st_vector_mv=(0.05, -0.05, 0.3))), 500.0, sex="male", age=62)
    assert findings.stemi
    assert findings.stemi_territory is not None and "anter" in findings.stemi_territory
    assert {"V2", "V3"} <= set(findings.st_elevation_leads)


@pytest.mark.parametrize(
    ("st_mv", "sex", "age", "stemi"),
    [
        (0.18, "female", 60, True),  # ≥ 0.15 mV for women
        (0.18, "male", 60, False),  # < 0.20 mV for men ≥ 40
        (0.18, None, 60, False),  # sex unknown: the higher (men's) threshold
        (0.22, "male", 45, True),
        (0.22, "male", 35, False),  # < 0.25 mV for men < 40
        (0.22, "male", None, False),  # age unknown: the men < 40 threshold
        (0.27, "male", 35, True),
        (0.12, "female", 60, False),
    ],
)
def test_v2_v3_thresholds_depend_on_sex_and_age(st_mv: float, sex: str | None, age: int | None, stemi: bool) -> None:
    """ST elevation in V2–V3 only is STEMI against 0.15 mV (women), 0.20 mV (men ≥ 40), 0.25 mV (men < 40)."""
    leads, _ = make_ecg(st={"V2": st_mv, "V3": st_mv})
    findings = analyze(leads, 500.0, sex=sex, age=age)
    assert findings.st_deviation_mv["V2"] == pytest.approx(st_mv, abs=0.02)
    assert findings.st_deviation_mv["V3"] == pytest.approx(st_mv, abs=0.02)
    assert findings.stemi is stemi
    if stemi:
        assert findings.stemi_territory == "anteroseptal"


def test_unknown_sex_uses_the_most_conservative_threshold_and_says_so() -> None:
    """With sex not given, V2–V3 is judged at 0.25 mV (or 0.20 mV if age ≥ 40) and the reasons say why."""
    assert elevation_threshold_mv("V2", None, None) == 0.25
    assert elevation_threshold_mv("V3", None, 50) == 0.20
    assert elevation_threshold_mv("V2", "female", None) == 0.15
    assert elevation_threshold_mv("II", None, None) == 0.10
    leads, _ = make_ecg(st={"V2": 0.18, "V3": 0.18})
    reasons = " ".join(analyze(leads, 500.0).reasons)
    assert "sex or age not given" in reasons and "0.25 mV" in reasons


def test_lateral_elevation_in_contiguous_limb_leads_is_lateral_stemi() -> None:
    """ST elevation in I and aVL (Cabrera neighbours) with V5–V6 is a lateral STEMI with inferior reciprocal."""
    leads, _ = make_ecg(st={"I": 0.2, "II": -0.05, "V5": 0.15, "V6": 0.15})
    findings = analyze(leads, 500.0, sex="female", age=70)
    assert findings.stemi and findings.stemi_territory == "lateral"
    assert {"I", "aVL", "V5", "V6"} <= set(findings.st_elevation_leads)
    assert "III" in findings.reciprocal_depression


def test_elevation_in_leads_that_are_not_contiguous_is_not_stemi() -> None:
    """ST +0.15 mV in V1 and V4 only (V2, V3 normal in between): not contiguous, so no STEMI."""
    leads, _ = make_ecg(st={"V1": 0.15, "V4": 0.15})
    findings = analyze(leads, 500.0, sex="female", age=50)
    assert not findings.stemi


def test_posterior_stemi_with_posterior_leads() -> None:
    """ST depression in V1–V3 with ST elevation ≥ 0.05 mV in V7–V9 is a posterior STEMI, V1–V3 reciprocal."""
    posterior_leads = (*STANDARD_LEADS, "V7", "V8", "V9")
    leads, _ = make_ecg(
        leads=posterior_leads, st={"V1": -0.15, "V2": -0.2, "V3": -0.15, "V7": 0.08, "V8": 0.08, "V9": 0.08}
    )
    findings = analyze(leads, 500.0, sex="female", age=68)
    assert findings.stemi and findings.stemi_territory == "posterior"
    assert {"V1", "V2", "V3"} <= set(findings.reciprocal_depression)


def test_v1_v3_depression_without_posterior_leads_asks_for_them() -> None:
    """ST depression in V1–V3 without V7–V9 is not called a STEMI, but the reasons ask for posterior leads."""
    leads, _ = make_ecg(st={"V1": -0.15, "V2": -0.2, "V3": -0.15})
    findings = analyze(leads, 500.0)
    assert not findings.stemi
    assert any("V7–V9" in reason for reason in findings.reasons)


# --- heart rate and rhythm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [40, 75, 150])
def test_heart_rate_within_3_bpm(rate: int) -> None:
    """The heart rate is within 3 /min of the truth at 40, 75 and 150 /min, from the generator and the simulator."""
    leads, peaks = make_ecg(rate=rate, seed=rate)
    assert abs(analyze(leads, 500.0).heart_rate_bpm - true_rate(peaks)) < 3.0
    measured = analyze(simulated(EcgModel(heart_rate_bpm=rate, rr_jitter=0.0), seed=rate), 500.0).heart_rate_bpm
    assert abs(measured - rate) < 3.0


def test_atrial_fibrillation_is_irregular_and_rate_is_the_mean() -> None:
    """Irregular RR without P waves: rr_irregular is True, the rate is the mean rate, no false STEMI."""
    rng = np.random.default_rng(7)
    rr = rng.uniform(0.45, 1.05, 30)
    leads, peaks = make_ecg(rr_s=rr, p_waves=False)
    t = np.arange(len(leads["II"])) / 500.0
    fibrillation = sum(0.03 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (4.7, 5.9, 7.3))
    findings = analyze({lead: x + fibrillation for lead, x in leads.items()}, 500.0)
    assert findings.rr_irregular
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 3.0
    assert not findings.stemi
    assert findings.beats_used >= len(peaks) - 3  # irregular beats of normal shape are all used


def test_sinus_rhythm_with_jitter_is_regular() -> None:
    """The simulator's sinus rhythm with 3 % RR jitter is not called irregular."""
    assert not analyze(simulated(EcgModel()), 500.0).rr_irregular


# --- robustness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wander_mv", "mains_mv", "emg_mv"),
    [(0.5, 0.0, 0.0), (0.0, 0.1, 0.0), (0.0, 0.0, 0.05), (0.5, 0.1, 0.05)],
    ids=["wander", "mains", "emg", "all"],
)
@pytest.mark.parametrize("st_change", ["normal", "inferior"])
def test_noise_does_not_change_the_call(wander_mv: float, mains_mv: float, emg_mv: float, st_change: str) -> None:
    """0.3 Hz wander of 0.5 mV, 0.1 mV of 50 Hz mains and 0.05 mV muscle noise leave ST within 0.05 mV of truth
    and the STEMI call unchanged."""
    leads, peaks = make_ecg(st=INFERIOR if st_change == "inferior" else None, seed=11)
    findings = analyze(add_noise(leads, 500.0, wander_mv=wander_mv, mains_mv=mains_mv, emg_mv=emg_mv), 500.0)
    assert findings.stemi is (st_change == "inferior")
    expected = 0.25 if st_change == "inferior" else 0.0
    for lead in ("II", "III", "aVF"):
        assert findings.st_deviation_mv[lead] == pytest.approx(expected, abs=0.05)
    assert abs(findings.st_deviation_mv["V2"]) < 0.05
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 3.0


def test_tall_t_waves_at_45_bpm_are_not_counted_as_beats() -> None:
    """Bradycardia 45 /min with 0.8 mV T waves: every beat found once, T waves not counted, rate right, no STEMI."""
    t_scale = {lead: 0.8 / SHAPES[lead][4] for lead in ("II", "V2", "V3", "V4")}
    leads, peaks = make_ecg(rate=45, t_scale=t_scale, seed=5)
    findings = analyze(add_noise(leads, 500.0, emg_mv=0.02), 500.0)
    assert findings.beats_detected == len(peaks)
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 3.0
    assert not findings.stemi


def test_ectopic_beats_are_excluded_from_the_median_beat() -> None:
    """Every 5th beat a premature wide ectopic: it is detected, excluded from the median beat, and no false STEMI."""
    leads, peaks = make_ecg(rate=70, ectopic_every=5, seed=9)
    findings = analyze(leads, 500.0)
    assert findings.beats_detected == len(peaks)
    ectopics = len(range(4, len(peaks), 5))
    assert findings.beats_used <= len(peaks) - ectopics
    assert not findings.stemi
    assert_small_st(findings)
    assert any("excluded" in note for note in findings.notes)


def test_ectopic_beats_do_not_hide_a_stemi() -> None:
    """With every 5th beat ectopic, an inferior STEMI in the dominant beats is still called."""
    leads, _ = make_ecg(rate=70, ectopic_every=5, st=INFERIOR, seed=9)
    findings = analyze(leads, 500.0)
    assert findings.stemi and findings.stemi_territory == "inferior"


def test_single_rhythm_lead_gives_rate_but_no_stemi_assessment() -> None:
    """Lead II alone: the heart rate is measured, STEMI is False and the reasons say two contiguous leads are needed."""
    leads, peaks = make_ecg(st=INFERIOR)
    findings = analyze({"II": leads["II"]}, 500.0)
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 3.0
    assert not findings.stemi
    assert any("needs at least two contiguous leads" in reason for reason in findings.reasons)


@pytest.mark.parametrize("fs", [500.0, 250.0])
def test_ten_seconds_at_500_and_250_hz(fs: float) -> None:
    """10 s at 500 Hz and at 250 Hz: rate within 3 /min, inferior STEMI called, ST within 0.03 mV."""
    leads, peaks = make_ecg(fs=fs, st=INFERIOR, seed=2)
    findings = analyze(add_noise(leads, fs, emg_mv=0.02, wander_mv=0.2), fs)
    assert abs(findings.heart_rate_bpm - true_rate(peaks)) < 3.0
    assert findings.stemi and findings.stemi_territory == "inferior"
    assert findings.st_deviation_mv["II"] == pytest.approx(0.25, abs=0.03)


def test_simulator_at_250_hz() -> None:
    """The simulator at 250 Hz: inferior STEMI called, rate within 3 /min."""
    findings = analyze(simulated(EcgModel(st_vector_mv=(0.0, 0.25, 0.0)), fs=250.0), 250.0)
    assert findings.stemi and findings.stemi_territory == "inferior"
    assert abs(findings.heart_rate_bpm - 72.0) < 3.0


def test_too_short_recording_is_not_assessed() -> None:
    """A 2 s recording gives stemi=False and a reason, not an exception."""
    leads, _ = make_ecg(seconds=2.0, st=INFERIOR)
    findings = analyze(leads, 500.0)
    assert not findings.stemi and findings.quality == "unusable"
    assert any("too short" in reason for reason in findings.reasons)


def test_pure_noise_is_not_assessed() -> None:
    """Ten seconds of white noise: stemi=False, and the findings say the recording could not be assessed."""
    rng = np.random.default_rng(4)
    findings = analyze({lead: rng.normal(0, 0.3, 5000) for lead in STANDARD_LEADS}, 500.0)
    assert not findings.stemi
    assert findings.quality == "unusable"


def test_a_disconnected_lead_is_reported_and_not_used() -> None:
    """A flat V3 (electrode off) is listed as unreadable and breaks contiguity rather than faking an ST value."""
    leads, _ = make_ecg(st={"V2": 0.3, "V3": 0.3})
    leads["V3"] = np.zeros_like(leads["V3"])
    findings = analyze(leads, 500.0, sex="female", age=60)
    assert "V3" in findings.unreadable_leads and "V3" not in findings.st_deviation_mv
    assert findings.stemi is False


def test_a_lead_full_of_artefact_is_reported_and_not_used() -> None:
    """V4 buried in 0.5 mV of noise is listed as unreadable; the other leads still carry an inferior STEMI."""
    leads, _ = make_ecg(st=INFERIOR)
    leads["V4"] = leads["V4"] + np.random.default_rng(8).normal(0.0, 0.5, len(leads["V4"]))
    findings = analyze(leads, 500.0)
    assert "V4" in findings.unreadable_leads and findings.quality == "noisy"
    assert findings.stemi and findings.stemi_territory == "inferior"


def test_st_at_j_plus_60_ms_and_qrs_duration_are_reported() -> None:
    """Besides the J point, ST at J+60 ms is reported per lead, and the QRS duration is physiological (60–120 ms)."""
    leads, _ = make_ecg(st=INFERIOR)
    findings = analyze(leads, 500.0)
    assert findings.st_j60_mv["II"] == pytest.approx(0.25, abs=0.06)
    assert findings.qrs_duration_ms is not None and 60.0 <= findings.qrs_duration_ms <= 120.0


# --- invalid input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leads", "fs", "message"),
    [
        ({"V10": np.zeros(5000)}, 500.0, "unknown lead"),
        ({"II": np.zeros(0)}, 500.0, "empty"),
        ({}, 500.0, "non-empty"),
        ({"II": np.zeros(5000)}, 50.0, "sampling rate"),
        ({"II": np.zeros(5000)}, 4000.0, "sampling rate"),
        ({"II": np.zeros(5000)}, math.nan, "sampling rate"),
        ({"I": np.zeros(5000), "II": np.zeros(4000)}, 500.0, "same number"),
        ({"II": np.full(5000, np.nan)}, 500.0, "NaN"),
        ({"II": np.zeros((2, 2500))}, 500.0, "one-dimensional"),
        ({"II": np.full(5000, 5000.0)}, 500.0, "millivolts"),
    ],
)
def test_invalid_input_raises_value_error(leads: Leads, fs: float, message: str) -> None:
    """Unknown leads, empty arrays, fs outside 100–2000 Hz and non-mV data raise ValueError with a clear message."""
    with pytest.raises(ValueError, match=message):
        analyze(leads, fs)


def test_invalid_patient_details_raise_value_error() -> None:
    """Sex other than male/female/None and an impossible age raise ValueError."""
    leads = {"II": np.zeros(5000)}
    with pytest.raises(ValueError, match="sex"):
        analyze(leads, 500.0, sex="M")
    with pytest.raises(ValueError, match="age"):
        analyze(leads, 500.0, age=-1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    lead_names=st.lists(st.sampled_from(sorted(ALLOWED_LEADS)), min_size=1, max_size=4, unique=True),
    length=st.integers(min_value=0, max_value=4000),
    fs=st.floats(min_value=50.0, max_value=2500.0),
    data=st.data(),
)
def test_random_input_only_ever_raises_value_error(
    lead_names: list[str], length: int, fs: float, data: st.DataObject
) -> None:
    """Random amplitudes of any length (including 0) and any fs give findings or ValueError, never another error."""
    elements = (
        st.floats(min_value=-5.0, max_value=5.0, width=32)
        | st.floats(min_value=-2000.0, max_value=2000.0, width=32)
        | st.sampled_from([0.0, math.nan, math.inf])
    )
    leads = {name: data.draw(hnp.arrays(np.float64, length, elements=elements)) for name in lead_names}
    try:
        findings = analyze(leads, fs)
    except ValueError:
        return
    assert isinstance(findings, EcgFindings)
    assert isinstance(findings.stemi, bool)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), amplitude=st.floats(0.001, 50.0), seconds=st.floats(0.0, 12.0))
def test_random_noise_recordings_never_crash(seed: int, amplitude: float, seconds: float) -> None:
    """Gaussian noise of any amplitude and duration through all 12 leads never raises anything but ValueError."""
    rng = np.random.default_rng(seed)
    n = round(seconds * 250.0)
    leads = {lead: amplitude * rng.standard_normal(n) for lead in STANDARD_LEADS}
    try:
        findings = analyze(leads, 250.0)
    except ValueError:
        return
    assert isinstance(findings.reasons, list) and findings.reasons
