"""Real recorded ECGs for the analysis tests, read from an installed package at test time (nothing is stored here).

The one real 12-lead recording that a package on PyPI ships is `waveform_ecg.dcm` in pydicom's bundled test files
(pydicom, MIT licence): a resting 12-lead ECG from a Mortara ELI 250 cart at E.O. Ospedali Galliera, Genoa,
anonymised, woman of 42, 10 s at 1000 Hz, 1.25 µV per unit. The cart annotated it: the rhythm strip's QRS fiducial
point, onset and offset of every beat, its median beat with onset and offset, its global measurements (RR 982 ms,
QRS 75 ms, …) and its statements "RITMO SINUSALE" and "ECG NORMALE". docs/ecg-validation.md says how it was found.

The rest of this module makes test conditions from that recording: noise of the kinds found on monitors in the
field (baseline wander, mains hum, muscle noise), other sampling rates, and rhythms rebuilt from its real beats
(bradycardia with tall T waves, atrial fibrillation, premature and ventricular ectopic beats), each with the beat
positions that are its annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.data import get_testdata_file
from scipy import signal, special

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CART_ECG_FILE = "waveform_ecg.dcm"


@dataclass(frozen=True)
class Recording:
    """A multi-lead recording in mV with its beat annotations (sample indices of each QRS fiducial point)."""

    name: str
    fs: float
    leads: dict[str, FloatArray]
    beats: IntArray
    statements: tuple[str, ...] = ()
    sex: str | None = None
    age: int | None = None

    @property
    def annotated_rate_bpm(self) -> float:
        """The mean heart rate over the annotated beats, as `analyze` reports it: (beats − 1) over their span."""
        return 60.0 * self.fs * (len(self.beats) - 1) / float(self.beats[-1] - self.beats[0])

    @property
    def seconds(self) -> float:
        return len(next(iter(self.leads.values()))) / self.fs


@dataclass(frozen=True)
class CartEcg(Recording):
    """The cart's recording with what the cart measured: per-beat wave boundaries and its median beat."""

    qrs_onsets: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    qrs_offsets: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    p_onsets: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    t_offsets: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    measurements: dict[str, float] = field(default_factory=dict)  # the cart's global measurements (ms, degrees)
    median_beat: dict[str, FloatArray] = field(default_factory=dict)
    median_qrs_onset: int = 0
    median_qrs_offset: int = 0


def _lead_name(code_meaning: str) -> str:
    # "Lead I (Einthoven)" → "I", "Lead aVR" → "aVR", "Lead V1" → "V1"
    return code_meaning.removeprefix("Lead ").split()[0]


def cart_ecg() -> CartEcg:
    """pydicom's bundled 12-lead cart ECG, in mV, with the cart's annotations."""
    path = get_testdata_file(CART_ECG_FILE)
    assert path is not None, f"{CART_ECG_FILE} is not in the installed pydicom"
    ds = dcmread(path)
    rhythm = ds.WaveformSequence[0]
    names = [_lead_name(ch.ChannelSourceSequence[0].CodeMeaning) for ch in rhythm.ChannelDefinitionSequence]
    # waveform_array applies each channel's sensitivity, baseline and correction factor: µV here.
    strip = ds.waveform_array(0) / 1000.0
    median_strip = ds.waveform_array(1) / 1000.0
    groups: dict[int, dict[str, int]] = {}
    measurements: dict[str, float] = {}
    statements: list[str] = []
    for item in ds.WaveformAnnotationSequence:
        if "UnformattedTextValue" in item:
            statements.append(str(item.UnformattedTextValue))
        elif "NumericValue" in item:
            measurements[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = float(item.NumericValue)
        elif "ReferencedSamplePositions" in item:
            meaning = str(item.ConceptNameCodeSequence[0].CodeMeaning)
            groups.setdefault(int(item.AnnotationGroupNumber), {})[meaning] = int(item.ReferencedSamplePositions)
    # Group 2 marks the median beat; groups from 100 on mark the beats of the rhythm strip, one group per beat.
    beats = [groups[g] for g in sorted(groups) if g >= 100]

    def column(key: str) -> IntArray:
        return np.array([beat[key] for beat in beats], dtype=np.int64)

    return CartEcg(
        name=f"pydicom {CART_ECG_FILE} (Mortara ELI 250)",
        fs=float(rhythm.SamplingFrequency),
        leads={name: strip[:, i].copy() for i, name in enumerate(names)},
        beats=column("Fiducial Point"),
        statements=tuple(statements),
        sex={"F": "female", "M": "male"}.get(str(ds.PatientSex)),
        age=int(str(ds.PatientAge).rstrip("Y")),
        qrs_onsets=column("QRS Onset"),
        qrs_offsets=column("QRS Offset"),
        p_onsets=column("P Onset"),
        t_offsets=column("T Offset"),
        measurements=measurements,
        median_beat={name: median_strip[:, i].copy() for i, name in enumerate(names)},
        median_qrs_onset=groups[2]["QRS Onset"],
        median_qrs_offset=groups[2]["QRS Offset"],
    )


def resampled(record: Recording, fs: float) -> Recording:
    """The recording at another sampling rate (polyphase, anti-aliased), its annotations moved with it."""
    ratio = Fraction(fs / record.fs).limit_denominator(1000)
    leads = {
        name: signal.resample_poly(x, ratio.numerator, ratio.denominator, padtype="line")
        for name, x in record.leads.items()
    }
    beats = np.round(record.beats * float(ratio)).astype(np.int64)
    return Recording(record.name, fs, leads, beats, record.statements, record.sex, record.age)


def with_noise(
    record: Recording,
    *,
    wander_mv: float = 0.0,
    mains_hz: float = 50.0,
    mains_mv: float = 0.0,
    emg_mv: float = 0.0,
    seed: int = 0,
) -> Recording:
    """The recording with noise as monitors record it in the field, every lead with its own phases and gains.

    * baseline wander: breathing at 0.25 Hz plus a slower electrode drift at 0.07 Hz, up to `wander_mv`;
    * mains hum: a sinusoid of `mains_mv` at `mains_hz` with a third harmonic at a fifth of it;
    * muscle (EMG) noise: Gaussian noise band-limited to 20–150 Hz, `emg_mv` RMS, in bursts (half the time at full
      strength, the rest at a quarter), as a patient shivering or moving in a moving ambulance gives.
    """
    rng = np.random.default_rng(seed)
    n = len(next(iter(record.leads.values())))
    t = np.arange(n) / record.fs
    sos = signal.butter(4, [20.0, min(150.0, 0.45 * record.fs)], btype="bandpass", fs=record.fs, output="sos")
    bursts = np.where(np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi)) > 0, 1.0, 0.25)
    noisy: dict[str, FloatArray] = {}
    for name, x in record.leads.items():
        gain = rng.uniform(0.6, 1.0)
        wander = (
            wander_mv
            * gain
            * (
                np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi))
                + 0.5 * np.sin(2 * np.pi * 0.07 * t + rng.uniform(0, 2 * np.pi))
            )
        )
        phase = rng.uniform(0, 2 * np.pi)
        mains = mains_mv * (np.sin(2 * np.pi * mains_hz * t + phase) + 0.2 * np.sin(2 * np.pi * 3 * mains_hz * t))
        emg = signal.sosfilt(sos, rng.standard_normal(n))
        emg = emg_mv * emg / max(float(np.std(emg)), 1e-12) * bursts
        noisy[name] = x + wander + mains + emg
    return Recording(record.name, record.fs, noisy, record.beats, record.statements, record.sex, record.age)


@dataclass(frozen=True)
class _Cycle:
    """One real beat of the cart's recording, levelled to its own PR baseline, and where its landmarks fall."""

    leads: dict[str, FloatArray]
    fiducial: int  # offsets within `leads`
    qrs_onset: int
    qrs_offset: int
    t_offset: int


def _cycles(ecg: CartEcg, *, with_p: bool) -> list[_Cycle]:
    ms = ecg.fs / 1000.0
    cycles = []
    for fid, onset, offset, p_onset, t_off in zip(
        ecg.beats, ecg.qrs_onsets, ecg.qrs_offsets, ecg.p_onsets, ecg.t_offsets, strict=True
    ):
        start = (p_onset - round(20 * ms)) if with_p else (onset - round(30 * ms))
        stop = t_off + round(60 * ms)
        if start < 0 or stop > len(ecg.leads["I"]):
            continue
        levelled = {}
        for name, x in ecg.leads.items():
            pr = float(np.mean(x[onset - round(28 * ms) : onset - round(8 * ms)]))
            levelled[name] = x[start:stop] - pr
        cycles.append(_Cycle(levelled, fid - start, onset - start, offset - start, t_off - start))
    return cycles


def _taper(length: int, edge: int) -> FloatArray:
    """1 in the middle, raised-cosine edges `edge` samples long, so pasted beats join the baseline smoothly."""
    w = np.ones(length)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    w[:edge], w[length - edge :] = ramp, ramp[::-1]
    return w


def spliced(
    ecg: CartEcg,
    rr_s: FloatArray,
    *,
    name: str,
    with_p: bool = True,
    t_gain: float = 1.0,
    ventricular: frozenset[int] = frozenset(),
    fibrillation_mv: float = 0.0,
    seed: int = 0,
) -> Recording:
    """A rhythm rebuilt from the cart's real beats: beat k+1 follows beat k by `rr_s[k]` seconds, on a flat PR
    baseline. The beats are taken in turn from the recording's own ten.

    `t_gain` scales each beat's T wave (from 80 ms after the cart's QRS offset to its T offset, with smooth edges;
    the J point and the ST segment keep their level). Beats whose index is in `ventricular` become wide ventricular
    ectopics: the real QRS–T without its P wave, stretched to 1.8 times its width and of opposite polarity.
    `fibrillation_mv` adds atrial fibrillatory waves (4–8 Hz, irregular in amplitude and frequency) to every lead.
    """
    rng = np.random.default_rng(seed)
    fs = ecg.fs
    ms = fs / 1000.0
    cycles = _cycles(ecg, with_p=with_p)
    positions = np.round((0.6 + np.concatenate([[0.0], np.cumsum(rr_s)])) * fs).astype(np.int64)
    n = int(positions[-1] + round(0.8 * fs))
    out = {lead: np.zeros(n) for lead in ecg.leads}
    for k, at in enumerate(positions):
        cycle = cycles[k % len(cycles)]
        for lead, x in cycle.leads.items():
            beat = x.copy()
            if t_gain != 1.0:
                lo, hi = cycle.qrs_offset + round(80 * ms), cycle.t_offset + round(40 * ms)
                gain = np.ones_like(beat)
                gain[lo:hi] += (t_gain - 1.0) * _taper(hi - lo, round(40 * ms))
                beat = beat * gain
            fiducial = cycle.fiducial
            if k in ventricular:
                qrst = beat[cycle.qrs_onset :]
                stretched = np.interp(np.arange(0, len(qrst), 1 / 1.8), np.arange(len(qrst)), qrst)
                beat = -stretched
                fiducial = round((cycle.fiducial - cycle.qrs_onset) * 1.8)
            beat = beat * _taper(len(beat), round(15 * ms))
            start = int(at) - fiducial
            lo, hi = max(start, 0), min(start + len(beat), n)
            out[lead][lo:hi] += beat[lo - start : hi - start]
    if fibrillation_mv:
        t = np.arange(n) / fs
        for lead in out:
            f_wave = np.zeros(n)
            for _ in range(3):
                freq = rng.uniform(4.0, 8.0) + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t)
                envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi))
                f_wave += envelope * np.sin(2 * np.pi * np.cumsum(freq) / fs + rng.uniform(0, 2 * np.pi))
            out[lead] += fibrillation_mv * f_wave / 3.0
    return Recording(name, fs, out, positions, (), ecg.sex, ecg.age)


def irregular_rr(mean_s: float, count: int, *, spread: float = 0.25, seed: int = 0) -> FloatArray:
    """Independent RR intervals (s) around `mean_s`, uniformly ±`spread` of it: irregularly irregular, as in AF."""
    rng = np.random.default_rng(seed)
    return np.asarray(mean_s * (1.0 + rng.uniform(-spread, spread, count)), dtype=np.float64)


def ectopic_rr(normal_s: float, count: int, premature_at: tuple[int, ...], prematurity: float) -> FloatArray:
    """RR intervals (s) of a regular rhythm in which the beats at `premature_at` come early by `prematurity` of an
    RR and are followed by a full compensatory pause."""
    rr = np.full(count, normal_s)
    for beat in premature_at:
        rr[beat - 1] -= prematurity * normal_s
        rr[beat] += prematurity * normal_s
    return rr


def rate_error_bpm(measured: float, record: Recording) -> float:
    """How far a measured rate is from the annotated one, in beats per minute (NaN stays NaN)."""
    return abs(measured - record.annotated_rate_bpm) if math.isfinite(measured) else math.nan


def with_injury_current(ecg: CartEcg, st_i_mv: float, st_ii_mv: float, chest_mv: dict[str, float]) -> CartEcg:
    """The cart's recording with an ST shift added to every beat, as an injury current gives: up by the cart's QRS
    offset, held through the ST segment and gone after the T wave. The limb shift is set for I and II and the other
    limb leads get theirs by Einthoven and Goldberger, so the leads stay consistent with each other."""
    limb = {
        "I": st_i_mv,
        "II": st_ii_mv,
        "III": st_ii_mv - st_i_mv,
        "aVR": -(st_i_mv + st_ii_mv) / 2,
        "aVL": st_i_mv - st_ii_mv / 2,
        "aVF": st_ii_mv - st_i_mv / 2,
    }
    shifts = {**limb, **chest_mv}
    ms = ecg.fs / 1000.0
    n = len(ecg.leads["I"])
    samples = np.arange(n, dtype=np.float64)
    shape = np.zeros(n)
    for onset, offset, t_off in zip(ecg.qrs_onsets, ecg.qrs_offsets, ecg.t_offsets, strict=True):
        rise = special.expit((samples - (onset + offset) / 2) / (4 * ms))
        fall = special.expit(-(samples - (t_off - 40 * ms)) / (20 * ms))
        shape += rise * fall
    leads = {name: x + shifts.get(name, 0.0) * shape for name, x in ecg.leads.items()}
    return CartEcg(
        name=f"{ecg.name} with an injury current",
        fs=ecg.fs,
        leads=leads,
        beats=ecg.beats,
        statements=(),
        sex=ecg.sex,
        age=ecg.age,
        qrs_onsets=ecg.qrs_onsets,
        qrs_offsets=ecg.qrs_offsets,
        p_onsets=ecg.p_onsets,
        t_offsets=ecg.t_offsets,
    )
