"""12-lead ECG analysis: heart rate, rhythm regularity, J-point ST deviation and STEMI criteria.

    findings = analyze({"I": i_mv, "II": ii_mv, ...}, fs=500.0, sex="female", age=63)
    if findings.stemi: ...   # findings.stemi_territory, findings.reasons

Method, in order:

1. Validation: known lead names, equal non-empty 1-D arrays in mV, 100 ≤ fs ≤ 2000 Hz; otherwise `ValueError`.
2. Resampling to 500 Hz (polyphase, anti-aliased), so that every rule below falls on one 2 ms grid and the result
   does not depend on the device's sampling rate. Measurement filtering, all zero-phase: notches at 50 and 60 Hz
   (mains) and a 40 Hz low-pass (muscle noise). No high-pass is applied to what is measured — a 0.5 Hz high-pass
   distorts the ST segment.
3. QRS detection in the style of Pan–Tompkins on all leads together: 5–15 Hz band, derivative squared and summed
   over leads, 150 ms integration, adaptive signal/noise thresholds, a 200 ms refractory period, a T-wave rule
   (a peak within 360 ms of a QRS with under half its slope, slopes taken up to 40 Hz so that tall T waves stay
   under it) and searchback after 1.66 mean RR.
4. Beat selection: beats are aligned (±10 ms) to the median QRS shape of a 0.5 Hz high-passed copy (used only for
   shape and timing); beats correlating < 0.90 with it (ectopic, artefact) are excluded, and so, in a regular
   rhythm, are premature beats (RR < 80 % of the median). The rhythm is irregular (e.g. atrial fibrillation) when
   the median successive RR difference between dominant beats exceeds 8 % of the median RR. The heart rate is
   the mean rate over all detected beats.
5. Baseline wander removal that keeps the ST level: a cubic spline through the mean level of every dominant
   beat's PR segment is subtracted.
6. Median beat of the selected beats; QRS onset and J point from its spatial velocity (summed absolute slope over
   leads); PR baseline = mean over 28–8 ms before QRS onset; ST deviation = mean level at the J point (±2 ms)
   minus the PR baseline, also reported at J+60 ms. A lead that is flat or whose beat-to-beat J-point spread
   gives a standard error over 0.05 mV is reported as unreadable and not used.
7. STEMI per the 4th Universal Definition of MI (see `emergency.ecg._criteria`): ≥ 2 contiguous leads (Cabrera
   limb sequence aVL, I, −aVR, II, aVF, III; chest V5R…V3R, V1…V6, V7…V9) above their sex- and age-specific
   thresholds, the territory named, reciprocal depression ≥ 0.05 mV in the opposite leads reported.

Limits: the elevation's newness, LBBB, LVH and paced rhythm are not judged (a QRS ≥ 120 ms is noted).
"""

from emergency.ecg._analyze import EcgFindings, analyze
from emergency.ecg._criteria import CONTIGUOUS_SEQUENCES, elevation_threshold_mv

__all__ = ["CONTIGUOUS_SEQUENCES", "EcgFindings", "analyze", "elevation_threshold_mv"]
