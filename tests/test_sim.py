"""The device simulator: a consistent 12-lead, the outbox's durability and drop policy, and its link behaviour."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from emergency.codec import decode_device_message, encode_device_message
from emergency.protocol import STANDARD_LEADS, EcgFrame, Stream
from firmware_sim import Device, DeviceConfig, DropRange, EcgModel, EcgSynth, Outbox, Pending, plan_drops
from firmware_sim._route import Drive, distance_m


def _leads(synth: EcgSynth, frames: int = 40) -> dict[str, np.ndarray]:
    data = np.hstack([synth.frame_counts(125) for _ in range(frames)]).astype(np.int64)
    return dict(zip(synth.leads, data, strict=True))


def test_limb_leads_obey_einthoven_and_goldberger() -> None:
    """III = II − I, aVR = −(I+II)/2, aVL = I − II/2 and aVF = II − I/2, each within one count."""
    x = _leads(EcgSynth(seed=4))
    assert np.array_equal(x["III"], x["II"] - x["I"])
    assert np.abs(x["aVR"] + (x["I"] + x["II"]) / 2).max() <= 1
    assert np.abs(x["aVL"] - (x["I"] - x["II"] / 2)).max() <= 1
    assert np.abs(x["aVF"] - (x["II"] - x["I"] / 2)).max() <= 1


@pytest.mark.parametrize("rate", [45, 72, 130])
def test_heart_rate_of_the_signal_matches_the_model(rate: int) -> None:
    """R peaks detected on lead II give the model's heart rate within 2 /min."""
    synth = EcgSynth(EcgModel(heart_rate_bpm=rate, rr_jitter=0.0), seed=1)
    ii = _leads(synth, frames=120)["II"] * synth.lsb_uv / 1000  # 30 s in mV
    above = ii > 0.6 * ii.max()
    onsets = np.flatnonzero(above[1:] & ~above[:-1])
    measured = 60 * synth.fs / np.diff(onsets).mean()
    assert abs(measured - rate) <= 2


def test_amplitudes_are_physiological() -> None:
    """QRS in II is 0.5–2.5 mV, V1 is predominantly negative and V6 positive (normal R progression)."""
    x = {k: v * 2.5 / 1000 for k, v in _leads(EcgSynth(seed=2)).items()}
    assert 0.5 < x["II"].max() - x["II"].min() < 2.5
    assert abs(x["V1"].min()) > x["V1"].max()
    assert x["V6"].max() > abs(x["V6"].min())


def test_inferior_st_elevation_shows_in_inferior_leads_with_reciprocal_change() -> None:
    """An inferior ST vector raises the ST segment in II, III, aVF and lowers it in aVL."""
    normal = _leads(EcgSynth(EcgModel(rr_jitter=0.0, noise_mv=0, wander_mv=0), seed=3), frames=8)
    stemi = _leads(
        EcgSynth(EcgModel(rr_jitter=0.0, noise_mv=0, wander_mv=0, st_vector_mv=(0, 0.25, 0)), seed=3), frames=8
    )
    diff = {lead: (stemi[lead] - normal[lead]).max() * 2.5 / 1000 for lead in ("II", "III", "aVF")}
    assert all(v > 0.1 for v in diff.values())
    assert (stemi["aVL"] - normal["aVL"]).min() * 2.5 / 1000 < -0.05


def test_frames_are_continuous_and_valid_protocol() -> None:
    """Consecutive frames join without a seam, and each encodes to a message the codec accepts."""
    model = EcgModel(noise_mv=0.0)
    synth = EcgSynth(model, seed=5)
    whole = EcgSynth(model, seed=5).frame_counts(250)
    a, b = synth.frame_counts(125), synth.frame_counts(125)
    assert np.array_equal(np.hstack([a, b]), whole)
    frame = EcgFrame("A1", 0, 0, 1_795_000_000_000_000, 500.0, STANDARD_LEADS, 2.5, 125, synth.frame_bytes(125))
    assert len(frame.data) == 2 * 12 * 125
    assert decode_device_message("ems/v1/A1/ecg", encode_device_message(frame)) == frame


def test_route_moves_at_road_speeds_and_cycles_status() -> None:
    """The GPS track never exceeds 25 m/s between fixes and the unit reaches the scene and a hospital."""
    drive = Drive.start(11)
    statuses, last = set(), drive.position
    for _ in range(4000):
        status = drive.step(1.0)
        statuses.add(status)
        assert distance_m(last, drive.position) <= 25.0
        last = drive.position
    assert {"en_route", "on_scene", "transporting", "at_destination"} <= {str(s) for s in statuses if s}


def test_drop_policy_gives_up_ecg_first_never_events() -> None:
    """A full outbox sheds the oldest ECG first, then GPS, then vitals, as contiguous ranges, never events."""
    oldest = {Stream.ECG: [(1, 0), (1, 1), (1, 2)], Stream.GPS: [(0, 9), (1, 0)], Stream.VITALS: [(1, 4)]}
    assert plan_drops(oldest, 2) == [DropRange(Stream.ECG, 1, 0, 1)]
    assert plan_drops(oldest, 5) == [
        DropRange(Stream.ECG, 1, 0, 2),
        DropRange(Stream.GPS, 0, 9, 9),
        DropRange(Stream.GPS, 1, 0, 0),
    ]
    assert plan_drops({Stream.EVENT: [(1, 0)]}, 1) == []  # type: ignore[dict-item]


def test_outbox_survives_reopen_and_settles_only_its_stream_and_boot(tmp_path: Path) -> None:
    """Rows persist across reopening; an ack removes only its (stream, boot) up to its seq."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.put(
        [Pending(Stream.ECG, 1, s, b"e") for s in range(5)]
        + [Pending(Stream.GPS, 1, 0, b"g"), Pending(Stream.ECG, 2, 0, b"x")]
    )
    box.close()
    box = Outbox(path)
    assert len(box) == 7
    assert box.settle(Stream.ECG, 1, 2) == [0, 1, 2]
    assert [(p.stream, p.boot, p.seq) for p in box.all_pending()] == [
        (Stream.ECG, 1, 3),
        (Stream.ECG, 1, 4),
        (Stream.ECG, 2, 0),
        (Stream.GPS, 1, 0),
    ]


def test_full_outbox_reports_what_it_gave_up(tmp_path: Path) -> None:
    """Past max_rows the outbox deletes per the policy and returns the ranges so the device can declare them."""
    box = Outbox(tmp_path / "o.sqlite3", max_rows=4)
    box.put([Pending(Stream.EVENT, 0, 0, b"ev")])
    drops = box.put([Pending(Stream.ECG, 0, s, b"e") for s in range(5)])
    assert drops == [DropRange(Stream.ECG, 0, 0, 1)]
    assert len(box) == 4


async def test_device_sends_in_order_replays_after_outage_and_counts_boots(
    tmp_path: Path, broker, gateway_endpoint, make_unit, postgres
) -> None:
    """A device's messages are acked after an outage with none missing, and its boot grows at each start."""
    from ambulance_gateway import Gateway
    from emergency.settings import GatewaySettings
    from emergency.store import Store

    unit, endpoint = await make_unit()
    config = DeviceConfig(unit, endpoint.password.get_secret_value())  # type: ignore[union-attr]
    async with (
        Store.open(postgres.dsn) as store,
        Gateway(GatewaySettings(http_port=0, client_id="gw-sim-test"), gateway_endpoint, store),
    ):
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await device.connected()
            first_boot = device.boot
            async with device.offline():
                await asyncio.sleep(2)
                assert device.pending() > 0
            await asyncio.sleep(1)
            await device.stop_generating()
            await device.drained(30)
            ecg = sorted(seq for stream, boot, seq in device.ledger.acked_stored if stream == "ecg")
            assert ecg == list(range(len(ecg))) and len(ecg) >= 8
            stored = await store.pool.fetchval("SELECT count(*) FROM ecg_frames WHERE unit = $1", unit)
            assert stored == len(ecg)
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            assert device.boot == first_boot + 1
