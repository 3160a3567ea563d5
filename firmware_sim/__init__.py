"""Ambulance device simulator: protocol-v1 firmware with a dipole 12-lead ECG, vitals, GPS and an on-disk outbox.

async with Fleet([DeviceConfig("A12", password)], host, port, state_dir) as fleet:
    device = fleet.devices[0]
    async with device.offline():   # cut its network; it keeps generating into its outbox
        ...
    await device.drained(60)       # everything acknowledged by the center
"""

from firmware_sim._device import Device, DeviceConfig, DeviceError, Ledger, backoff_delay
from firmware_sim._ecg import DEFAULT_LSB_UV, EcgModel, EcgSynth
from firmware_sim._fleet import Fleet, run_fleet
from firmware_sim._outbox import DROP_ORDER, DropRange, Outbox, Pending, plan_drops
from firmware_sim._route import Drive
from firmware_sim._vitals import VitalSigns, VitalsMonitor

__all__ = [
    "DEFAULT_LSB_UV",
    "DROP_ORDER",
    "Device",
    "DeviceConfig",
    "DeviceError",
    "Drive",
    "DropRange",
    "EcgModel",
    "EcgSynth",
    "Fleet",
    "Ledger",
    "Outbox",
    "Pending",
    "VitalSigns",
    "VitalsMonitor",
    "backoff_delay",
    "plan_drops",
    "run_fleet",
]
