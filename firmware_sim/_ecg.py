"""A 12-lead ECG from one cardiac dipole, so every lead is a projection of the same heart vector.

The heart vector is a sum of Gaussian lobes in time (P, Q, R, S, T and an optional ST-segment shift), each with its
own 3-D direction. Axes: x to the patient's left, y inferior (feet), z anterior. Leads I and II and the precordial
leads are projections of that vector; III, aVR, aVL and aVF are then derived from I and II in integer counts exactly
as Einthoven and Goldberger define them, so III = II − I holds exactly and aVR = −(I+II)/2, aVL = I − II/2,
aVF = II − I/2 within one count.

Cost: the projected beat (basis leads × samples, in mV) is computed once per (fs, heart rate, ST vector, basis
leads) and shared by every synthesiser in the process, as is a table of white noise; a frame is then a slice of
overlap-added beats plus noise and wander. Measured on the development machine with

    .venv/bin/python -m timeit -s "from firmware_sim import EcgSynth; s = EcgSynth(seed=1)" "s.frame_bytes(125)"

about 50–65 µs per 12-lead 250 ms frame: ~0.025 % of one core per unit at 4 frames/s. (A whole simulated device,
with its SQLite outbox and MQTT link, costs about 0.45 % of a core; see firmware_sim/_fleet.py.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emergency.protocol import STANDARD_LEADS

# µV per count. 2.5 µV resolves well below the 5 µV that diagnostic ECG standards ask for, and int16 then spans
# ±82 mV, far beyond any surface ECG plus offset.
DEFAULT_LSB_UV = 2.5

Vector = tuple[float, float, float]
FloatArray = npt.NDArray[np.float64]

# Limb leads that are derived from I and II rather than projected.
_DERIVED = frozenset({"III", "aVR", "aVL", "aVF"})


def _frontal(theta_deg: float) -> FloatArray:
    # Frontal plane, hexaxial convention: 0° = patient's left, +90° = inferior.
    t = math.radians(theta_deg)
    return np.array([math.cos(t), math.sin(t), 0.0])


def _horizontal(theta_deg: float, inferior: float = 0.0, gain: float = 1.0) -> FloatArray:
    # Horizontal plane: 0° = patient's left (V6), 90° = anterior; V1 sits right of the sternum. `gain` > 1 because
    # the chest electrodes sit much closer to the heart than the limb electrodes do.
    t = math.radians(theta_deg)
    v = np.array([math.cos(t), inferior, math.sin(t)])
    lead: FloatArray = gain * v / np.linalg.norm(v)
    return lead


LEAD_DIRECTIONS: dict[str, FloatArray] = {
    "I": _frontal(0),
    "II": _frontal(60),
    "V1": _horizontal(115, 0.1, 1.4),
    "V2": _horizontal(94, 0.1, 2.0),
    "V3": _horizontal(75, 0.1, 1.9),
    "V4": _horizontal(58, 0.15, 1.7),
    "V5": _horizontal(30, 0.15, 1.4),
    "V6": _horizontal(0, 0.15, 1.1),
    "V3R": _horizontal(140, 0.1, 1.2),
    "V4R": _horizontal(155, 0.15, 1.1),
    "V5R": _horizontal(170, 0.15, 1.0),
    "V7": _horizontal(-30, 0.15, 1.0),
    "V8": _horizontal(-55, 0.15, 0.9),
    "V9": _horizontal(-75, 0.15, 0.8),
}


@dataclass(frozen=True, slots=True)
class _Wave:
    centre_s: float  # from the beat's onset
    width_s: float
    vector_mv: Vector
    rate_dependent: bool = False  # repolarisation (T) moves with √RR (Bazett); depolarisation barely does


# A normal sinus beat: QRS axis about +50°, R progression V1→V6, upright T in I, II, V2–V6.
# Peak projections: QRS ≈ 1.4 mV in II, T ≈ 0.27 mV in II, P ≈ 0.14 mV in II.
_NORMAL_BEAT = (
    _Wave(0.09, 0.022, (0.07, 0.12, 0.02)),  # P
    _Wave(0.205, 0.008, (-0.06, 0.02, 0.2)),  # Q: septal, anterior and slightly rightward
    _Wave(0.225, 0.010, (1.0, 1.0, -0.35)),  # R
    _Wave(0.247, 0.010, (-0.30, -0.25, -0.55)),  # S
    _Wave(0.47, 0.055, (0.22, 0.18, 0.12), rate_dependent=True),  # T
)
# The J point (end of the S wave), and the shortest J-to-T-peak interval, which keeps a fast rhythm's T wave off
# the J point (a normal ECG has no ST deviation at J at any rate).
_J_POINT_S, _MIN_J_TO_T_PEAK_S = 0.265, 0.13
_ST_ONSET_EDGE_S = 0.008
_TEMPLATE_S = 0.75  # at 60 /min every lobe has decayed to < 1e-6 of its peak by then


@dataclass(frozen=True, slots=True)
class EcgModel:
    """What the heart does.

    `st_vector_mv` shifts the ST segment along a 3-D direction (x left, y inferior, z anterior): (0, 0.25, 0) is an
    inferior ST elevation (II, III, aVF up, aVL down); (0.05, -0.05, 0.3) an anterior one (V1–V4 up).
    """

    heart_rate_bpm: float = 72.0
    st_vector_mv: Vector = (0.0, 0.0, 0.0)
    rr_jitter: float = 0.03  # beat-to-beat variation, standard deviation as a fraction of RR
    noise_mv: float = 0.008  # broadband electrode and muscle noise, per projected lead
    wander_mv: float = 0.04  # respiratory baseline wander at 0.25 Hz


def heart_vector(fs: float, rr_s: float, st_vector_mv: Vector) -> FloatArray:
    """The heart vector over one beat at nominal interval `rr_s`, from the beat's onset: shape (3, samples), mV.

    Only the waves' duration is returned (not the whole RR): beats are overlap-added, so a fast rhythm whose T wave
    outlasts the RR interval runs into the next P wave as it does in a real heart, with no seam.
    """
    scale = math.sqrt(min(max(rr_s, 0.3), 2.0))
    n = round(_TEMPLATE_S * max(scale, 1.0) * fs)
    t = np.arange(n) / fs
    vec = np.zeros((3, n))
    t_peak, t_width = 0.0, 0.0
    for wave in _NORMAL_BEAT:
        centre, width = wave.centre_s, wave.width_s
        if wave.rate_dependent:
            # Repolarisation shortens with rate, its wave narrows with it, and it never reaches back to the J point.
            centre = max(wave.centre_s * scale, _J_POINT_S + _MIN_J_TO_T_PEAK_S)
            width = wave.width_s * min(scale, 1.0)
            t_peak, t_width = centre, width
        vec += np.outer(wave.vector_mv, np.exp(-0.5 * ((t - centre) / width) ** 2))
    if any(st_vector_mv):
        # The injury current of acute ischaemia: a plateau from the J point to the T peak, at full height at J
        # whatever the rate, with a steep rise at J and a fall that follows the T wave.
        before = np.exp(-0.5 * ((t - _J_POINT_S) / _ST_ONSET_EDGE_S) ** 2)
        after = np.exp(-0.5 * ((t - t_peak) / t_width) ** 2)
        lobe = np.where(t < _J_POINT_S, before, np.where(t > t_peak, after, 1.0))
        vec += np.outer(st_vector_mv, lobe)
    return vec


@functools.lru_cache(maxsize=512)
def _projected_beat(fs: float, rr_samples: int, st_vector_mv: Vector, basis: tuple[str, ...]) -> FloatArray:
    """One beat projected on the basis leads (mV), shared read-only by every synthesiser with the same key."""
    projection = np.vstack([LEAD_DIRECTIONS[lead] for lead in basis])
    beat: FloatArray = projection @ heart_vector(fs, rr_samples / fs, st_vector_mv)
    beat.setflags(write=False)
    return beat


class EcgSynth:
    """Continuous frames of a chosen lead set; all state carries across frames, so frame edges have no seam.

    Frames are deterministic for a given seed and independent of how the samples are cut into frames.
    """

    def __init__(
        self,
        model: EcgModel | None = None,
        fs: float = 500.0,
        leads: tuple[str, ...] = STANDARD_LEADS,
        lsb_uv: float = DEFAULT_LSB_UV,
        seed: int | None = None,
    ) -> None:
        unknown = [lead for lead in leads if lead not in LEAD_DIRECTIONS and lead not in _DERIVED]
        if unknown or len(set(leads)) != len(leads):
            raise ValueError(f"lead set {leads!r} has unknown or repeated leads")
        self.model = model or EcgModel()
        self.fs = fs
        self.leads = leads
        self.lsb_uv = lsb_uv
        # Rhythm and noise come from separate streams, so cutting the signal differently gives the same samples.
        rhythm_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
        self._rhythm = np.random.default_rng(rhythm_seed)
        self._noise_at = int(np.random.default_rng(noise_seed).integers(0, 2**16))
        # I and II are always computed (the derived limb leads need them); then the precordial leads asked for.
        self._basis: tuple[str, ...] = (
            "I",
            "II",
            *(lead for lead in leads if lead in LEAD_DIRECTIONS and lead not in ("I", "II")),
        )
        row = {lead: i for i, lead in enumerate(self._basis)}
        row.update({lead: len(self._basis) + i for i, lead in enumerate(("III", "aVR", "aVL", "aVF"))})
        self._order = np.array([row[lead] for lead in leads])
        projection = np.vstack([LEAD_DIRECTIONS[lead] for lead in self._basis])
        # Respiration moves the heart (and so the dipole) mostly along the long axis.
        self._wander_gain = projection @ np.array([1.0, 0.6, 0.3])
        self._buffer: FloatArray = np.zeros((len(self._basis), 0))  # future samples, beats already added in
        self._next_onset = 0  # samples from now to the next beat's onset
        self._sample = 0  # samples emitted so far

    @property
    def samples_emitted(self) -> int:
        return self._sample

    def set_model(self, model: EcgModel) -> None:
        """Takes effect from the next beat; the beat in progress finishes as it began."""
        self.model = model

    def _add_beat(self) -> None:
        model = self.model
        nominal = round(60.0 * self.fs / model.heart_rate_bpm)
        beat = _projected_beat(self.fs, nominal, model.st_vector_mv, self._basis)
        end = self._next_onset + beat.shape[1]
        if end > self._buffer.shape[1]:
            grown = np.zeros((len(self._basis), end + nominal))
            grown[:, : self._buffer.shape[1]] = self._buffer
            self._buffer = grown
        self._buffer[:, self._next_onset : end] += beat
        jitter = self._rhythm.normal(0.0, model.rr_jitter) if model.rr_jitter else 0.0
        self._next_onset += max(round(nominal * (1.0 + jitter)), round(0.2 * self.fs))

    def frame_counts(self, n: int) -> npt.NDArray[np.int16]:
        """The next `n` samples of every lead as int16 counts, shape (len(leads), n)."""
        # A sample is final once every beat starting at or before it has been added.
        while self._next_onset < n:
            self._add_beat()
        if self._buffer.shape[1] < n:
            self._buffer = np.hstack([self._buffer, np.zeros((len(self._basis), n - self._buffer.shape[1]))])
        signal = self._buffer[:, :n]
        self._buffer = self._buffer[:, n:]
        self._next_onset -= n
        model = self.model
        if model.wander_mv:
            t = (self._sample + np.arange(n)) * (2 * np.pi * 0.25 / self.fs)
            signal = signal + self._wander_gain[:, None] * (model.wander_mv * np.sin(t))
        if model.noise_mv:
            signal = signal + model.noise_mv * self._noise_slice(n)
        self._sample += n
        counts = np.rint(signal * (1000.0 / self.lsb_uv)).astype(np.int32)
        lead_i, lead_ii = counts[0], counts[1]
        # Rows after the basis: III, aVR, aVL, aVF, in integer counts so the identities hold to the count.
        derived = np.empty((4, n), dtype=np.int32)
        np.subtract(lead_ii, lead_i, out=derived[0])
        np.negative((lead_i + lead_ii) // 2, out=derived[1])
        np.subtract(lead_i, lead_ii // 2, out=derived[2])
        np.subtract(lead_ii, lead_i // 2, out=derived[3])
        out = np.vstack([counts, derived])[self._order]
        np.maximum(out, -32768, out=out)  # (np.clip's wrapper costs more than the whole frame's arithmetic)
        np.minimum(out, 32767, out=out)
        frame: npt.NDArray[np.int16] = out.astype(np.int16)
        return frame

    def _noise_slice(self, n: int) -> FloatArray:
        """The next `n` samples of this synthesiser's walk through the shared noise table, shape (basis, n)."""
        table = _noise_table()
        start = self._noise_at
        self._noise_at = (start + n) % table.shape[1]
        if start + n <= table.shape[1]:
            return table[: len(self._basis), start : start + n]
        return np.take(table[: len(self._basis)], np.arange(start, start + n), axis=1, mode="wrap")

    def frame_bytes(self, n: int) -> bytes:
        """The next `n` samples per lead as protocol v1 `data`: int16 little-endian, lead-major."""
        return self.frame_counts(n).astype("<i2", copy=False).tobytes()


@functools.cache
def _noise_table() -> FloatArray:
    """Unit-variance white noise shared by every synthesiser: (14 leads, 2**16 samples), 7 MB once per process.

    Each synthesiser starts at its own random offset, so units differ; the noise repeats only every 131 s at
    500 Hz, which nothing (human or QRS detector) can tell from fresh noise.
    """
    table: FloatArray = np.random.default_rng(20_240_501).standard_normal((len(LEAD_DIRECTIONS), 2**16))
    table.setflags(write=False)
    return table
