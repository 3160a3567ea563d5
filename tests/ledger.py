"""The ledger check shared by the end-to-end and fault tests: what devices were told is what the database holds."""

from __future__ import annotations

from emergency.store import Store
from firmware_sim import Device, Fleet, ledger_problems


async def settle(fleet: Fleet) -> None:
    """Stop generating and wait until every device's outbox is empty (all acknowledged)."""
    for device in fleet.devices:
        await device.stop_generating()
    for device in fleet.devices:
        await device.drained(within_s=90)


async def assert_ledger_matches_store(store: Store, device: Device) -> None:
    """Nothing lost (every generated seq acked and stored), nothing doubled, nothing extra."""
    problems = await ledger_problems(store, device)
    assert not problems, "; ".join(problems)
