"""The device outbox: durable before publishing, shed by a fixed policy when full, settled only by matching acks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emergency.protocol import Ack, Stream
from firmware_sim import DropRange, Ledger, Outbox, Pending, followed_delay, plan_drops, retransmit_after

ROOT = Path(__file__).resolve().parent.parent


def rows(stream: Stream, boot: int, seqs: range | list[int]) -> list[Pending]:
    return [Pending(stream, boot, seq, f"{stream}-{boot}-{seq}".encode()) for seq in seqs]


def test_committed_rows_survive_reopening(tmp_path: Path) -> None:
    """Rows put and committed are all there, byte for byte, when the outbox is opened again."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.put(rows(Stream.ECG, 1, range(5)) + rows(Stream.EVENT, 1, range(2)) + rows(Stream.ECG, 0, [7]))
    box.close()
    box = Outbox(path)
    assert len(box) == 8
    assert [(p.stream, p.boot, p.seq, p.payload) for p in box.all_pending()] == [
        (Stream.ECG, 0, 7, b"ecg-0-7"),
        *((Stream.ECG, 1, s, f"ecg-1-{s}".encode()) for s in range(5)),
        *((Stream.EVENT, 1, s, f"event-1-{s}".encode()) for s in range(2)),
    ]
    box.close()


def test_committed_rows_survive_the_process_being_killed(tmp_path: Path) -> None:
    """A process killed (SIGKILL) right after put() leaves every row it put in the outbox."""
    path = tmp_path / "outbox.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from emergency.protocol import Stream
        from firmware_sim import Outbox, Pending
        box = Outbox(Path({str(path)!r}))
        for seq in range(50):
            box.put([Pending(Stream.ECG, 3, seq, b"x" * 3000)])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, check=False)
    assert done.returncode == -9
    box = Outbox(path)
    assert box.keys() == [("ecg", 3, seq) for seq in range(50)]
    box.close()


def test_a_repeated_key_keeps_the_original_payload_and_count(tmp_path: Path) -> None:
    """Putting a key already held changes neither its payload (retransmissions are byte-identical) nor the count."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.put([Pending(Stream.GPS, 0, 0, b"first")])
    box.put([Pending(Stream.GPS, 0, 0, b"second")])
    assert len(box) == 1
    assert box.all_pending()[0].payload == b"first"
    box.close()


def test_drop_policy_gives_up_ecg_then_gps_then_vitals_never_events() -> None:
    """plan_drops takes the oldest ECG first, then GPS, then vitals, and never an event, however much is asked."""
    oldest = {
        Stream.ECG: [(1, 0), (1, 1), (1, 2)],
        Stream.GPS: [(1, 0), (1, 1)],
        Stream.VITALS: [(1, 0)],
        Stream.EVENT: [(1, 0), (1, 1)],
    }
    assert plan_drops(oldest, 2) == [DropRange(Stream.ECG, 1, 0, 1)]
    assert plan_drops(oldest, 4) == [DropRange(Stream.ECG, 1, 0, 2), DropRange(Stream.GPS, 1, 0, 0)]
    assert plan_drops(oldest, 6) == [
        DropRange(Stream.ECG, 1, 0, 2),
        DropRange(Stream.GPS, 1, 0, 1),
        DropRange(Stream.VITALS, 1, 0, 0),
    ]
    everything = plan_drops(oldest, 100)
    assert Stream.EVENT not in {d.stream for d in everything}
    assert plan_drops({Stream.EVENT: [(0, 0)]}, 1) == []
    assert plan_drops(oldest, 0) == []


def test_drop_ranges_split_at_gaps_and_boots() -> None:
    """Each contiguous run of one (stream, boot) becomes one range; a gap or a new boot starts another."""
    oldest = {Stream.ECG: [(0, 8), (0, 9), (1, 0), (1, 1), (1, 5), (1, 6), (1, 7)]}
    assert plan_drops(oldest, 7) == [
        DropRange(Stream.ECG, 0, 8, 9),
        DropRange(Stream.ECG, 1, 0, 1),
        DropRange(Stream.ECG, 1, 5, 7),
    ]


def test_full_outbox_sheds_by_the_policy_and_reports_the_ranges(tmp_path: Path) -> None:
    """Past max_rows a put deletes the oldest ECG rows, returns their ranges, and keeps every event."""
    box = Outbox(tmp_path / "o.sqlite3", max_rows=6)
    box.put(rows(Stream.EVENT, 0, range(2)) + rows(Stream.GPS, 0, range(2)))
    assert box.put(rows(Stream.ECG, 0, range(2))) == []
    drops = box.put(rows(Stream.ECG, 0, range(2, 5)))
    assert drops == [DropRange(Stream.ECG, 0, 0, 2)]
    assert len(box) == 6
    # No ECG left to give up: GPS goes next, events stay.
    drops = box.put(rows(Stream.VITALS, 0, range(3)))
    assert drops == [DropRange(Stream.ECG, 0, 3, 4), DropRange(Stream.GPS, 0, 0, 0)]
    assert box.keys() == [
        ("event", 0, 0),
        ("event", 0, 1),
        ("gps", 0, 1),
        ("vitals", 0, 0),
        ("vitals", 0, 1),
        ("vitals", 0, 2),
    ]
    box.close()


def test_shed_margin_sheds_in_chunks_and_notices_do_not_shed(tmp_path: Path) -> None:
    """With a margin, a full outbox sheds down to max_rows − margin at once; rows put with shed=False never shed."""
    box = Outbox(tmp_path / "o.sqlite3", max_rows=10, shed_margin=4)
    box.put(rows(Stream.ECG, 2, range(10)))
    assert box.put(rows(Stream.ECG, 2, [10])) == [DropRange(Stream.ECG, 2, 0, 4)]
    assert len(box) == 6
    assert box.put(rows(Stream.ECG, 2, range(11, 15))) == []  # back at 10: full, not over
    assert box.put(rows(Stream.EVENT, 2, range(3)), shed=False) == []
    assert len(box) == 13
    with pytest.raises(ValueError):
        Outbox(tmp_path / "bad.sqlite3", max_rows=4, shed_margin=4)
    box.close()


def test_an_ack_settles_only_its_stream_and_boot_up_to_upto(tmp_path: Path) -> None:
    """settle(stream, boot, upto) removes exactly the rows of that stream and boot with seq ≤ upto."""
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.put(rows(Stream.ECG, 1, range(6)) + rows(Stream.ECG, 2, range(3)) + rows(Stream.GPS, 1, range(3)))
    assert box.settle(Stream.ECG, 1, 3) == [0, 1, 2, 3]
    assert box.settle(Stream.ECG, 1, 3) == []  # a repeated ack settles nothing more
    assert box.settle(Stream.VITALS, 1, 100) == []
    assert box.keys() == [
        ("ecg", 1, 4),
        ("ecg", 1, 5),
        ("ecg", 2, 0),
        ("ecg", 2, 1),
        ("ecg", 2, 2),
        ("gps", 1, 0),
        ("gps", 1, 1),
        ("gps", 1, 2),
    ]
    assert len(box) == 8
    box.close()
    assert len(Outbox(path)) == 8


def test_held_ranges_settle_the_rows_above_a_missing_one_and_only_it_is_resent(tmp_path: Path) -> None:
    """An ack naming ranges the center holds above a missing seq removes them too: what the device resends after
    the wait is the missing row alone, not everything above it."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.put(rows(Stream.ECG, 1, range(10)))
    box.mark_sent(rows(Stream.ECG, 1, range(10)))
    assert box.settle(Stream.ECG, 1, 2, held=((4, 6), (8, 8))) == [0, 1, 2, 4, 5, 6, 8]
    assert [p.seq for p in box.sent_before(0.0)] == [3, 7, 9]
    assert len(box) == 3
    box.close()


def test_unsent_lists_only_rows_never_published(tmp_path: Path) -> None:
    """After mark_sent, unsent() returns only the rows not yet published, in (stream, boot, seq) order."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.put(rows(Stream.VITALS, 0, range(4)) + rows(Stream.ECG, 0, range(2)))
    box.mark_sent(rows(Stream.VITALS, 0, [0, 2]))
    assert [(p.stream, p.seq) for p in box.unsent()] == [
        (Stream.ECG, 0),
        (Stream.ECG, 1),
        (Stream.VITALS, 1),
        (Stream.VITALS, 3),
    ]
    assert [(p.stream, p.seq) for p in box.unsent(after=("ecg", 0, 1))] == [(Stream.VITALS, 1), (Stream.VITALS, 3)]
    box.close()


def test_ledger_records_stored_and_rejected_and_reloads_from_its_lines(tmp_path: Path) -> None:
    """An ack's settled seqs split into stored and rejected; the JSON lines rebuild the same ledger."""
    ledger = Ledger()
    line = ledger.record_ack(Ack(4, Stream.ECG, 6, rejected=(3,)), [0, 1, 2, 3, 4, 6])
    assert line == {"stream": "ecg", "boot": 4, "upto": 6, "stored": [(0, 2), (4, 4), (6, 6)], "rejected": [3]}
    assert ledger.record_ack(Ack(4, Stream.ECG, 6), []) is None
    drop_line = ledger.record_drop(DropRange(Stream.ECG, 4, 7, 9))
    assert ledger.stored_seqs(Stream.ECG, 4) == [0, 1, 2, 4, 6]
    assert ledger.rejected == {("ecg", 4, 3)}
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps(drop_line) + "\n" + '{"stream": "ec')  # a torn last line
    reloaded = Ledger.load(path)
    assert reloaded.acked_stored == ledger.acked_stored
    assert reloaded.rejected == ledger.rejected
    assert reloaded.dropped == [DropRange(Stream.ECG, 4, 7, 9)]


def test_sent_before_lists_published_rows_still_unsettled_oldest_first(tmp_path: Path) -> None:
    """Rows published and not yet settled are due for retransmission, in the order they were published."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.put(rows(Stream.ECG, 0, range(4)) + rows(Stream.GPS, 0, range(2)))
    box.mark_sent(rows(Stream.GPS, 0, [1]) + rows(Stream.ECG, 0, [0, 1, 2]))
    box.settle(Stream.ECG, 0, 0)
    assert [(p.stream, p.seq) for p in box.sent_before(0.0)] == [(Stream.GPS, 1), (Stream.ECG, 1), (Stream.ECG, 2)]
    assert box.sent_before(3600.0) == []
    box.mark_sent(rows(Stream.GPS, 0, [1]))  # published again: now the most recent
    assert [(p.stream, p.seq) for p in box.sent_before(0.0, limit=2)] == [(Stream.ECG, 1), (Stream.ECG, 2)]
    box.close()


def test_a_late_ack_makes_the_device_wait_longer_before_it_resends(tmp_path: Path) -> None:
    """The outbox follows the center's ack delay (decision 51): from the publish of the newest row an ack settles
    to the ack. A longer delay counts at once, a shorter one by an eighth of the difference; a row is resent after
    twice that delay when it is longer than the base wait, so a center behind but alive is not sent everything twice."""
    assert followed_delay(10.0, 50.0) == 50.0
    assert followed_delay(50.0, 10.0) == 45.0
    assert retransmit_after(30.0, 5.0) == 30.0
    assert retransmit_after(30.0, 50.0) == 100.0
    box = Outbox(tmp_path / "o.sqlite3")
    box.put(rows(Stream.ECG, 0, range(3)))
    box.mark_sent(rows(Stream.ECG, 0, range(3)))
    time.sleep(0.05)
    box.settle(Stream.ECG, 0, 1)
    assert 0.05 <= box.ack_delay_s(Stream.ECG) < 30
    box.mark_sent(rows(Stream.ECG, 0, [2]))
    before = box.ack_delay_s(Stream.ECG)
    box.settle(Stream.ECG, 0, 2)  # at once: the delay falls, by an eighth of the difference
    assert before * 7 / 8 <= box.ack_delay_s(Stream.ECG) < before
    box.close()


def test_each_stream_waits_for_its_own_ack_delay_before_it_is_resent(tmp_path: Path) -> None:
    """The center commits vitals before the 12-lead (decision 48), so its quick vitals acks say nothing of how far
    behind the 12-lead is: the delay is followed per stream, and a stream's rows wait for their own."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.put(rows(Stream.ECG, 0, range(3)) + rows(Stream.VITALS, 0, range(3)))
    box.mark_sent(rows(Stream.ECG, 0, range(3)) + rows(Stream.VITALS, 0, range(3)))
    time.sleep(0.05)
    box.settle(Stream.ECG, 0, 0)
    assert box.ack_delay_s(Stream.ECG) >= 0.05 and box.ack_delay_s(Stream.VITALS) == 0.0
    stale = box.sent_before({Stream.ECG: 3600.0, Stream.VITALS: 0.0})
    assert [(p.stream, p.seq) for p in stale] == [(Stream.VITALS, 0), (Stream.VITALS, 1), (Stream.VITALS, 2)]
    box.close()
