"""What receiving costs the gateway's MQTT client: aiomqtt (paho) against `emergency.mqtt.MqttLink` (decision 24).

    .venv/bin/python bench/mqtt_receive.py --rates 1000,3000,8000 --seconds 10

A private mosquitto (the stack's limits, anonymous, loopback), one publisher process (bench/_loadgen.py's framing,
4 connections, QoS 1, 3 000-byte payloads over 500 unit topics at a fixed rate) and one subscriber process per
client and rate, subscribed at QoS 1. With `--forward` the subscriber also publishes every message again at QoS 0,
as the gateway's live forward does. Each subscriber reports the messages it received per second and its own CPU
(getrusage), from which µs per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _loadgen import MqttConnection, mqtt_str  # noqa: E402

from emergency.stack.broker import mosquitto_binary  # noqa: E402

TOPICS = 500
PAYLOAD_BYTES = 3000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def publish(port: int, rate: int, seconds: float) -> dict[str, object]:
    conns = [await MqttConnection.open("127.0.0.1", port, f"bench-pub-{i}", "bench", "bench") for i in range(4)]
    payload = os.urandom(PAYLOAD_BYTES)
    topics = [mqtt_str(f"ems/v1/B{i:04d}/ecg") for i in range(TOPICS)]
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            conns[sent % len(conns)].publish(topics[sent % TOPICS], payload)
            sent += 1
        for conn in conns:
            conn.flush()
        await asyncio.sleep(0.002)
    await asyncio.sleep(1)
    return {"sent": sent, "acknowledged": sum(c.puback_count for c in conns)}


async def receive(client: str, port: int, seconds: float, forward: bool) -> dict[str, object]:
    """Count messages from the first one on, for `seconds`."""
    from emergency.settings import MqttEndpoint

    endpoint = MqttEndpoint(host="127.0.0.1", port=port)
    count, first = 0, 0.0
    cpu0 = 0.0
    if client == "aiomqtt":
        from emergency.mqtt import mqtt_client

        async with mqtt_client(endpoint, identifier="bench-sub", max_queued_incoming_messages=100_000) as sub:
            await sub.subscribe("ems/v1/+/ecg", qos=1)
            print("ready", flush=True)
            async for message in sub.messages:
                if not count:
                    first, cpu0 = time.monotonic(), cpu_seconds()
                count += 1
                if forward:
                    # As the gateway forwarded before decision 24: queued with paho, not awaited through aiomqtt.
                    sub._client.publish("center/v1/live/" + message.topic.value[7:], message.payload, 0)
                if time.monotonic() - first >= seconds:
                    break
    else:
        from emergency.mqtt import MqttLink

        async with MqttLink(endpoint, client_id="bench-sub") as link:
            await link.subscribe([("ems/v1/+/ecg", 1)])
            print("ready", flush=True)
            async for batch in link.batches():
                if not count:
                    first, cpu0 = time.monotonic(), cpu_seconds()
                count += len(batch)
                if forward:
                    for packet in batch:
                        link.publish_nowait("center/v1/live/" + packet.topic[7:], packet.payload)
                if time.monotonic() - first >= seconds:
                    break
    elapsed = time.monotonic() - first
    cpu = cpu_seconds() - cpu0
    return {
        "msgs_per_s": round(count / elapsed),
        "cpu_cores": round(cpu / elapsed, 3),
        "us_per_msg": round(1e6 * cpu / count, 1),
    }


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    port = 18900 + os.getpid() % 500
    (work / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        "max_queued_messages 200000\nmax_inflight_messages 100\nmax_packet_size 66560\n"
    )
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    me = [sys.executable, __file__]
    rows = []
    try:
        time.sleep(0.5)
        for rate in args.rates:
            for client in ("aiomqtt", "link"):
                extra = ["--forward"] if args.forward else []
                sub = subprocess.Popen(
                    [*me, "receive", client, str(port), str(args.seconds), *extra], stdout=subprocess.PIPE, text=True
                )
                assert sub.stdout is not None
                sub.stdout.readline()  # ready
                pub = subprocess.run(
                    [*me, "publish", str(port), str(rate), str(args.seconds + 2)], capture_output=True, text=True
                )
                result = json.loads(sub.communicate(timeout=args.seconds + 60)[0].strip().splitlines()[-1])
                rows.append({"client": client, "offered": rate, **result, **json.loads(pub.stdout.strip())})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)
    what = "receive + a QoS 0 forward of each" if args.forward else "receive"
    print(f"| client | offered msg/s | received msg/s | CPU cores | µs per message ({what}) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['client']} | {r['offered']} | {r['msgs_per_s']} | {r['cpu_cores']} | {r['us_per_msg']} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        print(json.dumps(asyncio.run(publish(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "receive":
        result = asyncio.run(receive(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "--forward" in sys.argv))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 3000, 8000])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--forward", action="store_true", help="also publish each message again at QoS 0")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
