"""The simulator's 12-lead and the ECG analysis agree at every heart rate a scenario may use."""

from __future__ import annotations

import numpy as np
import pytest

from emergency.ecg import analyze
from firmware_sim import EcgModel, EcgSynth

CASES = [((0.0, 0.0, 0.0), False, None), ((0.0, 0.25, 0.0), True, "inferior"), ((0.05, -0.05, 0.3), True, None)]


@pytest.mark.parametrize("rate", [40, 72, 100, 150])
@pytest.mark.parametrize(("st_vector", "stemi", "territory"), CASES)
def test_simulated_st_shift_is_read_back_at_any_rate(
    rate: int, st_vector: tuple[float, float, float], stemi: bool, territory: str | None
) -> None:
    """A normal simulated beat is no STEMI and an ST vector is one, from 40 to 150 /min (the ST shift sits at the
    J point and a fast T wave never reaches back to it)."""
    synth = EcgSynth(EcgModel(heart_rate_bpm=rate, st_vector_mv=st_vector), seed=rate)
    counts = np.hstack([synth.frame_counts(125) for _ in range(40)]).astype(float) * synth.lsb_uv / 1000
    findings = analyze(dict(zip(synth.leads, counts, strict=True)), 500.0, sex="male", age=60)
    assert findings.stemi is stemi, findings.reasons
    if territory:
        assert findings.stemi_territory == territory
    assert abs(findings.heart_rate_bpm - rate) <= 3
