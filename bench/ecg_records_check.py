"""Local check of `emergency.ecg.analyze` on real recorded ECGs with known diagnoses (not a test, not run in CI).

What it checks. Each record is cut into 10 s windows (up to 30 spread evenly over a long record, plus, where the
record has ectopic beats, up to 40 windows centred on those not already in a window; such windows may overlap),
and `analyze` is called on each window with only the leads the record has, mapped to standard names, and the
patient's sex and age from the header. Each window's start and end are moved to the middle of the RR interval
they fall in, so no reference beat is cut in half. Per window it compares:

* the heart rate with the reference beats in the window, (beats − 1) / span, and `beats_detected` with their count;
* the STEMI call and territory with the header's diagnosis (PTB: "Reason for admission", "Acute infarction
  (localization)"), and prints the J-point and J+60 ms ST deviations that `analyze` measured in every lead;
* `rr_irregular` with the annotated rhythm (windows inside "(AFIB" rhythm annotations against all others);
* windows with annotated ectopic beats (A, a, J, S, V, r, E, F): how many beats `analyze` excluded as ectopic or
  premature, and that it made no STEMI call.

It prints one markdown table per condition, then the details.

The data. PhysioNet records as distributed in the `sample-data/` folder of the wfdb-python repository
(github.com/MIT-LCP/wfdb-python; its LICENSE is the MIT licence, and it states no separate licence for its
sample data; the MIT-BIH Arrhythmia and PTB Diagnostic ECG databases' own PhysioNet pages give their licence and
the citation they ask for). Nothing is downloaded here and no recording is
stored in this repository: copy the files from a clone of that repository to a scratch directory, e.g.

    mkdir -p /tmp/wfdb-sample && cd /tmp/wfdb-sample
    for f in 100.hea 100.dat 100.atr s0010_re.hea s0010_re.dat s0010_re.xyz; do
        git --git-dir=/path/to/wfdb-python/.git show HEAD:sample-data/$f > $f; done

What the sample data holds (checked at commit 6850ad1a, March 2026):

* `100`: MIT-BIH Arrhythmia Database record 100, the full 30 min 5 s, 360 Hz, leads MLII and V5, with the
  cardiologists' beat annotations (`.atr`: 2239 N, 33 A, 1 V) and the header comment "69 M".
* `s0010_re`: PTB Diagnostic ECG Database, 38.4 s at 1000 Hz, the 12 standard leads plus Frank vx, vy, vz (not
  used); woman, 81; "Reason for admission: Myocardial infarction", "Acute infarction (localization):
  infero-latera[l]", infarction 29 Sep 1990, ECG 1 Oct 1990, thrombolysed. No beat annotations: the reference
  beats are those of wfdb's XQRS detector on the lead with the largest peak-to-peak amplitude (V3), made during
  the conversion (a detector, not a person; it finds the same 52 beats within 5 ms on V2, V3 and V4 and none on
  the limb leads or V1, V5, V6, whose QRS is small or negative).
* Not used: `1003` (lead II, 360 Hz, 957 N annotations) has a header and annotations but no `.dat`; `03700181`
  (MCL1 at 125 Hz) has only detectors' beat marks (gqrs, sqrs); `a103l` and `v102s` are PhysioNet/CinC 2015
  alarm strips (asystole, VT; both false alarms) without beat annotations; the rest are not ECGs, are a few
  seconds long, or are test files of the format.
* Record 100 has two leads, II and V5, which are not contiguous, so `analyze` cannot make a STEMI call on it at
  all; "no false STEMI" there is by construction. Its J-point levels are printed instead.
* No record with atrial fibrillation is in the sample data (no "(AFIB" rhythm annotation; MIT-BIH 201, 202, 203,
  219, 221 are not there), so the atrial-fibrillation table stays empty unless such a record is converted.

The conversion needs the `wfdb` package, which is not a dependency of this project: install it in a separate,
throwaway environment and run this file's `--convert` step with that interpreter (the conversion imports only
numpy and wfdb, not the project):

    python3 -m venv /tmp/wfdbvenv && /tmp/wfdbvenv/bin/pip install wfdb
    /tmp/wfdbvenv/bin/python bench/ecg_records_check.py --convert /tmp/wfdb-sample --npz-dir /tmp/wfdb-sample/npz

It reads each record with `wfdb.rdrecord(path)` (physical units: mV for the ECG channels), keeps the channels whose
name maps to a standard lead (MIT-BIH "MLII" → II, "V1", "V2", "V4", "V5" as they are; PTB "i", "ii", …, "v6" →
I, II, …, V6; "ECG lead II" → II; Frank leads and non-ECG channels dropped), reads the `.atr` annotations with
`wfdb.rdann(path, "atr")` (sample, symbol, aux note) or, when there are none, runs
`wfdb.processing.xqrs_detect` on the lead with the largest peak-to-peak amplitude and stores its beats with symbol
"N", and saves one `<record>.npz`
with: `leads` (standard names), `source_leads` (names in the record), `signals` (leads × samples, mV, float64),
`fs`, `ann_sample`, `ann_symbol`, `ann_aux`, `ann_source` and `comments` (header comment lines).

Then the check, with the project's interpreter:

    .venv/bin/python bench/ecg_records_check.py --npz-dir /tmp/wfdb-sample/npz

It needs a few seconds of CPU per hundred windows and runs in one process.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WINDOW_S = 10.0
MAX_SPREAD_WINDOWS = 30
MAX_ECTOPIC_WINDOWS = 40
DEFAULT_RECORDS = ("100", "s0010_re")

# Record channel name → standard lead name. Frank leads (vx, vy, vz) and non-ECG channels are not listed.
LEAD_NAMES = {
    "MLII": "II",
    "ML2": "II",
    "II": "II",
    "ECG lead II": "II",
    "V1": "V1",
    "V2": "V2",
    "V3": "V3",
    "V4": "V4",
    "V5": "V5",
    "V6": "V6",
    "i": "I",
    "ii": "II",
    "iii": "III",
    "avr": "aVR",
    "avl": "aVL",
    "avf": "aVF",
    "v1": "V1",
    "v2": "V2",
    "v3": "V3",
    "v4": "V4",
    "v5": "V5",
    "v6": "V6",
}
# WFDB beat annotation symbols (everything else — rhythm changes "+", noise "~", comments — is not a beat).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
ECTOPIC_SYMBOLS = frozenset("AaJSVrEF")


# --------------------------------------------------------------------------------------------------- conversion


def convert(wfdb_dir: Path, npz_dir: Path, records: Iterable[str]) -> None:
    """WFDB records in `wfdb_dir` → `<record>.npz` in `npz_dir` (needs the wfdb package, see the module docstring)."""
    try:
        import wfdb
        import wfdb.processing
    except ImportError:
        sys.exit(
            "the conversion needs the wfdb package, which this project does not depend on: install it in a separate "
            "environment (python3 -m venv /tmp/wfdbvenv && /tmp/wfdbvenv/bin/pip install wfdb) and run "
            "--convert with that interpreter; the check itself does not need wfdb"
        )
    npz_dir.mkdir(parents=True, exist_ok=True)
    for name in records:
        path = str(wfdb_dir / name)
        try:
            rec = wfdb.rdrecord(path)
        except FileNotFoundError as exc:
            print(f"{name}: {exc}, skipped")
            continue
        keep = [i for i, sig in enumerate(rec.sig_name) if sig.strip() in LEAD_NAMES]
        if not keep:
            print(f"{name}: no ECG lead with a known name in {rec.sig_name}, skipped")
            continue
        units = {rec.units[i] for i in keep}
        if units != {"mV"}:
            sys.exit(f"{name}: ECG channels are in {units}, expected mV")
        signals = np.asarray(rec.p_signal[:, keep].T, dtype=np.float64)
        leads = [LEAD_NAMES[rec.sig_name[i].strip()] for i in keep]
        if Path(path + ".atr").exists():
            ann = wfdb.rdann(path, "atr")
            ann_sample = np.asarray(ann.sample, dtype=np.int64)
            ann_symbol = list(ann.symbol)
            ann_aux = [(aux or "").strip("\x00 ") for aux in ann.aux_note]
            ann_source = "atr"
        else:
            lead = int(np.argmax(np.ptp(signals, axis=1)))
            beats = wfdb.processing.xqrs_detect(sig=signals[lead], fs=rec.fs, verbose=False)
            ann_sample = np.asarray(beats, dtype=np.int64)
            ann_symbol = ["N"] * len(ann_sample)
            ann_aux = [""] * len(ann_sample)
            ann_source = f"wfdb XQRS detector on lead {leads[lead]}"
        np.savez_compressed(
            npz_dir / f"{name}.npz",
            record=name,
            leads=np.array(leads),
            source_leads=np.array([rec.sig_name[i] for i in keep]),
            signals=signals,
            fs=float(rec.fs),
            ann_sample=ann_sample,
            ann_symbol=np.array(ann_symbol),
            ann_aux=np.array(ann_aux),
            ann_source=ann_source,
            comments=np.array(rec.comments),
        )
        print(
            f"{name}: {len(leads)} leads {leads}, {signals.shape[1] / rec.fs:.1f} s at {rec.fs:g} Hz, "
            f"{len(ann_sample)} annotations ({ann_source}) → {npz_dir / (name + '.npz')}"
        )


# -------------------------------------------------------------------------------------------------------- check


@dataclass
class Record:
    name: str
    fs: float
    leads: list[str]
    signals: np.ndarray
    ann_sample: np.ndarray
    ann_symbol: np.ndarray
    ann_aux: np.ndarray
    ann_source: str
    comments: list[str]
    sex: str | None = None
    age: int | None = None
    diagnosis: list[str] = field(default_factory=list)

    @property
    def beats(self) -> np.ndarray:
        return np.array([s in BEAT_SYMBOLS for s in self.ann_symbol], dtype=bool)


def load(path: Path) -> Record:
    with np.load(path, allow_pickle=False) as z:
        rec = Record(
            name=str(z["record"]),
            fs=float(z["fs"]),
            leads=[str(x) for x in z["leads"]],
            signals=np.asarray(z["signals"], dtype=np.float64),
            ann_sample=np.asarray(z["ann_sample"], dtype=np.int64),
            ann_symbol=np.asarray(z["ann_symbol"]).astype(str),
            ann_aux=np.asarray(z["ann_aux"]).astype(str),
            ann_source=str(z["ann_source"]),
            comments=[str(x) for x in z["comments"]],
        )
    for line in rec.comments:
        text = line.strip()
        if m := re.match(r"age:\s*(\d+)", text, re.I):
            rec.age = int(m.group(1))
        elif m := re.match(r"sex:\s*(male|female)", text, re.I):
            rec.sex = m.group(1).lower()
        elif m := re.match(r"(\d+)\s+([MF])\b", text):  # MIT-BIH: "69 M 1085 1629 x1"
            rec.age, rec.sex = int(m.group(1)), {"M": "male", "F": "female"}[m.group(2)]
        elif m := re.match(r"<age>:\s*(\d+)\s+<sex>:\s*([MF])", text):
            rec.age, rec.sex = int(m.group(1)), {"M": "male", "F": "female"}[m.group(2)]
        if re.match(r"(Reason for admission|Acute infarction|Former infarction|Additional diagnoses)", text):
            rec.diagnosis.append(text)
    return rec


def rhythm_at(rec: Record) -> tuple[np.ndarray, list[str]]:
    """Change points (samples) and rhythm labels from the aux notes of rhythm annotations ("(N", "(AFIB", …)."""
    starts, labels = [], []
    for sample, aux in zip(rec.ann_sample, rec.ann_aux, strict=True):
        if aux.startswith("("):
            starts.append(int(sample))
            labels.append(aux)
    return np.array(starts, dtype=np.int64), labels


def window_rhythms(starts: np.ndarray, labels: list[str], a: int, b: int) -> set[str]:
    if not labels:
        return set()
    found = set()
    before = np.flatnonzero(starts <= a)
    if len(before):
        found.add(labels[before[-1]])
    for s, label in zip(starts, labels, strict=True):
        if a < s < b:
            found.add(label)
    return found


def snap_to_mid_rr(beats: np.ndarray, sample: int) -> int:
    """The middle of the RR interval that `sample` falls in, so that a window edge cuts no beat."""
    i = int(np.searchsorted(beats, sample))
    if 0 < i < len(beats):
        return int((beats[i - 1] + beats[i]) // 2)
    return sample


def windows(rec: Record) -> list[tuple[int, int, str]]:
    """(start, end, kind) of the windows: spread evenly, and centred on ectopic beats not already covered."""
    n = rec.signals.shape[1]
    w = round(WINDOW_S * rec.fs)
    beats = rec.ann_sample[rec.beats]
    if n <= w:
        return [(0, n, "spread")]
    count = min(MAX_SPREAD_WINDOWS, math.ceil(n / w))
    nominal = np.linspace(0, n - w, count).round().astype(int)
    out: list[tuple[int, int, str]] = []

    def add(start: int, kind: str) -> None:
        a = max(snap_to_mid_rr(beats, start), 0)
        b = min(snap_to_mid_rr(beats, start + w), n)
        if b - a >= 0.8 * w:
            out.append((a, b, kind))

    for start in nominal:
        add(int(start), "spread")
    ectopic = rec.ann_sample[np.isin(rec.ann_symbol, list(ECTOPIC_SYMBOLS))]
    uncovered = [s for s in ectopic if not any(a <= s < b for a, b, _ in out)]
    if len(uncovered) > MAX_ECTOPIC_WINDOWS:
        uncovered = [uncovered[i] for i in np.linspace(0, len(uncovered) - 1, MAX_ECTOPIC_WINDOWS).round().astype(int)]
    for s in uncovered:
        if any(a <= s < b for a, b, _ in out):
            continue
        add(int(np.clip(s - w // 2, 0, n - w)), "ectopic-centred")
    return out


@dataclass
class Result:
    record: str
    start_s: float
    end_s: float
    kind: str  # "spread" or "ectopic-centred"
    condition: str
    ref_beats: int
    ref_rate: float
    ref_rr_irregularity: float  # median |ΔRR| / median RR of the reference beats (analyze's cut-point is 0.08)
    rate: float
    detected: int
    used: int
    stemi: bool
    territory: str | None
    elevated: list[str]
    irregular: bool
    ectopic_symbols: str
    excluded: int
    quality: str
    st: dict[str, float]
    st_j60: dict[str, float]
    reasons: list[str]
    notes: list[str]

    @property
    def rate_error(self) -> float:
        return self.rate - self.ref_rate


def _excluded(notes: list[str]) -> int:
    total = 0
    for note in notes:
        if m := re.match(r"(\d+) (premature )?beat\(s\).*excluded", note):
            total += int(m.group(1))
    return total


def check_record(rec: Record) -> list[Result]:
    from emergency.ecg import analyze  # the project; not needed for --convert

    rhythm_starts, rhythm_labels = rhythm_at(rec)
    beat_mask = rec.beats
    results = []
    for a, b, kind in windows(rec):
        in_window = (rec.ann_sample >= a) & (rec.ann_sample < b)
        ref = rec.ann_sample[in_window & beat_mask]
        symbols = rec.ann_symbol[in_window & beat_mask]
        ectopic = "".join(s for s in symbols if s in ECTOPIC_SYMBOLS)
        rhythms = window_rhythms(rhythm_starts, rhythm_labels, a, b)
        if "(AFIB" in rhythms and len(rhythms) == 1:
            condition = "atrial fibrillation"
        elif "(AFIB" in rhythms or "(AFL" in rhythms:
            condition = "AF/flutter onset or offset in window"
        elif any(r.startswith("(") and r not in ("(N",) for r in rhythms):
            condition = "other annotated rhythm: " + ", ".join(sorted(rhythms))
        elif rec.diagnosis and any("Myocardial infarction" in d for d in rec.diagnosis):
            condition = "myocardial infarction (PTB)"
        elif ectopic:
            condition = "sinus with ectopic beats"
        else:
            condition = "sinus, no ectopic beat"
        leads = {name: rec.signals[i, a:b] for i, name in enumerate(rec.leads)}
        f = analyze(leads, rec.fs, sex=rec.sex, age=rec.age)
        ref_rate = 60.0 * rec.fs * (len(ref) - 1) / float(ref[-1] - ref[0]) if len(ref) >= 2 else math.nan
        ref_rr = np.diff(ref).astype(float)
        ref_irr = float(np.median(np.abs(np.diff(ref_rr))) / np.median(ref_rr)) if len(ref_rr) >= 2 else math.nan
        results.append(
            Result(
                record=rec.name,
                start_s=a / rec.fs,
                end_s=b / rec.fs,
                kind=kind,
                condition=condition,
                ref_beats=len(ref),
                ref_rate=ref_rate,
                ref_rr_irregularity=ref_irr,
                rate=f.heart_rate_bpm,
                detected=f.beats_detected,
                used=f.beats_used,
                stemi=f.stemi,
                territory=f.stemi_territory,
                elevated=list(f.st_elevation_leads),
                irregular=f.rr_irregular,
                ectopic_symbols=ectopic,
                excluded=_excluded(f.notes),
                quality=f.quality,
                st=dict(f.st_deviation_mv),
                st_j60=dict(f.st_j60_mv),
                reasons=list(f.reasons),
                notes=list(f.notes),
            )
        )
    return results


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(results: list[Result], conditions: list[str]) -> str:
    rows = [
        "| condition | records | windows | rate error mean / max (/min) | beats missed / extra | STEMI calls "
        "| irregular calls | ectopic beats annotated / excluded | unusable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cond in conditions:
        rs = [r for r in results if r.condition == cond]
        if not rs:
            rows.append(f"| {cond} | – | 0 | – | – | – | – | – | – |")
            continue
        errors = np.array([abs(r.rate_error) for r in rs if not math.isnan(r.rate_error)])
        missed = sum(max(r.ref_beats - r.detected, 0) for r in rs)
        extra = sum(max(r.detected - r.ref_beats, 0) for r in rs)
        stemi = [r for r in rs if r.stemi]
        territories = sorted({r.territory or "" for r in stemi})
        stemi_text = f"{len(stemi)}/{len(rs)}" + (f" ({', '.join(territories)})" if territories else "")
        records = ", ".join(sorted({r.record for r in rs}))
        rows.append(
            f"| {cond} | {records} | {len(rs)} | "
            f"{_fmt(float(errors.mean()) if len(errors) else math.nan)} / "
            f"{_fmt(float(errors.max()) if len(errors) else math.nan)} | {missed} / {extra} | {stemi_text} | "
            f"{sum(r.irregular for r in rs)}/{len(rs)} | "
            f"{sum(len(r.ectopic_symbols) for r in rs)} / {sum(r.excluded for r in rs)} | "
            f"{sum(r.quality == 'unusable' for r in rs)} |"
        )
    return "\n".join(rows)


def window_table(results: list[Result], only: list[Result] | None = None) -> str:
    rows = [
        "| record | window (s) | condition | ref beats / detected / used | ref rate | rate | ectopic annotated "
        "| excluded | STEMI | irregular | ref median ΔRR/RR | quality |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in only if only is not None else results:
        rows.append(
            f"| {r.record} | {r.start_s:.1f}–{r.end_s:.1f} ({r.kind}) | {r.condition} "
            f"| {r.ref_beats} / {r.detected} / {r.used} "
            f"| {_fmt(r.ref_rate, 1)} | {_fmt(r.rate, 1)} | {r.ectopic_symbols or '–'} | {r.excluded} "
            f"| {(r.territory or 'yes') if r.stemi else 'no'} | {'yes' if r.irregular else 'no'} "
            f"| {_fmt(r.ref_rr_irregularity, 3)} | {r.quality} |"
        )
    return "\n".join(rows)


def st_table(rs: list[Result], leads: list[str]) -> str:
    rows = [
        "| window (s) | " + " | ".join(leads) + " |",
        "| --- | " + " | ".join("---" for _ in leads) + " |",
    ]
    for r in rs:
        cells = [f"{_fmt(r.st.get(lead, math.nan))} / {_fmt(r.st_j60.get(lead, math.nan))}" for lead in leads]
        rows.append(f"| {r.start_s:.1f}–{r.end_s:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report(records: list[Record], results: list[Result]) -> None:
    print("## Records\n")
    for rec in records:
        n = rec.signals.shape[1]
        n_beats = int(rec.beats.sum())
        counts: dict[str, int] = {}
        for s in rec.ann_symbol[rec.beats]:
            counts[s] = counts.get(s, 0) + 1
        rhythms = sorted({str(a) for a in rec.ann_aux if a.startswith("(")})
        print(
            f"- `{rec.name}`: {', '.join(rec.leads)}; {n / rec.fs:.1f} s at {rec.fs:g} Hz; "
            f"sex {rec.sex}, age {rec.age}; "
            f"{n_beats} reference beats ({rec.ann_source}: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); rhythm notes {rhythms or 'none'}"
        )
        for line in rec.diagnosis:
            print(f"  - {line}")
    conditions = [
        "sinus, no ectopic beat",
        "sinus with ectopic beats",
        "atrial fibrillation",
        "myocardial infarction (PTB)",
    ]
    conditions += sorted({r.condition for r in results} - set(conditions))
    print("\n## Summary per condition\n")
    print(summary_table(results, conditions))
    for rec in records:
        rs = [r for r in results if r.record == rec.name]
        print(f"\n## Per record: {rec.name}\n")
        print(summary_table(rs, sorted({r.condition for r in rs})))
    print(
        "\n## Windows with ectopic beats, a rate error over 1 /min, a beat-count mismatch, a STEMI call, an "
        "irregular call or an unusable result\n"
    )
    flagged = [
        r
        for r in results
        if r.ectopic_symbols
        or abs(r.rate_error) > 1.0
        or r.ref_beats != r.detected
        or r.stemi
        or r.irregular
        or r.quality == "unusable"
        or math.isnan(r.rate_error)
    ]
    print(window_table(results, flagged) if flagged else "none")
    for r in flagged:
        if r.notes or r.stemi or r.quality == "unusable":
            print(f"- {r.record} {r.start_s:.1f}–{r.end_s:.1f} s: notes {r.notes}; reasons {r.reasons}")
    for rec in records:
        rs = [r for r in results if r.record == rec.name]
        if rec.diagnosis or len(rec.leads) > 2:
            print(f"\n## ST deviation measured by analyze, {rec.name} (mV, J point / J+60 ms)\n")
            print(st_table(rs, rec.leads))
            for r in rs:
                print(
                    f"- {r.start_s:.1f}–{r.end_s:.1f} s: STEMI {r.stemi} {r.territory or ''}; reasons {r.reasons}; "
                    f"notes {r.notes}"
                )
    print("\n## J-point ST deviation over all windows, per record and lead (mV: min / median / max)\n")
    for rec in records:
        rs = [r for r in results if r.record == rec.name]
        cells = []
        for lead in rec.leads:
            values = np.array([r.st[lead] for r in rs if lead in r.st])
            if len(values):
                cells.append(f"{lead} {values.min():+.3f} / {np.median(values):+.3f} / {values.max():+.3f}")
            else:
                cells.append(f"{lead} unreadable")
        print(f"- {rec.name} ({len(rs)} windows): " + "; ".join(cells))
    stemi_elsewhere = [r for r in results if r.stemi and "infarction" not in r.condition]
    print(
        f"\nSTEMI calls outside the MI record: {len(stemi_elsewhere)} of "
        f"{sum('infarction' not in r.condition for r in results)} windows"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz-dir", type=Path, required=True, help="directory of converted <record>.npz files")
    parser.add_argument(
        "--convert",
        type=Path,
        metavar="WFDB_DIR",
        help="first convert WFDB records in this directory to .npz in --npz-dir (needs wfdb; then exits)",
    )
    parser.add_argument("--records", nargs="*", default=list(DEFAULT_RECORDS), help="record names to convert")
    args = parser.parse_args(argv)
    if args.convert is not None:
        convert(args.convert, args.npz_dir, args.records)
        return 0
    paths = sorted(args.npz_dir.glob("*.npz"))
    if not paths:
        print(f"no .npz files in {args.npz_dir}; convert the records first (see the module docstring)", file=sys.stderr)
        return 2
    records = [load(p) for p in paths]
    results = [r for rec in records for r in check_record(rec)]
    report(records, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
