"""Resources: the warehouse engine, delivery tuning, check thresholds, log settings and the provider credentials
(as EnvVar, never values).

The fields of the settings resources are declared by the models in `settings.py` (default and description come
from there, `from_env` fills them from the same variables), so a default is written once; run config may override.
"""

import os
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from impactin_pipelines.providers import all_variables
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.settings import (
    RUN_LOG_LEVELS,
    CheckSettings,
    DeliverySettings,
    ImpactinSettings,
    LogSettings,
    RetrySettings,
    StateSettings,
)
from impactin_pipelines.store.engine import make_engine


def declared(model: type[ImpactinSettings], name: str, **constraints: Any) -> Any:
    """A resource field declared by `model`'s field `name`: same default, described by its variable."""
    info = model.model_fields[name]
    description = " ".join(filter(None, [info.description, f"Default from {model.env_var(name)}."]))
    return Field(default=model.default(name), description=description, **constraints)


def _values(config: dg.Config, model: type[ImpactinSettings], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {name: getattr(config, name) for name in model.model_fields if name not in skip}


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse holding the source contract and our delivery log. One engine (pool) per run."""

    url: str

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = make_engine(self.url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # used outside a run (sensors, schedules)
            self._engine = make_engine(self.url)
        return self._engine

    @classmethod
    def from_env(cls) -> "WarehouseResource":
        """EnvVar when set (a PostgreSQL URL may hold a password), else the embedded default path."""
        state = StateSettings.from_env()
        if state.warehouse_url is not None:
            return cls(url=dg.EnvVar(StateSettings.env_var("warehouse_url")))
        return cls(url=state.resolved_warehouse_url())


class RetryConfig(dg.Config):
    """The retry policy of deliveries and of the rerun sensor (settings.RetrySettings)."""

    max_attempts: int = declared(RetrySettings, "max_attempts")
    initial_delay_s: float = declared(RetrySettings, "initial_delay_s")
    multiplier: float = declared(RetrySettings, "multiplier")
    max_delay_s: float = declared(RetrySettings, "max_delay_s")
    jitter: float = declared(RetrySettings, "jitter")
    max_retry_after_s: float = declared(RetrySettings, "max_retry_after_s")
    max_rate_limit_waits: int = declared(RetrySettings, "max_rate_limit_waits")
    rerun_base_delay_s: float = declared(RetrySettings, "rerun_base_delay_s")
    rerun_max_delay_s: float = declared(RetrySettings, "rerun_max_delay_s")

    def settings(self) -> RetrySettings:
        return RetrySettings(**_values(self, RetrySettings))

    @classmethod
    def of(cls, settings: RetrySettings) -> "RetryConfig":
        return cls(**settings.model_dump())


class DeliveryResource(dg.ConfigurableResource):
    """Tuning of one delivery pass (settings.DeliverySettings) and the run log level (settings.LogSettings)."""

    concurrency: int = declared(DeliverySettings, "concurrency")
    claim_batch: int = declared(DeliverySettings, "claim_batch")
    lease_s: float = declared(DeliverySettings, "lease_s")
    connect_timeout_s: float = declared(DeliverySettings, "connect_timeout_s")
    read_timeout_s: float = declared(DeliverySettings, "read_timeout_s")
    max_run_attempts: int = declared(DeliverySettings, "max_run_attempts")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="The retry policy.")
    run_log_level: str = declared(LogSettings, "run_log_level", pattern=f"^({'|'.join(RUN_LOG_LEVELS)})$")

    def settings(self) -> DeliverySettings:
        return DeliverySettings(
            **_values(self, DeliverySettings, skip=("retry", "circuit")), retry=self.retry.settings()
        )

    @classmethod
    def from_env(cls) -> "DeliveryResource":
        base = DeliverySettings.from_env()
        return cls(
            **base.model_dump(exclude={"retry", "circuit"}),
            retry=RetryConfig.of(base.retry),
            run_log_level=LogSettings.from_env().run_log_level,
        )


class ChecksResource(dg.ConfigurableResource):
    """Thresholds of the asset checks on the deliveries (settings.CheckSettings)."""

    stuck_pending_hours: float = declared(CheckSettings, "stuck_pending_hours")
    stuck_claim_minutes: float = declared(CheckSettings, "stuck_claim_minutes")
    failure_rate_warn: float = declared(CheckSettings, "failure_rate_warn")
    failure_rate_error: float = declared(CheckSettings, "failure_rate_error")
    failure_window_hours: float = declared(CheckSettings, "failure_window_hours")
    ledger_grace_hours: float = declared(CheckSettings, "ledger_grace_hours")

    def settings(self) -> CheckSettings:
        return CheckSettings(**_values(self, CheckSettings))

    @classmethod
    def from_env(cls) -> "ChecksResource":
        return cls(**CheckSettings.from_env().model_dump())


class _ProvidersResourceBase(dg.ConfigurableResource):
    def provider_env(self) -> ProviderEnv:
        return ProviderEnv(**{name: getattr(self, name) for name in type(self).model_fields})

    @classmethod
    def from_env(cls) -> "_ProvidersResourceBase":
        return cls(**{name: dg.EnvVar(name) for name in cls.model_fields if os.environ.get(name)})


def _provider_resource() -> type[_ProvidersResourceBase]:
    """One optional string field per variable of every provider registered when the definitions are built, each
    taken from the provider's settings model (there is no second list of them)."""
    names = list(all_variables())
    namespace: dict[str, object] = {
        "__module__": __name__,
        "__qualname__": "ProvidersResource",
        "__doc__": (
            "The providers' variables. Each is wired as `EnvVar` so Dagster shows the name, never the value; a "
            "variable that is not set stays None and only the integrations needing it fail (as `config`)."
        ),
        "__annotations__": dict.fromkeys(names, str | None),
        **dict.fromkeys(names),
    }
    return type("ProvidersResource", (_ProvidersResourceBase,), namespace)


if TYPE_CHECKING:  # the generated class has one field per variable; code uses the base's methods only
    ProvidersResource = _ProvidersResourceBase
else:
    ProvidersResource = _provider_resource()
