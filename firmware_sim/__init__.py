"""Ambulance device simulator: protocol-v1 firmware with a dipole 12-lead ECG, vitals, GPS and an on-disk outbox.

async with Fleet([DeviceConfig("A12", password)], host, port, state_dir) as fleet:
    device = fleet.devices[0]
    async with device.offline():   # cut its network; it keeps generating into its outbox
        ...
    await device.drained(60)       # everything acknowledged by the center
    device.play("stemi_inferior", time_scale=100)   # on scene now, a clinical scenario runs (firmware_sim._scenario)

`DeviceConfig(..., scenarios=ScenarioMix(...))` plays a scenario at every arrival on scene; without it every patient
is a stable adult.
"""

from firmware_sim._check import ledger_problems
from firmware_sim._device import Device, DeviceConfig, DeviceError, Ledger, backoff_delay
from firmware_sim._ecg import DEFAULT_LSB_UV, EcgModel, EcgSynth
from firmware_sim._fleet import Fleet, run_fleet
from firmware_sim._outbox import DROP_ORDER, DropRange, Outbox, Pending, followed_delay, plan_drops, retransmit_after
from firmware_sim._route import Drive
from firmware_sim._scenario import (
    CRITICAL_SCENARIOS,
    DEMO_TIME_SCALE,
    SCENARIOS,
    CrewEvent,
    EcgChange,
    Patient,
    Scenario,
    ScenarioError,
    ScenarioMix,
    ScenarioRun,
    VitalsTarget,
    demo_mix,
    nearest_hospital,
)
from firmware_sim._vitals import VitalSigns, VitalsMonitor

__all__ = [
    "CRITICAL_SCENARIOS",
    "DEFAULT_LSB_UV",
    "DEMO_TIME_SCALE",
    "DROP_ORDER",
    "SCENARIOS",
    "CrewEvent",
    "Device",
    "DeviceConfig",
    "DeviceError",
    "Drive",
    "DropRange",
    "EcgChange",
    "EcgModel",
    "EcgSynth",
    "Fleet",
    "Ledger",
    "Outbox",
    "Patient",
    "Pending",
    "Scenario",
    "ScenarioError",
    "ScenarioMix",
    "ScenarioRun",
    "VitalSigns",
    "VitalsMonitor",
    "VitalsTarget",
    "backoff_delay",
    "demo_mix",
    "followed_delay",
    "ledger_problems",
    "nearest_hospital",
    "plan_drops",
    "retransmit_after",
    "run_fleet",
]
