"""Console security: login, sessions, role checks, the Origin check, and the audit log.

Every request passes `Auth.middleware`. State-changing requests (and the websocket upgrade) must come from an allowed
Origin (the console's own, or one configured): this stops cross-site request forgery, login CSRF and cross-site
websocket hijacking. Apart from the login page and its assets, `/api/login`, `/healthz` and `/metrics`, everything
needs a session: a random 256-bit token in an HttpOnly, SameSite=Strict cookie (Secure under TLS) of which the store
keeps only a SHA-256 digest. Sessions end on logout or revocation, after `idle_timeout_s` without a request, and
after `absolute_timeout_s` however active; every request re-reads its session, so a revocation by any console
process holds at once for HTTP, and live websockets are re-checked every `session_check_s` (at once when this
process revoked them).

Handlers call `await require(request, Permission.X)`, which returns the caller's `Principal` or raises 403 (the
refusal audited), and `await audit(request, action, ...)` for every read or write of patient data. An audit line
that cannot be written fails the request (503): patient data is not served unaudited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from yarl import URL

from console import _care
from emergency.access import (
    AUDIT_RESULTS,
    DUMMY_HASH,
    AccessStore,
    AuditEntry,
    Permission,
    Role,
    SessionEnd,
    UnknownUser,
    UserExists,
    WeakPassword,
    hash_password,
    locked_until,
    needs_rehash,
    new_session_token,
    normalize_username,
    permissions_of,
    session_end,
    token_digest,
    valid_username,
    verify_password,
)
from emergency.settings import AuthSettings
from emergency.store import Store, StoreError

if TYPE_CHECKING:
    from console._hub import Hub

log = logging.getLogger(__name__)

COOKIE = "emergency_session"
LOGIN_PAGE = "/static/login.html"
WS_PATH = "/ws"
# Reachable without a session: nothing here carries patient data.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/metrics", "/api/login", LOGIN_PAGE, "/static/login.css", "/static/js/login.js", "/favicon.ico"}
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_PASSWORD = 1024
_T = TypeVar("_T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True, eq=False)
class Principal(_care.Principal):
    """A logged-in person as handlers see them: who, in which role, through which session."""

    username: str
    role: Role
    user_id: int
    session_id: int

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_of(self.role)

    def as_json(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role.value, "permissions": sorted(self.permissions)}


_PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """The request's Principal (set by the middleware); 401 when there is none."""
    principal = request.get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise web.HTTPUnauthorized(text="log in first")
    return principal


async def require(request: web.Request, permission: Permission | str) -> Principal:
    """The caller, when their role holds `permission`; otherwise 403 (and the refusal is audited)."""
    return await request.app[AUTH].require(request, permission)


async def audit(
    request: web.Request,
    action: str,
    *,
    encounter_id: int | None = None,
    unit: str | None = None,
    result: str = "allowed",
    detail: object = None,
) -> None:
    """Append to the audit log as the request's caller. Raises 503 when the line cannot be written."""
    await request.app[AUTH].audit(request, action, encounter_id=encounter_id, unit=unit, result=result, detail=detail)


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Whether the request's Origin (or, lacking one, its Referer's origin) is the console's own or an allowed one.
    A request with neither is refused: browsers send Origin with every cross-site state-changing request."""
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if not claimed:
        return False
    try:
        origin = str(URL(claimed).origin())
        own = str(request.url.origin())
    except ValueError:  # "null", garbage
        return False
    return origin == own or origin in {o.rstrip("/") for o in allowed}


def _encounter_of(request: web.Request) -> int | None:
    """The encounter a route is about, for the audit line of a refusal."""
    info = request.match_info
    route = getattr(info, "route", None)
    canonical = route.resource.canonical if route is not None and route.resource is not None else ""
    if canonical.startswith(("/api/encounters/{id}", "/fhir/Encounter/{id}")):
        try:
            return int(info["id"])
        except (KeyError, ValueError):
            return None
    return None


class Auth(_care.Guard):
    """Authentication, authorization and audit for one console app (`AUTH`); also the care routes' guard."""

    def __init__(self, store: Store, settings: AuthSettings, hub: Hub) -> None:
        self.records = AccessStore(store)
        self.settings = settings
        self.hub = hub
        self._verify_slots = asyncio.Semaphore(settings.login_concurrency)
        # Websocket activity written to the store at most every touch_interval_s per session (bounded: pruned).
        self._ws_touched: dict[int, int] = {}

    # -- the checks --------------------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method not in _SAFE_METHODS and not origin_allowed(request, self.settings.allowed_origins):
            await self._refuse_origin(request)
        if path in PUBLIC_PATHS:
            return await handler(request)
        principal = await self._session(request)
        if principal is None:
            if request.method == "GET" and (path == "/" or path.endswith(".html")):
                raise web.HTTPFound(LOGIN_PAGE)
            raise web.HTTPUnauthorized(text="log in first")
        request[_PRINCIPAL] = principal
        if path == WS_PATH and not origin_allowed(request, self.settings.allowed_origins):
            await self._refuse_origin(request)
        return await handler(request)

    async def _refuse_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        who: tuple[str, str | None] | None = None
        token = request.cookies.get(COOKIE)
        if token and _PRINCIPAL not in request:
            # Whose browser was made to send this: the session's holder, if the cookie is one.
            record = await self._records(self.records.session(token_digest(token)))
            who = (record.user.username, record.user.role.value) if record is not None else None
        await self._append(
            request, "origin_refused", result="denied", as_user=who,
            detail={"origin": origin, "method": request.method, "path": request.path},
        )  # fmt: skip
        raise web.HTTPForbidden(text="request from a foreign or unknown origin refused")

    async def _session(self, request: web.Request) -> Principal | None:
        """The session's Principal, or None (a presented but stale, revoked or unknown session is audited)."""
        token = request.cookies.get(COOKIE)
        if not token:
            if request.path == WS_PATH or request.path.startswith("/api/"):
                await self._append(request, "session_refused", result="denied",
                                   detail={"reason": "no session", "path": request.path})  # fmt: skip
            return None
        record = await self._records(self.records.session(token_digest(token)))
        if record is None:
            await self._append(request, "session_refused", result="denied",
                               detail={"reason": "unknown session", "path": request.path})  # fmt: skip
            return None
        now = now_us()
        ended = session_end(
            record.times,
            now,
            idle_us=round(self.settings.idle_timeout_s * 1e6),
            absolute_us=round(self.settings.absolute_timeout_s * 1e6),
        )
        if ended is None and record.user.disabled:
            ended = SessionEnd.DISABLED
        if ended is not None:
            if record.times.revoked_at is None:
                await self._records(self.records.revoke_session(record.id, ended.value))
            await self._append(
                request, "session_refused", result="denied", as_user=(record.user.username, record.user.role.value),
                detail={"reason": ended.value, "path": request.path},
            )  # fmt: skip
            return None
        if now - record.times.last_seen_at >= self.settings.touch_interval_s * 1e6:
            await self._records(self.records.touch_session(record.id, now))
        return Principal(record.user.username, record.user.role, record.user.id, record.id)

    async def require(self, request: web.Request, permission: Permission | str) -> Principal:
        return await self.require_any(request, permission)

    async def require_any(self, request: web.Request, *permissions: Permission | str) -> Principal:
        principal = principal_of(request)
        asked = " or ".join(map(str, permissions))
        try:
            needed = [Permission(p) for p in permissions]
        except ValueError:
            # A permission no role holds: a handler's mistake. Closed, not open: nobody passes.
            log.error("route %s asks for unknown permission %r; refused", request.path, asked)
            await self._append(request, "permission_denied", result="denied",
                               detail={"permission": asked, "path": request.path})  # fmt: skip
            raise web.HTTPForbidden(text=f"unknown permission {asked}") from None
        if any(p in principal.permissions for p in needed):
            return principal
        names = " or ".join(p.value for p in needed)
        await self._append(
            request, "permission_denied", result="denied", encounter_id=_encounter_of(request),
            detail={"permission": names, "method": request.method, "path": request.path},
        )  # fmt: skip
        raise web.HTTPForbidden(text=f"{principal.role} may not {names}")

    async def audit(
        self,
        request: web.Request,
        action: str,
        *,
        encounter_id: int | None = None,
        unit: str | None = None,
        result: str = "allowed",
        detail: object = None,
    ) -> None:
        await self._append(request, action, encounter_id=encounter_id, unit=unit, result=result, detail=detail)

    async def _append(
        self,
        request: web.Request,
        action: str,
        *,
        encounter_id: int | None = None,
        unit: str | None = None,
        result: str = "allowed",
        detail: object = None,
        as_user: tuple[str, str | None] | None = None,
    ) -> None:
        if as_user is None:
            principal = request.get(_PRINCIPAL)
            as_user = (principal.username, principal.role.value) if isinstance(principal, Principal) else None
        await self._records(
            self.records.append_audit(
                AuditEntry(
                    action=action, result=result, username=as_user[0] if as_user else None,
                    role=as_user[1] if as_user else None, encounter_id=encounter_id, unit=unit,
                    address=request.remote, detail=detail,
                )
            )
        )  # fmt: skip

    @staticmethod
    async def _records(call: Awaitable[_T]) -> _T:
        try:
            return await call
        except StoreError as exc:
            log.warning("access records unavailable: %s", exc)
            raise web.HTTPServiceUnavailable(text="the console cannot check access now; try again") from exc

    # -- websockets ------------------------------------------------------------------------------------------

    async def websocket_activity(self, principal: Principal) -> None:
        """A message from a websocket client counts as activity for the idle timeout (written at most every
        touch_interval_s)."""
        now = now_us()
        if now - self._ws_touched.get(principal.session_id, 0) < self.settings.touch_interval_s * 1e6:
            return
        if len(self._ws_touched) > 10_000:
            self._ws_touched.clear()
        self._ws_touched[principal.session_id] = now
        try:
            await self.records.touch_session(principal.session_id, now)
        except StoreError as exc:
            log.info("websocket activity of session %d not recorded: %s", principal.session_id, exc)

    async def watch_live_sessions(self) -> None:
        """Close websockets whose session ended elsewhere (another console process, a timeout)."""
        while True:
            await asyncio.sleep(self.settings.session_check_s)
            ids = self.hub.session_ids()
            if not ids:
                continue
            try:
                live = await self.records.live_sessions(list(ids))
            except StoreError as exc:
                log.warning("live sessions not re-checked: %s", exc)
                continue
            now = now_us()
            idle_us = round(self.settings.idle_timeout_s * 1e6)
            absolute_us = round(self.settings.absolute_timeout_s * 1e6)
            ended = {i for i in ids if i not in live or session_end(live[i], now, idle_us=idle_us,
                                                                     absolute_us=absolute_us)}  # fmt: skip
            if ended:
                await self.end_websockets(ended, "session ended")

    async def end_websockets(self, session_ids: set[int], reason: str) -> None:
        """Disconnect the websockets of these sessions and audit each."""
        for client in [c for c in self.hub.clients if c.principal.session_id in session_ids]:
            # Audited before the close is sent: whoever sees the socket close finds the entry already there.
            try:
                await self.records.append_audit(
                    AuditEntry(action="ws_closed", username=client.principal.username,
                               role=client.principal.role.value, address=client.name, detail={"reason": reason})
                )  # fmt: skip
            except StoreError as exc:
                log.warning("websocket close of %s not audited: %s", client.principal.username, exc)
            client.end_session(reason)

    # -- login and logout ------------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        username, password = await _credentials(request)
        address = request.remote or "unknown"
        now = now_us()
        s = self.settings
        since = now - round((s.lockout_window_s + s.lockout_s) * 1e6)
        for_user, for_address = await self._records(self.records.login_failures(username, address, since))
        lock = [
            locked_until(for_user, threshold=s.lockout_failures, window_us=round(s.lockout_window_s * 1e6),
                         lockout_us=round(s.lockout_s * 1e6)),
            locked_until(for_address, threshold=s.address_lockout_failures,
                         window_us=round(s.lockout_window_s * 1e6), lockout_us=round(s.lockout_s * 1e6)),
        ]  # fmt: skip
        until = max((t for t in lock if t is not None), default=None)
        if until is not None and until > now:
            await self._append(request, "login", result="denied", as_user=(username, None),
                               detail={"reason": "locked", "until": until})  # fmt: skip
            retry = math.ceil((until - now) / 1e6)
            return web.json_response(
                {"error": f"too many failed logins; try again in {math.ceil(retry / 60)} min"},
                status=429, headers={"Retry-After": str(retry)},
            )  # fmt: skip
        user = await self._records(self.records.user(username)) if valid_username(username) else None
        # An unknown user costs one argon2id check too, so timing does not tell which usernames exist.
        matches = await self._verify(user.password_hash if user else DUMMY_HASH, password)
        if user is None or not matches or user.disabled:
            reason = "unknown user" if user is None else "wrong password" if not matches else "disabled"
            await self._records(self.records.record_login_failure(username, address, now, forget_before=since))
            await self._append(request, "login", result="failed", as_user=(username, user.role.value if user else None),
                               detail={"reason": reason})  # fmt: skip
            return web.json_response({"error": "wrong username or password"}, status=401)
        await self._records(self.records.clear_login_failures(username))
        if needs_rehash(user.password_hash):
            await self._records(self.records.rehash(user.id, await asyncio.to_thread(hash_password, password)))
        token = new_session_token()
        session_id = await self._records(self.records.open_session(user.id, token_digest(token), now, address))
        principal = Principal(user.username, user.role, user.id, session_id)
        request[_PRINCIPAL] = principal
        await self._append(request, "login")
        response = web.json_response(principal.as_json())
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", path="/",
            secure=request.secure or s.cookie_secure, max_age=math.ceil(s.absolute_timeout_s),
        )  # fmt: skip
        return response

    async def _verify(self, password_hash: str, password: str) -> bool:
        # Bounded: each check takes 64 MiB and tens of ms of a core; a login storm waits here, in order.
        async with self._verify_slots:
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def logout(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        await self._records(self.records.revoke_session(principal.session_id, "logout"))
        await self._append(request, "logout")
        await self.end_websockets({principal.session_id}, "logged out")
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        return web.json_response(
            {**principal.as_json(), "idle_timeout_s": self.settings.idle_timeout_s,
             "absolute_timeout_s": self.settings.absolute_timeout_s}
        )  # fmt: skip

    # -- administration --------------------------------------------------------------------------------------

    async def query_audit(self, request: web.Request) -> web.Response:
        await self.require(request, Permission.QUERY_AUDIT)
        q = request.query
        try:
            filters: dict[str, Any] = {
                "username": q.get("user") or None,
                "encounter_id": int(q["encounter"]) if q.get("encounter") else None,
                "action": q.get("action") or None,
                "result": q.get("result") or None,
                "since": int(q["since"]) if q.get("since") else None,
                "until": int(q["until"]) if q.get("until") else None,
            }
            limit = min(max(int(q.get("limit", 100)), 1), 1000)
        except ValueError:
            raise web.HTTPBadRequest(text="encounter, since, until (µs) and limit are integers") from None
        if filters["result"] not in (None, *AUDIT_RESULTS):
            raise web.HTTPBadRequest(text=f"result is one of {AUDIT_RESULTS}")
        await self.audit(request, "query_audit", detail={k: v for k, v in filters.items() if v is not None})
        entries = await self._records(self.records.query_audit(**filters, limit=limit))
        return web.json_response({"entries": entries})

    async def list_users(self, request: web.Request) -> web.Response:
        await self.require(request, Permission.MANAGE_USERS)
        await self.audit(request, "list_users")
        return web.json_response([u.as_json() for u in await self._records(self.records.users())])

    async def add_user(self, request: web.Request) -> web.Response:
        await self.require(request, Permission.MANAGE_USERS)
        body = await _json_object(request)
        username = normalize_username(str(body.get("username", "")))
        role = _role(body.get("role"))
        if not valid_username(username):
            raise web.HTTPBadRequest(text="username: 1–64 of a-z 0-9 . _ -, starting with a letter or digit")
        password_hash = await _hash(body.get("password"))
        try:
            user = await self.records.add_user(username, role, password_hash)
        except UserExists as exc:
            raise web.HTTPConflict(text=str(exc)) from exc
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text="users unavailable; try again") from exc
        await self.audit(request, "add_user", detail={"username": username, "role": role.value})
        return web.json_response(user.as_json(), status=201)

    async def update_user(self, request: web.Request) -> web.Response:
        """Role, password or disabled; any of them ends the user's sessions and closes their websockets."""
        await self.require(request, Permission.MANAGE_USERS)
        username = request.match_info["username"]
        body = await _json_object(request)
        role = _role(body["role"]) if "role" in body else None
        password_hash = await _hash(body["password"]) if "password" in body else None
        disabled = body.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise web.HTTPBadRequest(text="disabled is true or false")
        try:
            user = await self.records.update_user(username, role=role, password_hash=password_hash, disabled=disabled)
        except UnknownUser as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text="users unavailable; try again") from exc
        changed = sorted(k for k in ("role", "password", "disabled") if k in body)
        await self.audit(request, "update_user", detail={"username": username, "changed": changed})
        if role is not None or password_hash is not None or disabled:
            await self.end_websockets({c.principal.session_id for c in self.hub.clients
                                       if c.principal.user_id == user.id}, "account changed")  # fmt: skip
        return web.json_response(user.as_json())

    async def revoke_sessions(self, request: web.Request) -> web.Response:
        await self.require(request, Permission.MANAGE_USERS)
        username = request.match_info["username"]
        revoked = await self._records(self.records.revoke_user_sessions(username, "revoked by an administrator"))
        await self.audit(request, "revoke_sessions", detail={"username": username, "sessions": len(revoked)})
        await self.end_websockets(set(revoked), "revoked by an administrator")
        return web.json_response({"revoked": len(revoked)})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def _credentials(request: web.Request) -> tuple[str, str]:
    """Username (normalized) and password, from JSON or a plain form post."""
    if request.content_type == "application/json":
        body: Any = await _json_object(request)
    else:
        body = await request.post()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > _MAX_PASSWORD:
        raise web.HTTPBadRequest(text="username and password (strings) are required")
    return normalize_username(username)[:64], password


def _role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise web.HTTPBadRequest(text=f"role is one of {[r.value for r in Role]}") from None


async def _hash(password: object) -> str:
    if not isinstance(password, str) or len(password) > _MAX_PASSWORD:
        raise web.HTTPBadRequest(text="password must be a string")
    try:
        return await asyncio.to_thread(hash_password, password)
    except WeakPassword as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc


AUTH = web.AppKey("auth", Auth)


def setup_auth(app: web.Application, auth: Auth) -> None:
    """Install the middleware (first, so that nothing runs unchecked), the routes, and the session watcher."""
    app[AUTH] = auth
    app.middlewares.insert(0, auth.middleware)
    app.router.add_post("/api/login", auth.login)
    app.router.add_post("/api/logout", auth.logout)
    app.router.add_get("/api/whoami", auth.whoami)
    app.router.add_get("/api/audit", auth.query_audit)
    app.router.add_get("/api/users", auth.list_users)
    app.router.add_post("/api/users", auth.add_user)
    app.router.add_patch("/api/users/{username}", auth.update_user)
    app.router.add_delete("/api/users/{username}/sessions", auth.revoke_sessions)

    async def session_watcher(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(auth.watch_live_sessions(), name="console.sessions")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(session_watcher)
