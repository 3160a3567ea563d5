"""Fan-out to websocket clients. Broadcasting never waits on a client: each has its own bounded queues and sender.

Overflow policy, per client (docs/console-api.md):
- ECG frames: a bounded deque; when full the oldest frame is dropped (a late waveform frame is worthless).
- Unit updates (gps, vitals, status, link): coalesced per (type, unit); the latest replaces an unsent older one.
- Events: a bounded deque; events are never dropped, so a client that lets it fill is disconnected (1013).
- A client whose socket accepts nothing for `SEND_STALL_S` is cut (the connection aborted: a socket that takes
  nothing cannot take a close frame either) and logged at INFO.

What is pending for a client when its sender wakes goes in as few frames as possible: each frame is a JSON array of
messages (`frame_texts`), so a busy console pays the websocket's per-frame work once per batch, not once per message.
Under load a client's sends are paced (`send_interval_s`, ConsoleSettings): what arrives within the interval after a
send joins the next one, so a fleet's updates cost a client a few dozen frames a second, not one per batch read from
the bus. Events (alerts among them) and a close are not paced.

Each client carries the Principal it logged in as, and receives only the messages its role may see: every broadcast
states the permission it needs (`needs_of` gives it for each message class), defaulting to the strictest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from emergency.access import Permission

if TYPE_CHECKING:
    from console._auth import Principal

log = logging.getLogger(__name__)

SEND_STALL_S = 5.0
ECG_FRAMES_MAX = 64
EVENTS_MAX = 1_000
# A frame holds at most this much text (and as many bytes: the JSON is ASCII), unless one message alone is longer (a
# city's fleet snapshot may be). Why 256 KiB: a link of 0.4 Mbit/s still carries a frame within SEND_STALL_S, so a
# client that reads slowly but steadily is not cut off for a frame too big to go in time; it is a quarter of the
# websockets library's default 1 MiB message limit; and it still holds a busy batch in one frame (about sixty
# 12-lead ECG frames of 4.2 KB, or a thousand unit updates).
FRAME_TEXT_MAX = 256 * 1024

Json = dict[str, Any]
# The close code for a websocket whose session ended (logout, revocation, timeout): log in again, then reconnect.
SESSION_ENDED = 4401

# Who may receive which message class. Anything not listed needs the strictest, VIEW_PATIENT_LIVE.
MESSAGE_NEEDS: Mapping[str, Permission] = {
    "fleet": Permission.VIEW_FLEET,
    "gps": Permission.VIEW_FLEET,
    "status": Permission.VIEW_FLEET,
    "link": Permission.VIEW_FLEET,
    "vitals": Permission.VIEW_PATIENT_LIVE,
    "event": Permission.VIEW_PATIENT_LIVE,
    "ecg": Permission.VIEW_PATIENT_LIVE,
}
CARE_NEEDS: Mapping[str, Permission] = {
    "incident": Permission.VIEW_FLEET,
    "alert": Permission.VIEW_ALERTS,
    "encounter": Permission.VIEW_PATIENT_LIVE,
    "activation": Permission.VIEW_PATIENT_LIVE,
}
_LIVE_UNIT_FIELDS = ("vitals", "vitals_ts", "news2", "consciousness", "on_oxygen", "spo2_scale_2")


def needs_of(message: Json) -> Permission:
    """The permission a client needs to receive this message."""
    if message.get("type") == "care":
        return CARE_NEEDS.get(str(message.get("kind")), Permission.VIEW_PATIENT_LIVE)
    return MESSAGE_NEEDS.get(str(message.get("type")), Permission.VIEW_PATIENT_LIVE)


def visible_units(units: list[Json], permissions: Collection[Permission]) -> list[Json]:
    """The fleet's unit objects as a role may see them: without vitals and NEWS2 unless it may see live data."""
    if Permission.VIEW_PATIENT_LIVE in permissions:
        return units
    return [{k: (None if k in _LIVE_UNIT_FIELDS else v) for k, v in u.items()} for u in units]


class ClientDropped(Exception):
    """The client is being disconnected; the message says why."""


class Outgoing:
    """A message for browsers with its JSON text, encoded once and shared by every client it goes to (a broadcast
    to fifty consoles is encoded once, not fifty times). A plain attribute: every client's every frame reads it."""

    __slots__ = ("message", "text")

    def __init__(self, message: Json, text: str | None = None) -> None:
        """`text`, when given, is `message` already encoded (or joined from encoded parts); then `message` may hold
        only what the hub routes by (its type, and a care message's kind)."""
        self.message = message
        self.text = json.dumps(message, separators=(",", ":")) if text is None else text

    @classmethod
    def of(cls, message: Json | Outgoing) -> Outgoing:
        return message if isinstance(message, Outgoing) else cls(message)


class ClientTooSlow(ClientDropped):
    pass


def frame_texts(batch: Sequence[Outgoing], text_max: int = FRAME_TEXT_MAX) -> Iterator[str]:
    """The batch as websocket frame texts: JSON arrays of the messages in their order, joined from their encoded
    texts (nothing is encoded again). A frame is at most `text_max` long unless one message alone is longer; that
    message then goes in a frame of its own."""
    all_texts = [message.text for message in batch]
    if sum(map(len, all_texts)) + len(all_texts) + 1 <= text_max:  # the usual case: one frame, joined in C
        if all_texts:
            yield "[" + ",".join(all_texts) + "]"
        return
    texts: list[str] = []
    length = 1  # the frame's length so far: "[" and, for each message, its text and the "," or "]" after it
    for text in all_texts:
        if texts and length + len(text) + 1 > text_max:
            yield "[" + ",".join(texts) + "]"
            texts, length = [], 1
        texts.append(text)
        length += len(text) + 1
    if texts:
        yield "[" + ",".join(texts) + "]"


class Client:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        name: str,
        principal: Principal,
        ecg_frames_max: int = ECG_FRAMES_MAX,
        transport: asyncio.Transport | None = None,
        send_interval_s: float = 0.0,
    ) -> None:
        self.ws = ws
        self.principal = principal
        # Looked up once: `may` runs for every broadcast and every client (a role is fixed for a session's life).
        self._permissions = principal.permissions
        self.transport = transport
        self.name = name
        self.watching: set[str] = set()
        self._updates: dict[tuple[str, str], Outgoing] = {}
        self._events: collections.deque[Outgoing] = collections.deque()
        self._ecg: collections.deque[Outgoing] = collections.deque(maxlen=ecg_frames_max)
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # an event or a close is waiting: the pacing ends now
        self._send_interval_s = send_interval_s
        self._sent_at = -math.inf  # loop time of the last send
        self.dropped_ecg = 0
        self.closing: tuple[int, str] | None = None

    def may(self, permission: Permission) -> bool:
        return permission in self._permissions

    def end_session(self, reason: str) -> None:
        """Disconnect this client (SESSION_ENDED) once what is queued for it is abandoned."""
        self._close_soon(SESSION_ENDED, reason)

    def offer_updates(self, updates: Mapping[tuple[str, str], Outgoing]) -> None:
        """Updates keyed by (type, unit), which a broadcast works out once for all clients; each replaces an unsent
        one of its key."""
        self._updates.update(updates)
        self._wake.set()

    def offer_event(self, message: Json | Outgoing) -> None:
        if len(self._events) >= EVENTS_MAX:
            self._close_soon(WSCloseCode.TRY_AGAIN_LATER, "too slow to receive events")
            return
        self._events.append(Outgoing.of(message))
        self._wake.set()
        self._urgent.set()

    def offer_ecg(self, message: Json | Outgoing) -> None:
        if len(self._ecg) == self._ecg.maxlen:
            self.dropped_ecg += 1
        self._ecg.append(Outgoing.of(message))
        self._wake.set()

    def send_now(self, message: Json | Outgoing) -> None:
        """Direct answers (errors, snapshots) go with the events: in order, never dropped."""
        self.offer_event(message)

    def _close_soon(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self._wake.set()
            self._urgent.set()

    async def run_sender(self) -> None:
        """Send until the socket closes; raises ClientDropped when the client must be dropped."""
        while not self.ws.closed:
            await self._wake.wait()
            await self._pace()
            self._wake.clear()
            if self.closing is not None:
                code, reason = self.closing
                raise ClientDropped(reason) if code == SESSION_ENDED else ClientTooSlow(reason)
            # Events first (they must not be lost), then the latest unit updates, then waveform.
            batch: list[Outgoing] = list(self._events)
            self._events.clear()
            batch.extend(self._updates.values())
            self._updates.clear()
            batch.extend(self._ecg)
            self._ecg.clear()
            self._sent_at = asyncio.get_running_loop().time()
            for frame in frame_texts(batch):
                try:
                    async with asyncio.timeout(SEND_STALL_S):
                        await self.ws.send_str(frame)
                except TimeoutError:
                    raise ClientTooSlow(f"socket accepted nothing for {SEND_STALL_S:.0f} s") from None
                except ConnectionResetError:
                    return

    async def _pace(self) -> None:
        """Wait out the rest of the send interval, unless an event or a close is waiting."""
        if self._events or self.closing is not None:
            return
        wait = self._sent_at + self._send_interval_s - asyncio.get_running_loop().time()
        if wait <= 0:
            return
        self._urgent.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._urgent.wait()


class Hub:
    def __init__(self, ecg_frames_max: int = ECG_FRAMES_MAX, send_interval_s: float = 0.0) -> None:
        self.clients: set[Client] = set()
        self.ecg_frames_max = ecg_frames_max
        self.send_interval_s = send_interval_s
        self._watchers: collections.Counter[str] = collections.Counter()

    def add(self, client: Client) -> None:
        self.clients.add(client)

    def remove(self, client: Client) -> list[str]:
        """Forget a client; returns the units nobody watches any more."""
        self.clients.discard(client)
        released = []
        for unit in client.watching:
            self._watchers[unit] -= 1
            if self._watchers[unit] <= 0:
                del self._watchers[unit]
                released.append(unit)
        client.watching.clear()
        return released

    def watch(self, client: Client, unit: str) -> bool:
        """Returns True when this is the unit's first watcher (its ECG must now be fetched)."""
        if unit in client.watching:
            return False
        client.watching.add(unit)
        self._watchers[unit] += 1
        return self._watchers[unit] == 1

    def unwatch(self, client: Client, unit: str) -> bool:
        """Returns True when the unit has no watcher left."""
        if unit not in client.watching:
            return False
        client.watching.discard(unit)
        self._watchers[unit] -= 1
        if self._watchers[unit] <= 0:
            del self._watchers[unit]
            return True
        return False

    def watched_units(self) -> list[str]:
        return list(self._watchers)

    def broadcast_updates(self, updates: Iterable[tuple[Json, Permission]]) -> None:
        """Coalescable unit updates, each to every client whose role holds its permission. Given together (a bus
        batch's), they reach each client in one call per permission, not one per update: at 2 000 units and 50
        clients that was ~200 000 calls a second."""
        if not self.clients:
            return
        by_needs: dict[Permission, dict[tuple[str, str], Outgoing]] = {}
        for message, needs in updates:
            # Encoded once, however many clients receive it; a later update of a key replaces the earlier.
            by_needs.setdefault(needs, {})[(message["type"], message["unit"])] = Outgoing(message)
        for needs, keyed in by_needs.items():
            for client in self.clients:
                if client.may(needs):
                    client.offer_updates(keyed)

    def broadcast_event(self, message: Json | Outgoing, needs: Permission = Permission.VIEW_PATIENT_LIVE) -> None:
        """An event (never dropped), to every client whose role holds `needs`."""
        if not self.clients:
            return
        out = Outgoing.of(message)
        for client in self.clients:
            if client.may(needs):
                client.offer_event(out)

    def send_ecg(self, unit: str, message: Json) -> None:
        # Watching needs VIEW_PATIENT_LIVE already; checked again here so that no path sends a waveform without it.
        if not self.clients:
            return
        out = Outgoing(message)
        for client in self.clients:
            if unit in client.watching and client.may(Permission.VIEW_PATIENT_LIVE):
                client.offer_ecg(out)

    def session_ids(self) -> set[int]:
        return {client.principal.session_id for client in self.clients}

    def end_sessions(self, session_ids: Collection[int], reason: str) -> int:
        """Disconnect every client of these sessions; returns how many."""
        ended = [c for c in self.clients if c.principal.session_id in session_ids]
        for client in ended:
            client.end_session(reason)
        return len(ended)
