"""Clinical scenarios in the simulator: events in order and protocol-exact, vitals that reach their targets and
trip the right scores, a 12-lead the analysis reads as intended, a capable destination, a device that plays them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from emergency.codec import decode_device_message, encode_device_message
from emergency.ecg import analyze
from emergency.mqtt import mqtt_client
from emergency.protocol import (
    DeviceEvent,
    DeviceMessage,
    EventKind,
    FindingCode,
    GpsFix,
    Stream,
    UnitStatus,
    Vitals,
    device_topic,
)
from emergency.scores import Consciousness, News2Inputs, news2, qsofa, shock_index
from emergency.settings import MqttEndpoint
from emergency.sites import DEMO_SITES
from firmware_sim import (
    CRITICAL_SCENARIOS,
    SCENARIOS,
    CrewEvent,
    Device,
    DeviceConfig,
    ScenarioError,
    ScenarioMix,
    ScenarioRun,
    VitalsMonitor,
    VitalsTarget,
    demo_mix,
    nearest_hospital,
)
from firmware_sim._scenario import DriftVitals, straight_line_m

TIME_SCALE = 50.0
# How far a shown value may sit from its baseline: the monitor's deviation bounds plus rounding to the digit shown.
DEVIATION_BOUND = {"hr": 8.5, "spo2": 2.9, "rr": 4.5, "temp": 0.5, "etco2": 6.5, "sbp": 15.5}


@contextlib.asynccontextmanager
async def offline_device(tmp_path: Path, config: DeviceConfig) -> AsyncIterator[Device]:
    """A running device with no broker to reach and its real-time generator stopped: the test drives its seconds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        async with Device(config, "127.0.0.1", port, tmp_path) as device:
            await device.stop_generating()
            yield device


@dataclass(slots=True)
class Call:
    """Every message of one played call, from the play request until the unit is available again."""

    messages: list[DeviceMessage]

    def events(self) -> list[DeviceEvent]:
        return [m for m in self.messages if isinstance(m, DeviceEvent)]

    def vitals(self) -> list[Vitals]:
        return [m for m in self.messages if isinstance(m, Vitals)]


def play_call(device: Device, name: str, time_scale: float = TIME_SCALE) -> Call:
    """Play `name` on an offline device until it is available after the transfer of care."""
    device.play(name, time_scale=time_scale)
    messages: list[DeviceMessage] = []
    handed_over = False
    for _ in range(20_000):
        second = device.fast_forward(1)
        messages += second
        for m in second:
            if isinstance(m, DeviceEvent):
                handed_over |= m.kind is EventKind.TRANSFER_OF_CARE
                if handed_over and m.kind is EventKind.STATUS and m.detail["status"] == UnitStatus.AVAILABLE:
                    return Call(messages)
    raise AssertionError(f"{name}: the call never ended")


def observations(call: Call) -> Iterator[tuple[Vitals, News2Inputs, float | None]]:
    """After patient contact, each vitals message with what the center would know then: the last cuff reading, the
    crew's ACVPU and oxygen; with the SBP used."""
    sbp: float | None = None
    consciousness: Consciousness | None = None
    on_oxygen: bool | None = None
    contact = False
    for m in call.messages:
        if isinstance(m, DeviceEvent):
            contact |= m.kind is EventKind.PATIENT_CONTACT
            if m.detail.get("code") == FindingCode.AVPU:
                consciousness = Consciousness(str(m.detail["text"]))
            if m.detail.get("code") == FindingCode.SUPPLEMENTAL_O2:
                on_oxygen = float(m.detail["value"]) > 0
        elif isinstance(m, Vitals) and contact:
            sbp = m.sbp if m.sbp is not None else sbp
            inputs = News2Inputs(
                respiration_rate=m.rr,
                spo2=m.spo2,
                on_oxygen=on_oxygen,
                systolic_bp=sbp,
                pulse=m.hr,
                consciousness=consciousness,
                temperature=m.temp,
            )
            yield m, inputs, sbp


def final_targets(name: str) -> dict[str, float]:
    targets: dict[str, float] = {}
    for step in SCENARIOS[name].timeline:
        if isinstance(step, VitalsTarget):
            targets.update(step.targets())
    return targets


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_a_played_scenario_sends_its_crew_events_in_order_and_they_decode(name: str, tmp_path: Path) -> None:
    """A played call goes on scene, makes patient contact with the patient's age and sex, records the timeline's crew
    events in order with their fields, transports to the chosen hospital, hands over there and becomes available;
    every event survives the codec unchanged."""
    scenario = SCENARIOS[name]
    async with offline_device(tmp_path, DeviceConfig(f"SC{len(name)}", "x")) as device:
        call = play_call(device, name)
        assert device.scenario_run is None
    events = call.events()
    for event in events:
        payload = encode_device_message(event)
        assert decode_device_message(device_topic(device.unit, Stream.EVENT), payload) == event
    statuses = [str(e.detail["status"]) for e in events if e.kind is EventKind.STATUS]
    assert statuses[-4:] == ["on_scene", "transporting", "at_destination", "available"]
    clinical = [e for e in events if e.kind is not EventKind.STATUS]
    contact, *timeline_events, handover = clinical
    assert (contact.kind, contact.detail) == (
        EventKind.PATIENT_CONTACT,
        {"age": scenario.patient.age, "sex": scenario.patient.sex},
    )
    planned = [step for step in scenario.timeline if isinstance(step, CrewEvent)]
    assert [(e.kind, e.detail["text"], e.detail.get("code")) for e in timeline_events] == [
        (step.kind, step.text, step.code) for step in planned
    ]
    for event, step in zip(timeline_events, planned, strict=True):
        expected = step.detail(contact.ts)
        if "at" in expected:  # history before contact: on the device clock, not scaled
            assert abs(int(event.detail["at"]) - int(expected["at"])) < 1_000_000
            expected["at"] = event.detail["at"]
        assert event.detail == expected
    hospital = nearest_hospital(_scene_of(call), scenario.capability)
    assert (handover.kind, handover.detail) == (EventKind.TRANSFER_OF_CARE, {"to": hospital.name})
    assert events.index(handover) > statuses_index(events, "at_destination")
    assert statuses_index(events, "transporting") > events.index(contact)


def statuses_index(events: list[DeviceEvent], status: str) -> int:
    return max(i for i, e in enumerate(events) if e.kind is EventKind.STATUS and e.detail["status"] == status)


def _scene_of(call: Call) -> tuple[float, float]:
    """Where the unit was at patient contact: the GPS fix of that second."""
    contact = next(
        i for i, m in enumerate(call.messages) if isinstance(m, DeviceEvent) and m.kind is EventKind.PATIENT_CONTACT
    )
    fix = next(m for m in call.messages[contact:] if isinstance(m, GpsFix))
    return fix.lat, fix.lon


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_the_unit_transports_to_the_nearest_hospital_with_the_needed_capability(
    name: str, tmp_path: Path
) -> None:
    """The destination has the scenario's capability, no capable hospital is nearer the scene, and the unit's GPS
    ends the transport inside that hospital's geofence."""
    scenario = SCENARIOS[name]
    async with offline_device(tmp_path, DeviceConfig(f"DS{len(name)}", "x")) as device:
        device.play(name, time_scale=TIME_SCALE)
        device.fast_forward(1)
        run = device.scenario_run
        assert run is not None
        destination, scene = run.destination, device.drive.position
        assert scenario.capability in destination.capabilities
        for hospital in DEMO_SITES.with_capability(scenario.capability):
            assert straight_line_m(scene, destination.position) <= straight_line_m(scene, hospital.position)
        for _ in range(20_000):
            if device.drive.status is UnitStatus.AT_DESTINATION:
                break
            device.fast_forward(1)
        assert straight_line_m(device.drive.position, destination.position) <= destination.geofence_m


def test_nearest_hospital_depends_on_the_scene() -> None:
    """A PCI patient near Kamppi goes there, one near Esplanadi goes to Esplanadi; a thrombectomy patient goes to a
    thrombectomy centre even when a stroke unit is nearer."""
    zs, rj, nh = (DEMO_SITES.hospital(code) for code in ("KAM", "ESP", "BUL"))
    assert nearest_hospital(zs.position, SCENARIOS["stemi_inferior"].capability).code == "KAM"
    assert nearest_hospital(rj.position, SCENARIOS["stemi_anterior"].capability).code == "ESP"
    assert nearest_hospital(nh.position, SCENARIOS["stroke_lvo"].capability).code != "BUL"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_vitals_reach_their_targets(name: str) -> None:
    """Once every ramp of the timeline has run, each baseline is its last target and every shown value stays within
    the monitor's deviation of it, the cuff's systolic included."""
    scenario = SCENARIOS[name]
    run = ScenarioRun(scenario, contact_us=0, scene=DEMO_SITES.hospital("ESP").position, time_scale=TIME_SCALE)
    monitor = VitalsMonitor(seed=len(name), nibp_interval_s=run.nibp_interval_s)
    cues = run.start()
    ramps_end_s = 0.0
    shown: list[dict[str, float | None]] = []
    for second in range(600):
        for cue in cues:
            if isinstance(cue, DriftVitals):
                monitor.drift_to(cue.targets, cue.over_s)
                ramps_end_s = max(ramps_end_s, second + cue.over_s)
        signs = monitor.second(second * 1_000_000)
        if second > ramps_end_s + 1:
            shown.append({name: getattr(signs, name) for name in DEVIATION_BOUND})
        cues = run.advance(1.0, UnitStatus.ON_SCENE if second < 300 else UnitStatus.TRANSPORTING)
    targets = final_targets(name)
    assert len(shown) > 100
    for sign, target in targets.items():
        assert monitor.baseline(sign) == target, sign
        if sign in DEVIATION_BOUND:
            values = [s[sign] for s in shown if s[sign] is not None]
            assert values and all(abs(v - target) <= DEVIATION_BOUND[sign] for v in values), (sign, target, values)


async def test_haemorrhagic_shock_index_rises_past_one(tmp_path: Path) -> None:
    """In the shock scenario HR rises from about 110 and the cuff's SBP falls from about 110, so the shock index
    starts near 1 and every reading once the bleeding has run its course is above 1."""
    async with offline_device(tmp_path, DeviceConfig("SHOCK1", "x")) as device:
        call = play_call(device, "trauma_haemorrhagic_shock")
    # Observations come one a second from contact, so an observation's index is its second of the call.
    cuffed = [(second, shock_index(v.hr, v.sbp)) for second, (v, _, _) in enumerate(observations(call)) if v.sbp]
    bleeding_s = 900 / TIME_SCALE
    first = cuffed[0][1].value
    assert cuffed[0][0] == 0 and first is not None and 0.8 < first < 1.25
    settled = [si for second, si in cuffed if second > bleeding_s]
    assert len(settled) > 3 and all(si.shock_index_alert for si in settled)


async def test_sepsis_scores_news2_high_and_qsofa_positive(tmp_path: Path) -> None:
    """Once the crew has recorded confusion and oxygen, every sepsis observation scores NEWS2 ≥ 7 (high risk) and
    qSOFA ≥ 2."""
    async with offline_device(tmp_path, DeviceConfig("SEPSIS1", "x")) as device:
        call = play_call(device, "sepsis")
    scored = [
        (inputs, sbp) for v, inputs, sbp in observations(call) if inputs.consciousness and inputs.on_oxygen is not None
    ]
    assert len(scored) > 30
    for inputs, sbp in scored:
        assert news2(inputs).total >= 7
        assert news2(inputs).complete
        assert qsofa(
            respiratory_rate=inputs.respiration_rate, systolic_bp=sbp, consciousness=inputs.consciousness
        ).positive


async def test_routine_transport_scores_news2_zero(tmp_path: Path) -> None:
    """Every observation of the routine ankle fracture, once complete, scores NEWS2 0 and raises no shock index."""
    async with offline_device(tmp_path, DeviceConfig("ROUTINE1", "x")) as device:
        call = play_call(device, "routine_ankle_fracture")
    complete = [(v, inputs) for v, inputs, _ in observations(call) if news2(inputs).complete]
    assert len(complete) > 30
    for v, inputs in complete:
        assert news2(inputs).total == 0, inputs
        assert not shock_index(v.hr, inputs.systolic_bp).shock_index_alert


@pytest.mark.parametrize(
    ("name", "territory"),
    [
        ("stemi_inferior", "inferior"),
        ("stemi_anterior", "anteroseptal"),
        ("routine_ankle_fracture", None),
        ("sepsis", None),
        ("trauma_haemorrhagic_shock", None),
        ("stroke_lvo", None),
    ],
)
async def test_the_device_12_lead_is_read_as_the_scenario_intends(
    name: str, territory: str | None, tmp_path: Path
) -> None:
    """Ten seconds of the device's own 12-lead after contact: `emergency.ecg.analyze` calls STEMI with the intended
    territory for the STEMI scenarios and no STEMI for the others, at the scenario's heart rate."""
    patient = SCENARIOS[name].patient
    async with offline_device(tmp_path, DeviceConfig(f"ECG{len(name)}", "x")) as device:
        device.play(name, time_scale=TIME_SCALE)
        device.fast_forward(3)
        counts = np.hstack([device.ecg.frame_counts(125) for _ in range(40)]).astype(float) * device.ecg.lsb_uv / 1000
        monitor_hr = device.monitor.heart_rate()
    findings = analyze(dict(zip(device.ecg.leads, counts, strict=True)), 500.0, sex=patient.sex, age=patient.age)
    assert findings.stemi is (territory is not None), findings.reasons
    assert findings.stemi_territory == territory
    assert abs(findings.heart_rate_bpm - monitor_hr) <= 4


async def test_after_a_call_the_patient_is_a_stable_adult_again(tmp_path: Path) -> None:
    """When the unit is available again the ST shift is gone, the heart rate is the configured one and the cuff
    cycles at its usual interval."""
    config = DeviceConfig("STABLE1", "x")
    async with offline_device(tmp_path, config) as device:
        play_call(device, "stemi_inferior")
        assert device.ecg.model.st_vector_mv == (0.0, 0.0, 0.0)
        assert device.monitor.hr_baseline == config.ecg_model.heart_rate_bpm
        assert device.monitor.nibp_interval_s == 180.0


async def test_a_device_with_a_mix_plays_a_scenario_at_every_arrival_on_scene(tmp_path: Path) -> None:
    """With a scenario mix and no test hook, each natural arrival on scene makes contact with the next scenario's
    patient (the mix's first one first) and ends with a transfer of care."""
    mix = ScenarioMix((("routine_ankle_fracture", 1.0),), time_scale=TIME_SCALE, first="sepsis")
    async with offline_device(tmp_path, DeviceConfig("MIX1", "x", scenarios=mix)) as device:
        events: list[DeviceEvent] = []
        while sum(e.kind is EventKind.TRANSFER_OF_CARE for e in events) < 2:
            events += [m for m in device.fast_forward(60) if isinstance(m, DeviceEvent)]
            assert len(events) < 1000
    contacts = [e.detail for e in events if e.kind is EventKind.PATIENT_CONTACT]
    sepsis, routine = SCENARIOS["sepsis"].patient, SCENARIOS["routine_ankle_fracture"].patient
    assert contacts[:2] == [{"age": sepsis.age, "sex": sepsis.sex}, {"age": routine.age, "sex": routine.sex}]


def test_a_mix_picks_by_weight_and_reproducibly() -> None:
    """The same seed picks the same calls; the heavier scenario is picked most; every weighted one appears; the
    demo's first five units start with one of each critical scenario."""
    mix = ScenarioMix((("routine_ankle_fracture", 5.0), ("sepsis", 1.0), ("stroke_lvo", 1.0)))
    first = [mix.pick(random.Random(7), call).name for call in range(1, 200)]
    again = [mix.pick(random.Random(7), call).name for call in range(1, 200)]
    assert first == again
    rng = random.Random(8)
    picks = [mix.pick(rng, call).name for call in range(1, 1000)]
    assert max(set(picks), key=picks.count) == "routine_ankle_fracture"
    assert set(picks) == {"routine_ankle_fracture", "sepsis", "stroke_lvo"}
    assert [demo_mix(i).pick(random.Random(i), 0).name for i in range(5)] == list(CRITICAL_SCENARIOS)
    assert set(CRITICAL_SCENARIOS) | {"routine_ankle_fracture"} == set(SCENARIOS)


def test_unknown_scenarios_and_bad_mixes_are_refused() -> None:
    """An unknown name, a weight of zero or a time scale of zero is a ScenarioError, not a surprise mid-demo."""
    with pytest.raises(ScenarioError):
        ScenarioMix((("no_such_call", 1.0),))
    with pytest.raises(ScenarioError):
        ScenarioMix((("sepsis", 0.0),))
    with pytest.raises(ScenarioError):
        ScenarioMix((("sepsis", 1.0),), time_scale=0)


async def test_a_device_playing_a_scenario_publishes_its_events_and_they_decode(
    make_unit: Callable[[], Awaitable[tuple[str, MqttEndpoint]]], gateway_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    """Through a real broker, a device told to play the inferior STEMI publishes on-scene, patient contact and every
    on-scene crew event of the timeline in order, each valid for the codec, then leaves the scene."""
    unit, endpoint = await make_unit()
    scenario = SCENARIOS["stemi_inferior"]
    planned = [step.text for step in scenario.timeline if isinstance(step, CrewEvent)]
    received: list[DeviceEvent] = []
    async with mqtt_client(gateway_endpoint, identifier=f"scenario-center-{unit}") as center:
        await center.subscribe(device_topic(unit, Stream.EVENT), qos=1)
        config = DeviceConfig(unit, endpoint.password.get_secret_value(), backoff_base_s=0.05, backoff_cap_s=0.5)
        async with Device(config, endpoint.host, endpoint.port, tmp_path) as device:
            await device.connected()
            device.play("stemi_inferior", time_scale=300)
            async with asyncio.timeout(60):
                async for message in center.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    event = decode_device_message(str(message.topic), payload)
                    assert isinstance(event, DeviceEvent)
                    received.append(event)
                    if event.kind is EventKind.STATUS and event.detail["status"] == UnitStatus.TRANSPORTING:
                        break
    kinds = [(e.kind, e.detail.get("status")) for e in received]
    on_scene = kinds.index((EventKind.STATUS, UnitStatus.ON_SCENE))
    assert received[on_scene + 1].kind is EventKind.PATIENT_CONTACT
    assert received[on_scene + 1].detail == {"age": 64, "sex": "male"}
    crew_kinds = (EventKind.CHIEF_COMPLAINT, EventKind.FINDING, EventKind.TREATMENT)
    assert [str(e.detail["text"]) for e in received if e.kind in crew_kinds] == planned
    assert [e.seq for e in received] == sorted(e.seq for e in received)
