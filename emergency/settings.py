"""Settings, one model per component, read from `EMERGENCY_*` environment variables.

Defaults work on a laptop: everything lives under `./data` and listens on loopback. Nested fields are set with a
double underscore, e.g. `EMERGENCY_GATEWAY__BATCH_MAX_MESSAGES=2000`. Secrets are never part of a model's repr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttEndpoint(_Section):
    """Where and as whom a component connects to the broker."""

    host: str = "127.0.0.1"
    port: int = 18830
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None  # verify the broker with this CA (TLS on when set)
    tls_cert: Path | None = None  # client certificate and key, for a broker that requires them
    tls_key: Path | None = None


class GatewaySettings(_Section):
    client_id: str = "emergency-gateway"
    # A batch is committed when it holds this many messages or its oldest message is this old.
    batch_max_messages: int = Field(default=2000, ge=1)
    batch_max_delay_s: float = Field(default=0.05, gt=0)
    # Bounded hand-off from the MQTT reader to the writer; when full the reader waits (backpressure to the
    # broker, whose queue is in turn covered by each device's outbox).
    queue_max_messages: int = Field(default=20_000, ge=1)
    # Commits in flight at once (decision 38): the units are split among this many writers by a hash of the unit,
    # so one unit's messages are committed in order by one writer, while another writer's batch is prepared or
    # committed beside it. The hand-off's room is shared out among them.
    commit_lanes: int = Field(default=2, ge=1)
    # Acks of one stream are coalesced over this interval (0: one per committed batch). Halves the ack traffic at
    # the standard load; the device keeps those messages this much longer.
    ack_interval_s: float = Field(default=0.5, ge=0)
    # Ack watermarks are saved this often, not with every commit: a gateway that starts derives the rest from the
    # stored record above the saved watermark (decision 40), so this only bounds how much it reads to do so.
    watermark_save_interval_s: float = Field(default=5.0, gt=0)
    silence_after_s: float = Field(default=10.0, gt=0)
    gap_open_after_s: float = Field(default=30.0, gt=0)
    monitor_interval_s: float = Field(default=1.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = 18081  # /metrics and /healthz; 0 picks a free port
    raw_capture_bytes: int = Field(default=4096, ge=0)  # how much of a rejected payload is kept
    # Scale-out: this gateway owns the units whose id hashes to partition_index of partition_count (see
    # ambulance_gateway/_partition.py). With one partition it takes every unit.
    partition_count: int = Field(default=1, ge=1)
    partition_index: int = Field(default=0, ge=0)
    partition_refresh_s: float = Field(default=5.0, gt=0)


class AuthSettings(_Section):
    """Console logins: session timeouts, lockout after failed logins, the origins a browser may call from."""

    idle_timeout_s: float = Field(default=1800.0, gt=0)  # a session unused this long ends
    absolute_timeout_s: float = Field(default=43_200.0, gt=0)  # ... and any session after 12 h
    # last_seen is written at most this often, sparing the database a write per request; the idle timeout is
    # therefore exact to within this much.
    touch_interval_s: float = Field(default=30.0, ge=0)
    # How often live websockets are re-checked against the store (revoked elsewhere, idle, expired). A revocation
    # made by this console closes its websockets at once.
    session_check_s: float = Field(default=5.0, gt=0)
    lockout_failures: int = Field(default=5, ge=1)  # this many failed logins for a username within the window...
    lockout_window_s: float = Field(default=900.0, gt=0)
    lockout_s: float = Field(default=900.0, gt=0)  # ... lock it this long
    # Per client address, higher: a ward's workstations may share one address behind NAT.
    address_lockout_failures: int = Field(default=20, ge=1)
    login_concurrency: int = Field(default=4, ge=1)  # argon2id checks at once (64 MiB each)
    # Origins (scheme://host[:port]) allowed besides the console's own, e.g. behind a TLS-terminating proxy.
    allowed_origins: tuple[str, ...] = ()
    cookie_secure: bool = False  # the cookie is Secure whenever the console serves HTTPS; this forces it


class ConsoleSettings(_Section):
    client_id: str = "emergency-console"
    host: str = "127.0.0.1"  # the port is Settings.http_port
    stale_after_s: float = Field(default=10.0, gt=0)
    # A websocket client is sent at most one frame this often while updates stream in (console/_hub.py); events and
    # alerts are not held. A display paints about 60 times a second, so a shorter interval shows nothing more, while
    # every frame costs the server a write and the browser a parse: at 900 units a client got ~150 frames a second
    # unpaced, 47 at 20 ms (docs/benchmarks.md). 0: a frame whenever something is pending.
    send_interval_s: float = Field(default=0.02, ge=0)
    # HTTPS: both or neither. A hospital network terminates TLS here or at a reverse proxy in front.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("console tls_cert and tls_key go together")
        return self


class CareSettings(_Section):
    """The clinical loop: alert lifecycle, lateness and clock skew, ECG analysis cadence, automatic activations."""

    client_id: str = "emergency-care"
    repeat_after_s: float = Field(default=120.0, gt=0)  # an unacknowledged critical alert repeats this often
    escalate_after_repeats: int = Field(default=1, ge=1)  # ... and goes to the second role after this many
    clear_after_s: float = Field(default=60.0, ge=0)  # a reading-based condition absent this long resolves
    late_after_s: float = Field(default=30.0, gt=0)  # data older than this on arrival is backlog, not live
    skew_settle_s: float = Field(default=20.0, gt=0)  # a steady offset this long is the device's clock skew
    ecg_window_s: float = Field(default=10.0, ge=2.5)  # how much 12-lead each analysis reads
    ecg_interval_s: float = Field(default=10.0, gt=0)  # how often a unit's 12-lead is analysed
    ecg_analyses_per_s: int = Field(default=8, ge=1)  # at most this many analyses a second, oldest first
    ecg_workers: int = Field(default=1, ge=0)  # processes for 12-lead analysis; 0: a thread of the loop's process
    seq_gap_hold_s: float = Field(default=300.0, gt=0)  # a reported open seq gap alerts this long
    auto_activate: bool = True  # STEMI → cath lab, LVO stroke → stroke team, trauma → trauma team
    sites_file: Path | None = None  # hospitals and bases (emergency/sites.py); None: the demo city
    thresholds_file: Path | None = None  # the hospital's alerting thresholds (JSON, see docs/clinical-loop.md)


class StoreSettings(_Section):
    dsn: SecretStr | None = None  # None: the stack's private cluster
    retention_days: int = Field(default=30, ge=1)
    compress_after_days: int = Field(default=2, ge=1)
    pool_min: int = 1
    pool_max: int = 8
    # A commit inserts each stream's rows in statements of at most this many rows, inside its one transaction
    # (decision 44): the event loop is held only while one such statement is prepared and encoded, not the batch.
    insert_chunk_rows: int = Field(default=250, ge=1)


class Settings(BaseSettings):
    """The whole system's settings; `emergency up` and every command read this."""

    model_config = SettingsConfigDict(
        env_prefix="EMERGENCY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("data")
    mqtt_port: int = 18830
    mqtt_tls_port: int | None = 18883  # devices over TLS with a certificate each; None: no TLS listener
    http_port: int = 8080
    pg_port: int = 54329
    pg_os_user: str = "nobody"  # the unprivileged account PostgreSQL runs as when started by root
    log_level: str = "INFO"

    gateway: GatewaySettings = GatewaySettings()
    console: ConsoleSettings = ConsoleSettings()
    care: CareSettings = CareSettings()
    store: StoreSettings = StoreSettings()
