"""Ambulance device simulator: protocol-v1 firmware with a dipole 12-lead ECG, vitals, GPS and an on-disk outbox."""

from firmware_sim._device import Device, DeviceConfig, Ledger
from firmware_sim._ecg import EcgModel, EcgSynth
from firmware_sim._fleet import Fleet, run_fleet
from firmware_sim._outbox import DropRange, Outbox, Pending, plan_drops
from firmware_sim._route import Drive

__all__ = [
    "Device",
    "DeviceConfig",
    "Drive",
    "DropRange",
    "EcgModel",
    "EcgSynth",
    "Fleet",
    "Ledger",
    "Outbox",
    "Pending",
    "plan_drops",
    "run_fleet",
]
