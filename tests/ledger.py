"""The ledger check shared by the end-to-end and fault tests: what devices were told is what the database holds."""

from __future__ import annotations

from emergency.protocol import Stream
from emergency.store import Store
from firmware_sim import Device, Fleet

TABLES = {Stream.ECG: "ecg_frames", Stream.VITALS: "vitals", Stream.GPS: "gps_fixes", Stream.EVENT: "device_events"}


async def settle(fleet: Fleet) -> None:
    """Stop generating and wait until every device's outbox is empty (all acknowledged)."""
    for device in fleet.devices:
        await device.stop_generating()
    for device in fleet.devices:
        await device.drained(within_s=90)


async def assert_ledger_matches_store(store: Store, device: Device) -> None:
    """Nothing lost (every generated seq acked and stored), nothing doubled, nothing extra."""
    for stream, table in TABLES.items():
        generated = {(stream.value, device.boot, seq) for seq in range(device.next_seq(stream))}
        acked = {key for key in device.ledger.acked_stored if key[0] == stream.value}
        assert acked == generated, f"{device.unit}/{stream.value}: acked differs from generated"
        rows = await store.pool.fetch(f"SELECT boot, seq FROM {table} WHERE unit = $1", device.unit)
        stored = [(stream.value, r["boot"], r["seq"]) for r in rows]
        assert len(stored) == len(set(stored)), f"{device.unit}/{stream.value}: a message is stored twice"
        assert set(stored) == acked, f"{device.unit}/{stream.value}: store differs from the acknowledged set"
    assert not device.ledger.rejected
