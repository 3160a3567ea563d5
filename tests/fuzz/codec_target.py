"""Coverage-guided fuzzing of the device codec with atheris (libFuzzer): `python tests/fuzz/codec_target.py -runs=N`.

Any exception other than the codec's own RejectedMessage is a crash that libFuzzer reports and writes out as a
reproducer. tests/test_codec.py runs a bounded session of it in the suite; run it longer by hand or in a soak.
"""

from __future__ import annotations

import sys

import atheris
import msgpack

with atheris.instrument_imports():
    from emergency.codec import EVENT_FIELDS, RejectedMessage, decode_device_message
    from emergency.protocol import DEVICE_STREAMS, device_topic

TOPICS = [device_topic("A12", stream) for stream in DEVICE_STREAMS]
# Keys the decoder reads, so that structured inputs get past "missing field" into each field's validation.
KEYS = sorted(
    {"v", "boot", "seq", "ts", "fs", "leads", "lsb_uv", "n", "data", "kind", "hr", "sbp", "dbp", "map", "spo2",
     "rr", "temp", "etco2", "nibp_ts", "lat", "lon", "speed", "heading", "acc"}
    | {key for fields in EVENT_FIELDS.values() for key in fields}
)  # fmt: skip


def _value(fdp: atheris.FuzzedDataProvider) -> object:
    choice = fdp.ConsumeIntInRange(0, 7)
    if choice == 0:
        return fdp.ConsumeInt(8)
    if choice == 1:
        return fdp.ConsumeFloat()
    if choice == 2:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 3:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))
    if choice == 4:
        return [fdp.ConsumeUnicodeNoSurrogates(4) for _ in range(fdp.ConsumeIntInRange(0, 14))]
    if choice == 5:
        return fdp.ConsumeBool()
    if choice == 6:
        return None
    return {fdp.ConsumeUnicodeNoSurrogates(6): fdp.ConsumeInt(2)}


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    topic = TOPICS[fdp.ConsumeIntInRange(0, len(TOPICS) - 1)]
    if fdp.ConsumeBool():
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())  # raw bytes: the unpacker's limits
    else:
        # A plausible header most of the time, so that inputs reach each stream's own fields.
        body: dict[str, object] = {"v": 1, "boot": fdp.ConsumeIntInRange(0, 3), "seq": fdp.ConsumeIntInRange(0, 9),
                                   "ts": 1_800_000_000_000_000 + fdp.ConsumeInt(4)}  # fmt: skip
        for _ in range(fdp.ConsumeIntInRange(0, 16)):
            body[KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]] = _value(fdp)
        payload = msgpack.packb(body, use_bin_type=True)
    try:
        decode_device_message(topic, payload)
    except RejectedMessage:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
