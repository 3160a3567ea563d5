"""The clinical loop on the real stack: device messages through mosquitto and the gateway → pre-registration,
alerts, activation, door time on the bus and in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import aiomqtt
import numpy as np
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from ambulance_gateway import Gateway
from emergency.bus import CARE_FILTER, CareKind, care_topic, parse_care_topic
from emergency.care._loop import ClinicalLoop
from emergency.care._model import Activation, Alert, AlertKind, AlertState, Encounter, Incident, Team
from emergency.care._wire import CareRecord, decode_record, encode_record
from emergency.mqtt import mqtt_client
from emergency.protocol import DeviceEvent, EcgFrame, EventKind, GpsFix, Stream, Vitals
from emergency.settings import CareSettings, MqttEndpoint
from emergency.sites import DEMO_SITES, Capability
from emergency.store import LinkEvent, Store
from emergency.store._care import CareStore
from firmware_sim import EcgModel, EcgSynth
from tests.test_gateway import TestDevice, _gateway_settings, connected_device

S = 1_000_000
CARE = CareSettings(ecg_window_s=5.0, ecg_interval_s=1.0, repeat_after_s=600)


def now_us() -> int:
    return time.time_ns() // 1000


@pytest_asyncio.fixture(loop_scope="session")
async def store(postgres) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    async with Store.open(postgres.dsn) as store:
        yield store


class BusWatcher:
    """Every care record published on the bus, as a console sees them."""

    def __init__(self) -> None:
        self.records: list[CareRecord] = []
        self.changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def following(self, client: aiomqtt.Client) -> AsyncIterator[None]:
        """Collect every care record `client` (a console-account connection) receives while the block runs."""
        await client.subscribe(CARE_FILTER, qos=1)

        async def watch() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.records.append(decode_record(parse_care_topic(message.topic.value), message.payload))
                self.changed.set()

        task = asyncio.create_task(watch(), name="test.care-watch")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[CareRecord], bool], within_s: float = 30) -> CareRecord:
        async with asyncio.timeout(within_s):
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def care_stack(
    store: Store, gateway_endpoint: MqttEndpoint, console_endpoint: MqttEndpoint
) -> AsyncIterator[tuple[ClinicalLoop, BusWatcher, aiomqtt.Client]]:
    watcher = BusWatcher()
    async with (
        mqtt_client(console_endpoint, identifier=f"test-console-{time.monotonic_ns()}") as console,
        ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop),
        watcher.following(console),
    ):
        await asyncio.wait_for(loop.bus_ready.wait(), 10)
        yield loop, watcher, console


class Crew:
    """Sends a unit's messages with consecutive seqs per stream."""

    def __init__(self, device: TestDevice) -> None:
        self.device = device
        self.seqs: dict[str, int] = {}

    def seq(self, stream: str) -> int:
        self.seqs[stream] = self.seqs.get(stream, -1) + 1
        return self.seqs[stream]

    async def event(self, kind: EventKind, ts: int | None = None, **detail: str | int | float | bool) -> None:
        u = self.device.unit
        await self.device.send(DeviceEvent(u, 1, self.seq("event"), ts or now_us(), kind, detail))

    async def vitals(self, ts: int | None = None, **values: float) -> None:
        await self.device.send(Vitals(self.device.unit, 1, self.seq("vitals"), ts or now_us(), **values))  # type: ignore[arg-type]

    async def fix(self, lat: float, lon: float, ts: int | None = None) -> None:
        await self.device.send(GpsFix(self.device.unit, 1, self.seq("gps"), ts or now_us(), lat, lon, 10.0, 0.0, 3.0))

    async def ecg(self, model: EcgModel, seconds: float) -> None:
        synth = EcgSynth(model, seed=3)
        n = 125
        frames = round(seconds * 500 / n)
        start = now_us()
        for k in range(frames):
            data = np.ascontiguousarray(synth.frame_counts(n)).astype("<i2").tobytes()
            ts = start + k * n * S // 500
            frame = EcgFrame(self.device.unit, 1, self.seq("ecg"), ts, 500.0, synth.leads, synth.lsb_uv, n, data)
            await self.device.send(frame)


def _of(record_type: type, **match: object) -> Callable[[CareRecord], bool]:
    return lambda r: isinstance(r, record_type) and all(getattr(r, k) == v for k, v in match.items())


async def test_stemi_patient_is_pre_registered_alerted_activated_and_arrives(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """Patient contact pre-registers an encounter with a readable alias; an inferior STEMI on the 12-lead raises one
    critical alert, re-routes to a PCI centre and activates the cath lab; an acknowledgement made at a console
    reaches the loop; entering the destination's geofence sets the door time; all of it is in the store."""
    unit, endpoint = await make_unit()
    scene = (DEMO_SITES.bases[0].lat, DEMO_SITES.bases[0].lon)
    async with care_stack(store, gateway_endpoint, console_endpoint) as (loop, watcher, console):
        async with connected_device(unit, endpoint) as device:
            crew = Crew(device)
            await crew.event(EventKind.STATUS, status="on_scene")
            await crew.fix(*scene)
            await crew.event(EventKind.PATIENT_CONTACT, age=64, sex="male")
            encounter = await watcher.wait_for(_of(Encounter, unit=unit))
            assert isinstance(encounter, Encounter) and len(encounter.alias.split()) == 3
            await crew.event(EventKind.CHIEF_COMPLAINT, text="central chest pain")
            await crew.vitals(hr=88.0, sbp=135.0, spo2=96.0, rr=18.0, temp=36.7)
            await crew.ecg(EcgModel(heart_rate_bpm=88, st_vector_mv=(0.0, 0.25, 0.0)), seconds=8)

            stemi = await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.STEMI))
            assert isinstance(stemi, Alert) and "inferior" in stemi.summary and stemi.encounter_id == encounter.id
            activation = await watcher.wait_for(_of(Activation, encounter_id=encounter.id))
            assert isinstance(activation, Activation) and activation.team is Team.CATH_LAB
            routed = await watcher.wait_for(
                lambda r: isinstance(r, Encounter) and r.id == encounter.id and r.destination is not None
                and Capability.PCI in DEMO_SITES.hospital(r.destination).capabilities
            )  # fmt: skip
            assert isinstance(routed, Encounter)

            await loop.settled()
            records = CareStore(store)
            acked = await records.acknowledge_alert(stemi.id, at=now_us(), by="dr.house", role="ed_physician")
            await console.publish(care_topic(CareKind.ALERT, unit), encode_record(acked), qos=1)
            for _ in range(200):
                mine = loop.book.open_alert(unit, AlertKind.STEMI)
                if mine is not None and mine.state is AlertState.ACKNOWLEDGED:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the acknowledgement never reached the clinical loop")

            hospital = DEMO_SITES.hospital(routed.destination or "")
            await crew.event(EventKind.STATUS, status="transporting")
            await crew.fix(hospital.lat + 0.01, hospital.lon)
            await watcher.wait_for(lambda r: isinstance(r, Encounter) and r.id == encounter.id and r.eta_at is not None)
            await crew.fix(hospital.lat, hospital.lon)
            arrived = await watcher.wait_for(
                lambda r: isinstance(r, Encounter) and r.id == encounter.id and r.door_at is not None
            )
            assert isinstance(arrived, Encounter) and arrived.status.value == "arrived"
            await crew.event(EventKind.TRANSFER_OF_CARE, to="ED resus 2")
            await watcher.wait_for(
                lambda r: isinstance(r, Encounter) and r.id == encounter.id and r.status.value == "in_hospital"
            )
            await loop.settled()

        stored = await records.encounter(encounter.id)
        assert stored.alias == encounter.alias and stored.destination == routed.destination
        assert stored.door_at is not None and stored.chief_complaint == "central chest pain"
        names = {t.name for t in stored.times}
        assert {"first_ecg", "ecg_transmitted", "stemi_diagnosis", "cath_lab_activated", "door"} <= names
        incident = await records.incident(stored.incident_id)
        assert {"on_scene", "at_patient", "left_scene", "at_destination", "transfer_of_care"} <= {
            t.name for t in incident.times
        }
        alerts = await records.alerts(open_only=False, encounter_id=encounter.id)
        stemis = [a for a in alerts if a.kind is AlertKind.STEMI]
        assert len(stemis) == 1 and stemis[0].acknowledged_by == "dr.house" and stemis[0].state is AlertState.RESOLVED
        assert [a.team for a in await records.activations(encounter.id)] == [Team.CATH_LAB]


async def test_a_care_writer_held_by_the_store_shows_on_the_gateways_metrics(
    store, gateway_endpoint, make_unit
) -> None:
    """While the store keeps the clinical loop's writer waiting, what it holds shows on the gateway's /metrics
    (`emergency_gateway_observer_queued`), and goes back to nothing once the store lets it through."""
    unit, endpoint = await make_unit()

    async def queued(gateway: Gateway) -> float:
        async with aiohttp.ClientSession() as http, http.get(gateway.metrics_url) as response:
            text = await response.text()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "emergency_gateway_observer_queued"
            for sample in family.samples
            if sample.labels == {"queue": "care_writes"}
        )

    async with (
        ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop) as gateway,
        connected_device(unit, endpoint) as device,
        store.pool.acquire() as blocker,
    ):
        assert await queued(gateway) == 0
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE")
        await Crew(device).event(EventKind.PATIENT_CONTACT, age=70)
        for _ in range(200):
            if await queued(gateway) > 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the held write never showed on /metrics")
        await held.rollback()
        await loop.settled()
        assert await queued(gateway) == 0


async def test_backlog_after_an_outage_is_recorded_but_not_alerted_as_live(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """Shock-range vitals that arrive ten minutes late raise only a backlog alert; the same reading live raises a
    live one."""
    unit, endpoint = await make_unit()
    async with care_stack(store, gateway_endpoint, console_endpoint) as (_, watcher, _):
        async with connected_device(unit, endpoint) as device:
            crew = Crew(device)
            await crew.event(EventKind.PATIENT_CONTACT)
            await crew.vitals(now_us() - 600 * S, hr=140.0, sbp=75.0, spo2=97.0, rr=16.0, temp=36.8)
            late = await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.SHOCK_INDEX))
            assert isinstance(late, Alert) and late.backlog
            await crew.vitals(hr=140.0, sbp=75.0, spo2=97.0, rr=16.0, temp=36.8)
            live = await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.SHOCK_INDEX, backlog=False))
            assert isinstance(live, Alert) and live.id == late.id and live.state is AlertState.RAISED


async def test_telemetry_lost_during_an_encounter_alerts_and_clears_on_resumption(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """A unit with a patient that falls silent raises "telemetry lost"; its next message resolves it."""
    unit, endpoint = await make_unit()
    async with care_stack(store, gateway_endpoint, console_endpoint) as (_, watcher, _):
        async with connected_device(unit, endpoint) as device:
            crew = Crew(device)
            await crew.event(EventKind.PATIENT_CONTACT)
            await watcher.wait_for(_of(Encounter, unit=unit))
            lost = await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.TELEMETRY_LOST))
            await crew.vitals(hr=80.0)
            await watcher.wait_for(_of(Alert, id=lost.id, state=AlertState.RESOLVED))


async def test_dispatcher_incident_is_taken_up_by_the_assigned_units_patient_contact(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """An incident created and assigned at the console (published on the bus) is the one the unit's patient
    contact attaches its encounter to, with the call time kept."""
    unit, endpoint = await make_unit()
    records = CareStore(store)
    async with care_stack(store, gateway_endpoint, console_endpoint) as (_, watcher, console):
        from emergency.care._model import Priority

        call = now_us() - 120 * S
        incident = await records.create_incident(
            call_received_at=call, priority=Priority.IMMEDIATE, complaint="collapse", lat=None, lon=None,
            address="Main St 1", created_by="disp1",
        )  # fmt: skip
        incident = await records.assign_unit(incident.id, unit, at=now_us(), by="disp1")
        await console.publish(care_topic(CareKind.INCIDENT, incident.id), encode_record(incident), qos=1)
        await asyncio.sleep(0.5)
        async with connected_device(unit, endpoint) as device:
            await Crew(device).event(EventKind.PATIENT_CONTACT)
            encounter = await watcher.wait_for(_of(Encounter, unit=unit))
            assert isinstance(encounter, Encounter) and encounter.incident_id == incident.id
            timed = await watcher.wait_for(
                lambda r: (
                    isinstance(r, Incident) and r.id == incident.id and any(t.name == "at_patient" for t in r.times)
                )
            )
            assert isinstance(timed, Incident) and timed.call_received_at == call


async def test_a_device_clock_ten_minutes_slow_is_flagged_and_its_data_stored_once(
    store, gateway_endpoint, console_endpoint, make_unit
) -> None:
    """A device whose clock runs ten minutes behind is recorded as clock skew once its offset holds steady; its
    messages, resent, are stored once; after that its readings count as live."""
    unit, endpoint = await make_unit()
    watcher = BusWatcher()
    quick = CARE.model_copy(update={"skew_settle_s": 2.0})
    async with (
        mqtt_client(console_endpoint, identifier=f"test-console-{time.monotonic_ns()}") as console,
        ClinicalLoop(quick, gateway_endpoint, store, DEMO_SITES) as loop,
        Gateway(_gateway_settings(), gateway_endpoint, store, observer=loop),
        connected_device(unit, endpoint) as device,
        watcher.following(console),
    ):
        crew = Crew(device)
        await crew.event(EventKind.PATIENT_CONTACT, now_us() - 600 * S)
        sent = []
        for _ in range(8):
            ts = now_us() - 600 * S
            sent.append(ts)
            await crew.vitals(ts, hr=140.0, sbp=75.0, spo2=97.0, rr=16.0, temp=36.8)
            await asyncio.sleep(0.5)
        live = await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.SHOCK_INDEX, backlog=False))
        assert isinstance(live, Alert)
        first = Vitals(unit, 1, 0, sent[0], hr=140.0, sbp=75.0, spo2=97.0, rr=16.0, temp=36.8)
        await device.send(first)  # a retransmission of the first reading
        await device.ack_covering(first.stream, 1, len(sent) - 1)
        await loop.settled()
    skews = await store.pool.fetch("SELECT detail FROM link_events WHERE unit = $1 AND kind = 'clock_skew'", unit)
    assert len(skews) == 1 and round(json.loads(skews[0]["detail"])["offset_s"] / 60) == -10
    assert await store.pool.fetchval("SELECT count(*) FROM vitals WHERE unit = $1", unit) == len(sent)


async def test_alert_ids_are_refilled_even_while_writes_are_stuck(store, gateway_endpoint) -> None:  # type: ignore[no-untyped-def]
    """Reserving ids for new alerts does not wait behind queued record writes (a burst of contacts after a mass
    casualty must not hold the next alert back)."""
    async with ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop:
        stuck = asyncio.Event()
        loop._write("stuck", stuck.wait)  # a write that will not finish until released
        loop._ids["alerts"].clear()
        assert loop._take_id("alerts") is None
        for _ in range(200):
            if loop._ids["alerts"]:
                break
            await asyncio.sleep(0.05)
        assert loop._take_id("alerts") is not None
        stuck.set()


async def test_a_burst_of_alerts_larger_than_the_id_block_loses_none(store, gateway_endpoint) -> None:  # type: ignore[no-untyped-def]
    """A burst of alerts raised at once (here a seq gap on 300 units, as when a center backlog leaves every stream
    with a gap) outruns the alert ids reserved ahead; the alerts are held until more are reserved, then published
    and stored, each with an id of its own."""
    units = [f"BURST{i:03d}" for i in range(300)]
    async with ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop:
        at = now_us()
        for unit in units:
            loop.observe_link(
                LinkEvent(at=at, unit=unit, kind="seq_gap", stream=Stream.VITALS, boot=1, first_seq=5, last_seq=9)
            )
        for _ in range(600):
            if not loop._held_alerts and all(a.id for a in loop.book):
                break
            await asyncio.sleep(0.05)
        await loop.settled()
        alerts = [a for a in loop.book if a.unit in units]
        stored = [a for a in await CareStore(store).alerts(open_only=True) if a.unit in units]
    assert len(alerts) == len(units) and len({a.id for a in alerts}) == len(units)
    assert sorted(a.unit for a in stored) == units


async def test_an_alert_is_on_the_wire_before_the_step_that_raised_it_ends(  # type: ignore[no-untyped-def]
    store, gateway_endpoint, console_endpoint
) -> None:
    """An alert's snapshot is written to the broker's socket inside the gateway's call that raised it, not after
    the rest of the ingest batch and the publisher's next turn (issue 3's latency); the console receives it."""
    async with care_stack(store, gateway_endpoint, console_endpoint) as (loop, watcher, _):
        unit = f"EAGER{time.monotonic_ns() % 10**8}"
        loop.observe_link(
            LinkEvent(at=now_us(), unit=unit, kind="seq_gap", stream=Stream.VITALS, boot=1, first_seq=5, last_seq=9)
        )
        # No await since: the loop has not run the publisher, nor the link's end-of-iteration flush.
        alert = next(a for a in loop.book if a.unit == unit)
        assert f"{CareKind.ALERT.value}:{alert.id}" in loop._in_flight
        assert loop._bus_link is not None and not loop._bus_link._out, "written to the socket, not left queued"
        await watcher.wait_for(_of(Alert, unit=unit, kind=AlertKind.SEQ_GAP))
        await loop.settled()
        assert not loop._in_flight


async def test_a_frame_taken_before_the_handover_is_not_analysed_as_the_next_patients(  # type: ignore[no-untyped-def]
    store, gateway_endpoint
) -> None:
    """The gateway observes a read's 12-lead frames after its events (decision 31), so a frame taken before the
    transfer of care can be observed after it: it is stored, but never joins the 12-lead analysed for the unit's
    next patient."""
    unit = f"HANDOVER{time.monotonic_ns() % 10**8}"
    t0 = now_us()

    def frame(seq: int, ts: int) -> EcgFrame:
        return EcgFrame(unit, 1, seq, ts, 500.0, ("I", "II"), 2.5, 125, bytes(500))

    async with ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES) as loop:
        loop.observe(DeviceEvent(unit, 1, 0, t0, EventKind.PATIENT_CONTACT, {"age": 70}), t0)
        loop.observe(frame(0, t0 + S), t0 + S)
        assert [f.seq for f in loop._units[unit].ecg] == [0]
        loop.observe(DeviceEvent(unit, 1, 1, t0 + 3 * S, EventKind.TRANSFER_OF_CARE, {}), t0 + 3 * S)
        loop.observe(frame(1, t0 + 2 * S), t0 + 3 * S)  # taken before the handover, observed after it
        assert not loop._units[unit].ecg
        loop.observe(frame(2, t0 + 4 * S), t0 + 4 * S)
        assert [f.seq for f in loop._units[unit].ecg] == [2]
        await loop.settled()


async def test_twelve_lead_workers_run_below_the_processes_that_carry_alerts(store, gateway_endpoint) -> None:
    """The 12-lead analysis pool's workers run at a lower scheduling priority than the loop's own process: on a busy
    machine an analysis waits, not the gateway that raises alerts (decision 28)."""
    loop = ClinicalLoop(CARE, gateway_endpoint, store, DEMO_SITES)
    pool = loop._new_ecg_pool()
    assert pool is not None
    with pool:
        worker = await asyncio.get_running_loop().run_in_executor(pool, os.nice, 0)
    assert worker >= min(19, os.nice(0) + 10)
