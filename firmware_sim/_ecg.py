"""A 12-lead ECG from one cardiac dipole, so every lead is a projection of the same heart vector.

The heart vector is a sum of Gaussian lobes in time (P, Q, R, S, T and an optional ST-segment shift), each with its
own 3-D direction. Axes: x to the patient's left, y inferior (feet), z anterior. Frontal leads are projected from x
and y; I and II are computed and the other limb leads derived from them exactly as Einthoven and Goldberger define
them, so III = II − I, aVR = −(I+II)/2, aVL = I − II/2, aVF = II − I/2 hold to within one count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emergency.protocol import STANDARD_LEADS

DEFAULT_LSB_UV = 2.5  # µV per count: ±82 mV of range, 2.5 µV resolution (diagnostic monitors resolve ≤ 5 µV)

Vector = tuple[float, float, float]


def _direction(theta_deg: float, elevation: float = 0.0) -> npt.NDArray[np.float64]:
    t = math.radians(theta_deg)
    return np.array([math.cos(t), math.sin(t), elevation])


def _horizontal(theta_deg: float, inferior: float = 0.0) -> npt.NDArray[np.float64]:
    # Horizontal plane: 0° = patient's left (V6), 90° = anterior; V1 sits right of the sternum.
    t = math.radians(theta_deg)
    v = np.array([math.cos(t), inferior, math.sin(t)])
    return v / np.linalg.norm(v)


LEAD_I = _direction(0)
LEAD_II = _direction(60)
PRECORDIAL = {
    "V1": _horizontal(115, 0.1),
    "V2": _horizontal(94, 0.1),
    "V3": _horizontal(75, 0.1),
    "V4": _horizontal(58, 0.15),
    "V5": _horizontal(30, 0.15),
    "V6": _horizontal(0, 0.15),
    "V3R": _horizontal(140, 0.1),
    "V4R": _horizontal(155, 0.15),
    "V5R": _horizontal(170, 0.15),
    "V7": _horizontal(-30, 0.15),
    "V8": _horizontal(-55, 0.15),
    "V9": _horizontal(-75, 0.15),
}


@dataclass(frozen=True, slots=True)
class _Wave:
    centre_s: float  # from the beat's onset, at 60 /min; scaled with √RR (Bazett) at other rates
    width_s: float
    vector_mv: Vector


# A normal sinus beat: QRS axis about +60°, R progression V1→V6, upright T in I, II, V2–V6.
_NORMAL_BEAT = (
    _Wave(0.09, 0.022, (0.07, 0.12, 0.02)),  # P
    _Wave(0.205, 0.008, (-0.12, 0.02, 0.16)),  # Q: septal, rightward and anterior
    _Wave(0.225, 0.010, (1.0, 1.0, -0.35)),  # R
    _Wave(0.247, 0.010, (-0.30, -0.25, -0.55)),  # S
    _Wave(0.47, 0.055, (0.22, 0.18, 0.12)),  # T
)
_ST_CENTRE_S, _ST_WIDTH_S = 0.34, 0.07
_ACTIVE_S = 0.62  # the beat's waves are over by then, at 60 /min


@dataclass(frozen=True, slots=True)
class EcgModel:
    """What the heart does. `st_vector_mv` shifts the ST segment along a 3-D direction (e.g. (0, 0.25, 0) is an
    inferior ST elevation with reciprocal depression in aVL; (0.05, -0.05, 0.3) an anterior one)."""

    heart_rate_bpm: float = 72.0
    st_vector_mv: Vector = (0.0, 0.0, 0.0)
    rr_jitter: float = 0.03  # beat-to-beat variation, fraction of RR
    noise_mv: float = 0.008
    wander_mv: float = 0.04


def _beat(fs: float, rr_s: float, model: EcgModel) -> npt.NDArray[np.float64]:
    """The heart vector over one beat of length rr_s: shape (3, samples)."""
    scale = math.sqrt(min(max(rr_s, 0.3), 2.0))  # Bazett: repolarisation shortens with rate
    n = max(1, round(rr_s * fs))
    t = np.arange(n) / fs
    vec = np.zeros((3, n))
    for wave in _NORMAL_BEAT:
        # Depolarisation (P, QRS) barely changes with rate; only the T wave moves with √RR.
        centre = wave.centre_s * (scale if wave is _NORMAL_BEAT[-1] else 1.0)
        lobe = np.exp(-0.5 * ((t - centre) / wave.width_s) ** 2)
        vec += np.outer(wave.vector_mv, lobe)
    if any(model.st_vector_mv):
        # A plateau from the J point into the T wave: the injury current of acute ischaemia.
        lobe = np.exp(-0.5 * (np.maximum(np.abs(t - _ST_CENTRE_S * scale) - 0.05, 0) / (_ST_WIDTH_S / 2)) ** 2)
        vec += np.outer(model.st_vector_mv, lobe)
    return vec


class EcgSynth:
    """Continuous frames of a chosen lead set; state carries across frames (no seam at frame edges)."""

    def __init__(
        self,
        model: EcgModel | None = None,
        fs: float = 500.0,
        leads: tuple[str, ...] = STANDARD_LEADS,
        lsb_uv: float = DEFAULT_LSB_UV,
        seed: int | None = None,
    ) -> None:
        self.model = model or EcgModel()
        self.fs = fs
        self.leads = leads
        self.lsb_uv = lsb_uv
        self._rng = np.random.default_rng(seed)
        self._pending = np.zeros((3, 0))
        self._t = 0.0
        self._templates: dict[tuple[int, Vector], npt.NDArray[np.float64]] = {}
        self._precordial = [lead for lead in leads if lead in PRECORDIAL]
        self._projection = np.vstack([LEAD_I, LEAD_II, *(PRECORDIAL[lead] for lead in self._precordial)])

    def set_model(self, model: EcgModel) -> None:
        self.model = model

    def _next_beat(self) -> npt.NDArray[np.float64]:
        rr = 60.0 / self.model.heart_rate_bpm * (1 + self._rng.normal(0, self.model.rr_jitter))
        rr = max(rr, 0.25)
        n = round(rr * self.fs)
        key = (round(60.0 / self.model.heart_rate_bpm * self.fs), self.model.st_vector_mv)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 32:
                self._templates.clear()
            template = self._templates[key] = _beat(self.fs, max(rr, _ACTIVE_S) * 1.3, self.model)
        if n <= template.shape[1]:
            return template[:, :n]
        # A slow beat: the diastolic (TP) segment lengthens; the waves themselves do not.
        return np.hstack([template, np.zeros((3, n - template.shape[1]))])

    def frame_counts(self, n: int) -> npt.NDArray[np.int16]:
        """The next `n` samples of every lead as int16 counts, shape (len(leads), n)."""
        while self._pending.shape[1] < n:
            self._pending = np.hstack([self._pending, self._next_beat()])
        vec, self._pending = self._pending[:, :n], self._pending[:, n:]
        t = self._t + np.arange(n) / self.fs
        self._t += n / self.fs
        # Respiration moves the baseline; muscle and electrode noise is small and broadband.
        wander = self.model.wander_mv * np.sin(2 * np.pi * 0.25 * t)
        vec = vec + np.array([[1.0], [0.6], [0.3]]) * wander + self._rng.normal(0, self.model.noise_mv, vec.shape)
        projected = self._projection @ vec  # mV: rows I, II, then the precordial leads present
        counts = np.rint(projected * 1000.0 / self.lsb_uv).astype(np.int32)
        lead_i, lead_ii = counts[0], counts[1]
        derived = {
            "I": lead_i,
            "II": lead_ii,
            "III": lead_ii - lead_i,
            "aVR": -((lead_i + lead_ii) // 2),
            "aVL": lead_i - lead_ii // 2,
            "aVF": lead_ii - lead_i // 2,
        }
        for row, lead in enumerate(self._precordial, start=2):
            derived[lead] = counts[row]
        out = np.vstack([derived[lead] for lead in self.leads])
        return np.clip(out, -32768, 32767).astype(np.int16)

    def frame_bytes(self, n: int) -> bytes:
        """The next `n` samples per lead as protocol v1 `data`: int16 little-endian, lead-major."""
        return self.frame_counts(n).astype("<i2").tobytes()
