"""Care records as JSON: the same shape on the center's bus and to browsers. pydantic does the (de)serialising."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from emergency.bus import CareKind
from emergency.care._model import Activation, Alert, Encounter, Incident

CareRecord = Incident | Encounter | Alert | Activation

_ADAPTERS: dict[CareKind, TypeAdapter[Any]] = {
    CareKind.INCIDENT: TypeAdapter(Incident),
    CareKind.ENCOUNTER: TypeAdapter(Encounter),
    CareKind.ALERT: TypeAdapter(Alert),
    CareKind.ACTIVATION: TypeAdapter(Activation),
}
_KIND_OF: dict[type, CareKind] = {
    Incident: CareKind.INCIDENT,
    Encounter: CareKind.ENCOUNTER,
    Alert: CareKind.ALERT,
    Activation: CareKind.ACTIVATION,
}


def care_kind(record: CareRecord) -> CareKind:
    return _KIND_OF[type(record)]


def record_json(record: CareRecord) -> dict[str, Any]:
    """The record as JSON-ready values (enums as their values, tuples as lists)."""
    result: dict[str, Any] = _ADAPTERS[care_kind(record)].dump_python(record, mode="json")
    return result


def encode_record(record: CareRecord) -> bytes:
    return _ADAPTERS[care_kind(record)].dump_json(record)


def decode_record(kind: CareKind, payload: bytes) -> CareRecord:
    """Decode a bus payload; raises pydantic.ValidationError (a ValueError) for one that is not a valid record."""
    record: CareRecord = _ADAPTERS[kind].validate_json(payload)
    return record
