"""Environment -> typed settings: one pydantic-settings model per concern, the one place that declares each
IMPACTIN_* variable (its name, default and bounds). Dagster resources, the CLI and the API take their defaults from
these models.

Provider secrets stay in the environment (or encrypted in the warehouse): they are read here at execution time
and never copied into Dagster run config, metadata or logs.
"""

import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_STATE_DIR = ".impactin"

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("impactin_settings_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """Environment variables from `from_env`'s mapping (os.environ otherwise); a blank value means the default."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        env = os.environ if env is None else env
        return {k.lower(): v for k, v in env.items() if v is not None and v.strip() != ""}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            return None, field_name, False  # a nested settings model reads its own variables
        return super().get_field_value(field, field_name)


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(env)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


_REASONS = {
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "int_type": "is not an integer",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "finite_number": "is not a finite number",
}


class ImpactinSettings(BaseSettings):
    """Base of the settings models: frozen, read from the environment only (no .env file), a blank variable
    means the default, and a bad value fails as ValueError naming the variable and the value."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False, allow_inf_nan=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _MappingEnvSource(settings_cls)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ValueError(describe_error(type(self), exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Self:
        """The settings from `env` alone (defaults for what it lacks)."""
        with _environ(env):
            return cls()

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of field `name`."""
        alias = cls.model_fields[name].validation_alias
        if isinstance(alias, str):
            return alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of field `name`."""
        return cls.model_fields[name].get_default(call_default_factory=True)


def describe_error(model: type[ImpactinSettings], exc: ValidationError) -> str:
    """`NAME='value' <reason>` for each bad value (a model-wide rule's own message as it is)."""
    by_key = {}
    for name in model.model_fields:
        by_key[name] = by_key[model.env_var(name).lower()] = model.env_var(name)
    messages = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            messages.append(message)
            continue
        key = str(error["loc"][0])
        var = by_key.get(key) or by_key.get(key.lower()) or key
        if message.startswith(var):
            messages.append(message)
            continue
        raw = error.get("input")
        reason = _REASONS.get(error["type"])
        bound = next(iter((error.get("ctx") or {}).values()), "")
        if error["type"] == "greater_than_equal":
            reason = f"must be at least {bound}"
        elif error["type"] == "less_than_equal":
            reason = f"must be at most {bound}"
        messages.append(f"{var}={raw!r} {reason or message}")
    return "; ".join(messages)


class RetrySettings(ImpactinSettings):
    """Retry policy: 3 attempts, 1 s, x2, 30 s cap, +-10 % jitter."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_RETRY_")

    max_attempts: int = Field(3, ge=1)
    initial_delay_s: float = Field(1.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    max_delay_s: float = Field(30.0, ge=0)
    jitter: float = Field(0.10, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)  # a provider asking for longer gets the row parked as retrying
    max_rate_limit_waits: int = Field(10, ge=0)  # waits that do not burn an attempt, bounded all the same
    # a parked row is due again after this, doubling per run
    rerun_base_delay_s: float = Field(300.0, ge=0, validation_alias="IMPACTIN_RERUN_BASE_DELAY_S")
    rerun_max_delay_s: float = Field(6 * 3600.0, ge=0, validation_alias="IMPACTIN_RERUN_MAX_DELAY_S")


class CircuitSettings(ImpactinSettings):
    """The circuit breaker per provider credential: it opens after `failures` consecutive transient failures, for a
    cool-down that doubles with each failed probe up to the cap. 0 failures turns it off."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_CIRCUIT_")

    failures: int = Field(10, ge=0)
    cooldown_s: float = Field(30.0, ge=0)
    max_cooldown_s: float = Field(600.0, ge=0)
    # how stale a process's view of the shared state may get (it reads the warehouse at most this often)
    refresh_s: float = Field(2.0, ge=0)


class DeliverySettings(ImpactinSettings):
    """One delivery pass: parallelism, claims, HTTP timeouts, the run cap, and the retry policy."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_")

    concurrency: int = Field(8, ge=1, validation_alias="IMPACTIN_DELIVERY_CONCURRENCY")
    claim_batch: int = Field(200, ge=1)
    lease_s: float = Field(60.0, ge=1)
    connect_timeout_s: float = Field(5.0, ge=0, validation_alias="IMPACTIN_HTTP_CONNECT_TIMEOUT_S")
    read_timeout_s: float = Field(30.0, ge=0, validation_alias="IMPACTIN_HTTP_READ_TIMEOUT_S")
    # runs (sensor re-runs) a retrying row gets before it is `failed/exhausted`
    max_run_attempts: int = Field(5, ge=1)
    retry: RetrySettings = Field(default_factory=RetrySettings)  # reads its own IMPACTIN_RETRY_* variables
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)  # reads its own IMPACTIN_CIRCUIT_* variables


class CheckSettings(ImpactinSettings):
    """Thresholds of the asset checks on the deliveries."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_CHECK_")

    stuck_pending_hours: float = Field(26.0, ge=0)  # a pending row older than this missed a nightly run
    stuck_claim_minutes: float = Field(60.0, ge=0)  # a claim that has not moved for this long belongs to a hung run
    failure_rate_warn: float = Field(0.05, ge=0)  # failed / settled, over the window
    failure_rate_error: float = Field(0.20, ge=0)
    failure_window_hours: float = Field(24.0, ge=0)
    ledger_grace_hours: float = Field(26.0, ge=0)  # events younger than this may not be extracted yet

    @model_validator(mode="after")
    def _ordered_rates(self) -> Self:
        if not self.failure_rate_warn <= self.failure_rate_error <= 1:
            raise ValueError(
                f"{self.env_var('failure_rate_warn')}={self.failure_rate_warn!r} and "
                f"{self.env_var('failure_rate_error')}={self.failure_rate_error!r} must satisfy warn <= error <= 1"
            )
        return self


class StateSettings(ImpactinSettings):
    """Where local state lives (Dagster home, rate-limit buckets, the embedded key file) and the warehouse."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_")

    state_dir: Path = Path(DEFAULT_STATE_DIR)
    # A PostgreSQL URL may hold a password: Dagster gets it as EnvVar, never as a value.
    warehouse_url: SecretStr | None = None

    def resolved_state_dir(self) -> Path:
        return self.state_dir.resolve()

    def resolved_warehouse_url(self) -> str:
        """IMPACTIN_WAREHOUSE_URL, or the embedded default: a SQLite file in the state folder."""
        if self.warehouse_url is not None:
            return self.warehouse_url.get_secret_value()
        return f"sqlite:///{self.resolved_state_dir() / 'warehouse.db'}"


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    return StateSettings.from_env(env).resolved_state_dir()


def warehouse_url(env: Mapping[str, str] = os.environ) -> str:
    """IMPACTIN_WAREHOUSE_URL, or the embedded default: a SQLite file in the state folder."""
    return StateSettings.from_env(env).resolved_warehouse_url()


def is_embedded(url: str) -> bool:
    return url.startswith("sqlite")


class ScheduleSettings(ImpactinSettings):
    """When the nightly delivery runs."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_SCHEDULE_")

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # Range runs the nightly schedule asks for per provider: more than one spreads a big night over several run
    # workers (each run a process, a container or a pod, depending on the run launcher).
    runs_per_provider: int = Field(1, ge=1, validation_alias="IMPACTIN_RUNS_PER_PROVIDER")


LOG_FORMATS = ("text", "json")
RUN_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LogSettings(ImpactinSettings):
    """Console log format (every process) and the level of delivery lines in Dagster's run log."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_")

    log_format: Literal["text", "json"] = "text"
    # The level from which delivery lines also enter Dagster's run log (each line there is an event-log write).
    # Every delivery line always goes to the process's stderr (the run's compute log) and to the warehouse's
    # attempt log; WARNING keeps retries, failures and summaries in the run log, INFO adds every success.
    run_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        value = value.strip().lower() if isinstance(value, str) else value
        if value not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
        return value

    @field_validator("run_log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        value = value.strip().upper() if isinstance(value, str) else value
        if value not in RUN_LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(RUN_LOG_LEVELS)}")
        return value


class ApiSettings(ImpactinSettings):
    """The HTTP API: where it listens and its limits."""

    model_config = SettingsConfigDict(env_prefix="IMPACTIN_API_")

    host: str = "127.0.0.1"
    port: int = Field(3007, ge=0, le=65535)
    rate_limit_per_minute: int = Field(600, ge=1)  # per API key; failed authentications are limited per address
    max_body_bytes: int = Field(256 * 1024, ge=1024)  # an event may carry 64 KiB of metadata and 64 KiB of scores
    max_query_bytes: int = Field(2048, ge=1)
    max_auth_header_chars: int = Field(256, ge=1)
    # How far a webhook callback's signed timestamp may be from our clock (either side) before it is refused as stale.
    webhook_tolerance_s: float = Field(300.0, gt=0, le=3600)
    # `retry-all-failed` over more failed rows than this answers 202 with a job (GET /v1/impact-in/jobs/{id}) and runs
    # on a worker thread of the API process; up to it, the request answers inline as before.
    inline_replay_max: int = Field(100, ge=0)
    job_workers: int = Field(1, ge=1)  # jobs of one API process run at once; more queue (state `queued`)
    # Peers (addresses or networks) whose X-Forwarded-For names the client; from anyone else it is ignored, so a
    # client cannot pick the address its failed logins are counted against. Comma-separated in the environment.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        """IP addresses or CIDR networks, each checked (a host name or `*` is refused)."""
        items = value.split(",") if isinstance(value, str) else list(value or ())
        found = []
        for item in (str(part).strip() for part in items):
            if not item:
                continue
            try:
                found.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                example = "e.g. 10.0.0.5 or 10.0.0.0/8"
                name = cls.env_var(str(info.field_name))
                raise ValueError(f"{name}: {item!r} is not an IP address or CIDR network ({example})") from None
        return tuple(found)
