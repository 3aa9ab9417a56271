"""Environment -> typed settings. The one place that knows every variable name.

Provider secrets stay in the environment (or encrypted in the warehouse): they are read here at execution time
and never copied into Dagster run config, metadata or logs.
"""

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = ".impactin"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class RetrySettings:
    """The seed's policy: 3 attempts, 1 s, x2, 30 s cap, +-10 % jitter."""

    max_attempts: int = 3
    initial_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    jitter: float = 0.10
    max_retry_after_s: float = 120.0  # a provider asking for longer gets the row parked as retrying
    max_rate_limit_waits: int = 10  # waits that do not burn an attempt, bounded all the same
    rerun_base_delay_s: float = 300.0  # a parked row is due again after this, doubling per run
    rerun_max_delay_s: float = 6 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "RetrySettings":
        return cls(
            max_attempts=_int(env, "IMPACTIN_RETRY_MAX_ATTEMPTS", 3, minimum=1),
            initial_delay_s=_float(env, "IMPACTIN_RETRY_INITIAL_DELAY_S", 1.0),
            max_delay_s=_float(env, "IMPACTIN_RETRY_MAX_DELAY_S", 30.0),
            jitter=_float(env, "IMPACTIN_RETRY_JITTER", 0.10),
            max_retry_after_s=_float(env, "IMPACTIN_RETRY_MAX_RETRY_AFTER_S", 120.0),
            rerun_base_delay_s=_float(env, "IMPACTIN_RERUN_BASE_DELAY_S", 300.0),
            rerun_max_delay_s=_float(env, "IMPACTIN_RERUN_MAX_DELAY_S", 6 * 3600.0),
        )


@dataclass(frozen=True)
class DeliverySettings:
    concurrency: int = 8
    claim_batch: int = 200
    lease_s: float = 60.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_run_attempts: int = 5  # runs (sensor re-runs) a retrying row gets before it is `failed/exhausted`
    retry: RetrySettings = field(default_factory=RetrySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "DeliverySettings":
        return cls(
            concurrency=_int(env, "IMPACTIN_DELIVERY_CONCURRENCY", 8, minimum=1),
            claim_batch=_int(env, "IMPACTIN_CLAIM_BATCH", 200, minimum=1),
            lease_s=_float(env, "IMPACTIN_LEASE_S", 60.0, minimum=1.0),
            connect_timeout_s=_float(env, "IMPACTIN_HTTP_CONNECT_TIMEOUT_S", 5.0),
            read_timeout_s=_float(env, "IMPACTIN_HTTP_READ_TIMEOUT_S", 30.0),
            max_run_attempts=_int(env, "IMPACTIN_MAX_RUN_ATTEMPTS", 5, minimum=1),
            retry=RetrySettings.from_env(env),
        )


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the asset checks on the deliveries."""

    stuck_pending_hours: float = 26.0  # a pending row older than this missed a nightly run
    stuck_claim_minutes: float = 60.0  # a claim that has not moved for this long belongs to a hung run
    failure_rate_warn: float = 0.05  # failed / settled, over the window
    failure_rate_error: float = 0.20
    failure_window_hours: float = 24.0
    ledger_grace_hours: float = 26.0  # events younger than this may not be extracted yet

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "CheckSettings":
        settings = cls(
            stuck_pending_hours=_float(env, "IMPACTIN_CHECK_STUCK_PENDING_HOURS", 26.0),
            stuck_claim_minutes=_float(env, "IMPACTIN_CHECK_STUCK_CLAIM_MINUTES", 60.0),
            failure_rate_warn=_float(env, "IMPACTIN_CHECK_FAILURE_RATE_WARN", 0.05),
            failure_rate_error=_float(env, "IMPACTIN_CHECK_FAILURE_RATE_ERROR", 0.20),
            failure_window_hours=_float(env, "IMPACTIN_CHECK_FAILURE_WINDOW_HOURS", 24.0),
            ledger_grace_hours=_float(env, "IMPACTIN_CHECK_LEDGER_GRACE_HOURS", 26.0),
        )
        if not settings.failure_rate_warn <= settings.failure_rate_error <= 1:
            raise ValueError(
                f"IMPACTIN_CHECK_FAILURE_RATE_WARN={settings.failure_rate_warn!r} and "
                f"IMPACTIN_CHECK_FAILURE_RATE_ERROR={settings.failure_rate_error!r} must satisfy warn <= error <= 1"
            )
        return settings


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("IMPACTIN_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def warehouse_url(env: Mapping[str, str] = os.environ) -> str:
    """IMPACTIN_WAREHOUSE_URL, or the embedded default: a SQLite file in the state folder."""
    url = env.get("IMPACTIN_WAREHOUSE_URL")
    if url:
        return url
    return f"sqlite:///{state_dir(env) / 'warehouse.db'}"


def is_embedded(url: str) -> bool:
    return url.startswith("sqlite")


@dataclass(frozen=True)
class ScheduleSettings:
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ScheduleSettings":
        return cls(
            cron=env.get("IMPACTIN_SCHEDULE_CRON") or "0 2 * * *",
            timezone=env.get("IMPACTIN_SCHEDULE_TIMEZONE") or "UTC",
        )


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API's limits (host and port are options of `impactin api`)."""

    rate_limit_per_minute: int = 600  # per API key; failed authentications are limited per client address
    max_body_bytes: int = 256 * 1024  # an event may carry 64 KiB of metadata and 64 KiB of outcome scores
    max_query_bytes: int = 2048
    max_auth_header_chars: int = 256
    # Peers (addresses or networks) whose X-Forwarded-For names the client; from anyone else it is ignored, so a
    # client cannot pick the address its failed logins are counted against.
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ApiSettings":
        return cls(
            rate_limit_per_minute=_int(env, "IMPACTIN_API_RATE_LIMIT_PER_MINUTE", 600, minimum=1),
            max_body_bytes=_int(env, "IMPACTIN_API_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            trusted_proxies=_networks(env, "IMPACTIN_API_TRUSTED_PROXIES"),
        )


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR networks, each checked (a host name or `*` is refused)."""
    found = []
    for item in (part.strip() for part in (env.get(name) or "").split(",")):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            example = "e.g. 10.0.0.5 or 10.0.0.0/8"
            raise ValueError(f"{name}: {item!r} is not an IP address or CIDR network ({example})") from None
    return tuple(found)
