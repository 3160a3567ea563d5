"""The ledger check: what the center acknowledged to a device is exactly what the store holds for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emergency.protocol import Stream

if TYPE_CHECKING:
    from emergency.store import Store
    from firmware_sim._device import Device

TABLES = {Stream.ECG: "ecg_frames", Stream.VITALS: "vitals", Stream.GPS: "gps_fixes", Stream.EVENT: "device_events"}


async def ledger_problems(store: Store, device: Device) -> list[str]:
    """Everything wrong between a device's ledger and the store: a generated message not acknowledged as stored
    (lost), a message stored twice (doubled), a stored message the device never heard about, a rejection."""
    problems: list[str] = []
    for stream, table in TABLES.items():
        generated = {(stream.value, device.boot, seq) for seq in range(device.next_seq(stream))}
        acked = {key for key in device.ledger.acked_stored if key[0] == stream.value}
        if acked != generated:
            problems.append(
                f"{device.unit}/{stream.value}: {len(generated - acked)} generated but not acknowledged as stored, "
                f"{len(acked - generated)} acknowledged but never generated"
            )
        rows = await store.pool.fetch(f"SELECT boot, seq FROM {table} WHERE unit = $1", device.unit)
        stored = [(stream.value, r["boot"], r["seq"]) for r in rows]
        if len(stored) != len(set(stored)):
            problems.append(f"{device.unit}/{stream.value}: {len(stored) - len(set(stored))} stored twice")
        if set(stored) != acked:
            problems.append(
                f"{device.unit}/{stream.value}: {len(acked - set(stored))} acknowledged but not stored, "
                f"{len(set(stored) - acked)} stored but not acknowledged"
            )
    if device.ledger.rejected:
        problems.append(f"{device.unit}: {len(device.ledger.rejected)} rejected")
    return problems
