"""The simulator's 12-lead ECG: one dipole seen from every lead, at the rate asked for, continuous, protocol-exact."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from emergency.codec import decode_device_message, encode_device_message
from emergency.protocol import STANDARD_LEADS, EcgFrame
from firmware_sim import DEFAULT_LSB_UV, EcgModel, EcgSynth

QUIET = EcgModel(rr_jitter=0.0, noise_mv=0.0, wander_mv=0.0)
TS = 1_795_000_000_000_000


def leads_mv(synth: EcgSynth, frames: int, n: int = 125) -> dict[str, npt.NDArray[np.float64]]:
    counts = np.hstack([synth.frame_counts(n) for _ in range(frames)]).astype(np.int64)
    return {lead: row * synth.lsb_uv / 1000.0 for lead, row in zip(synth.leads, counts, strict=True)}


def leads_counts(synth: EcgSynth, frames: int) -> dict[str, npt.NDArray[np.int64]]:
    counts = np.hstack([synth.frame_counts(125) for _ in range(frames)]).astype(np.int64)
    return dict(zip(synth.leads, counts, strict=True))


def r_peaks(lead: npt.NDArray[np.float64], fs: float) -> npt.NDArray[np.int64]:
    """Simple R-peak detection: upward crossings of 60 % of the record's maximum, at least 200 ms apart."""
    above = lead > 0.6 * lead.max()
    onsets = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    keep = [int(onsets[0])]
    for i in onsets[1:]:
        if i - keep[-1] > 0.2 * fs:
            keep.append(int(i))
    return np.array(keep)


@pytest.mark.parametrize(
    "model",
    [EcgModel(), EcgModel(heart_rate_bpm=140, st_vector_mv=(0.0, 0.3, 0.0)), EcgModel(noise_mv=0.05)],
    ids=["normal", "inferior-stemi", "noisy"],
)
def test_limb_leads_obey_einthoven_and_goldberger(model: EcgModel) -> None:
    """III = II − I exactly, and aVR = −(I+II)/2, aVL = I − II/2, aVF = II − I/2 within one LSB, sample by sample."""
    x = leads_counts(EcgSynth(model, seed=4), frames=40)
    assert np.array_equal(x["III"], x["II"] - x["I"])
    assert np.abs(x["aVR"] + (x["I"] + x["II"]) / 2).max() <= 1
    assert np.abs(x["aVL"] - (x["I"] - x["II"] / 2)).max() <= 1
    assert np.abs(x["aVF"] - (x["II"] - x["I"] / 2)).max() <= 1


@pytest.mark.parametrize("rate", [40, 60, 72, 100, 130, 170])
def test_heart_rate_detected_on_lead_ii_matches_the_setting(rate: int) -> None:
    """R peaks detected on lead II over 30 s give the set heart rate within 2 /min, with beat-to-beat variation on."""
    synth = EcgSynth(EcgModel(heart_rate_bpm=rate), seed=rate)
    ii = leads_mv(synth, frames=120)["II"]
    peaks = r_peaks(ii, synth.fs)
    measured = 60.0 * synth.fs / np.diff(peaks).mean()
    assert abs(measured - rate) <= 2
    # The variation is there but small: RR intervals are not all equal, and within ±15 % of nominal.
    rr = np.diff(peaks) / synth.fs
    assert rr.std() > 0
    assert np.all(np.abs(rr - 60.0 / rate) < 0.15 * 60.0 / rate)


def test_amplitudes_and_morphology_are_physiological() -> None:
    """QRS is 1–2 mV and T 0.2–0.5 mV in II; V1 is mostly negative, V6 mostly positive (normal R progression)."""
    x = leads_mv(EcgSynth(QUIET, seed=2), frames=20)
    ii, fs = x["II"], 500.0
    peaks = r_peaks(ii, fs)
    assert 1.0 <= ii.max() - ii.min() <= 2.0
    r = int(peaks[1])
    t_wave = ii[r + int(0.12 * fs) : r + int(0.40 * fs)]
    assert 0.2 <= t_wave.max() <= 0.5
    qrs_v1 = x["V1"][r - 25 : r + 25]
    qrs_v6 = x["V6"][r - 25 : r + 25]
    assert abs(qrs_v1.min()) > qrs_v1.max()
    assert qrs_v6.max() > abs(qrs_v6.min())
    # R grows from V1 to V4 across the precordium.
    r_heights = [x[lead][r - 25 : r + 25].max() for lead in ("V1", "V2", "V3", "V4")]
    assert r_heights == sorted(r_heights)


def st_shift(model: EcgModel) -> dict[str, float]:
    """Per lead, the largest change of the ST segment (J+40..J+120 ms) against the same heart without the ST vector."""
    normal = leads_mv(EcgSynth(QUIET, seed=3), frames=8)
    shifted = leads_mv(EcgSynth(model, seed=3), frames=8)
    r = int(r_peaks(normal["II"], 500.0)[0])
    window = slice(r + 40, r + 80)  # 80–160 ms after the R peak at 500 Hz: the ST segment
    return {lead: float((shifted[lead][window] - normal[lead][window]).mean()) for lead in normal}


def test_inferior_st_vector_elevates_ii_iii_avf_with_reciprocal_avl() -> None:
    """An inferior ST vector raises ST in II, III and aVF by ≥ 0.1 mV and lowers it in aVL."""
    shift = st_shift(EcgModel(rr_jitter=0.0, noise_mv=0.0, wander_mv=0.0, st_vector_mv=(0.0, 0.25, 0.0)))
    assert all(shift[lead] >= 0.1 for lead in ("II", "III", "aVF"))
    assert shift["aVL"] < -0.05


def test_anterior_st_vector_elevates_v2_to_v4() -> None:
    """An anterior ST vector raises ST in V2–V4 by ≥ 0.1 mV and leaves the inferior leads nearly flat."""
    shift = st_shift(EcgModel(rr_jitter=0.0, noise_mv=0.0, wander_mv=0.0, st_vector_mv=(0.05, -0.05, 0.3)))
    assert all(shift[lead] >= 0.1 for lead in ("V2", "V3", "V4"))
    assert abs(shift["aVF"]) < 0.05


def test_frames_join_without_a_seam_however_the_signal_is_cut() -> None:
    """Frames of 125 samples, of uneven sizes, and one long block give the same samples, noise and wander included."""
    model = EcgModel(heart_rate_bpm=88)
    whole = EcgSynth(model, seed=5).frame_counts(2000)
    framed = EcgSynth(model, seed=5)
    assert np.array_equal(np.hstack([framed.frame_counts(125) for _ in range(16)]), whole)
    uneven = EcgSynth(model, seed=5)
    sizes = [1, 7, 125, 300, 67, 500, 1000]
    assert np.array_equal(np.hstack([uneven.frame_counts(n) for n in sizes]), whole)


def test_a_new_heart_rate_takes_effect_without_a_jump() -> None:
    """Changing the model mid-stream keeps the trace continuous: no sample-to-sample step beyond the QRS's own."""
    synth = EcgSynth(QUIET, seed=6)
    before = synth.frame_counts(1000)
    synth.set_model(EcgModel(heart_rate_bpm=120, rr_jitter=0.0, noise_mv=0.0, wander_mv=0.0))
    after = synth.frame_counts(1000)
    steps = np.abs(np.diff(np.hstack([before, after]).astype(np.int64), axis=1))
    assert steps[:, 995:1005].max() <= steps.max()
    peaks = r_peaks(after[1] * DEFAULT_LSB_UV / 1000.0, 500.0)
    assert abs(60 * 500.0 / np.diff(peaks[1:]).mean() - 120) <= 2


@pytest.mark.parametrize(
    "leads", [STANDARD_LEADS, ("II", "V1", "V4R", "V8"), ("aVF",)], ids=["standard", "right-posterior", "one-lead"]
)
def test_every_frame_is_protocol_exact(leads: tuple[str, ...]) -> None:
    """data is 2·leads·n bytes, lead-major int16 LE, and every encoded frame decodes with the codec unchanged."""
    synth = EcgSynth(leads=leads, seed=7)
    for seq in range(8):
        counts = EcgSynth(leads=leads, seed=7)
        expected = np.hstack([counts.frame_counts(125) for _ in range(seq + 1)])[:, -125:]
        data = synth.frame_bytes(125)
        assert len(data) == 2 * len(leads) * 125
        assert np.array_equal(np.frombuffer(data, "<i2").reshape(len(leads), 125), expected)
        frame = EcgFrame("A12", 3, seq, TS + seq * 250_000, synth.fs, synth.leads, synth.lsb_uv, 125, data)
        assert decode_device_message("ems/v1/A12/ecg", encode_device_message(frame)) == frame


def test_unknown_lead_is_refused() -> None:
    """A lead set with an unknown or repeated name is refused at construction."""
    with pytest.raises(ValueError):
        EcgSynth(leads=("I", "V10"))
    with pytest.raises(ValueError):
        EcgSynth(leads=("I", "I"))


def test_generation_is_cheap_enough_for_a_fleet() -> None:
    """A standard 12-lead 250 ms frame costs well under 1 ms (hundreds of units at 4 frames/s in one process)."""
    synth = EcgSynth(seed=8)
    synth.frame_bytes(125)
    start = time.perf_counter()
    for _ in range(2000):
        synth.frame_bytes(125)
    per_frame_s = (time.perf_counter() - start) / 2000
    assert per_frame_s < 1e-3
