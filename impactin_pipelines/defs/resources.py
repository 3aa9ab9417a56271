"""Resources: the warehouse engine, delivery tuning and the provider credentials (as EnvVar, never values)."""

import os

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from impactin_pipelines.providers import all_variables
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.settings import DeliverySettings, warehouse_url
from impactin_pipelines.store.engine import make_engine


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
        if os.environ.get("IMPACTIN_WAREHOUSE_URL"):
            return cls(url=dg.EnvVar("IMPACTIN_WAREHOUSE_URL"))
        return cls(url=warehouse_url())


class DeliveryResource(dg.ConfigurableResource):
    """Tuning of one delivery pass; defaults come from the IMPACTIN_* environment, run config may override."""

    concurrency: int = 8
    lease_s: float = 60.0
    max_run_attempts: int = 5
    # Every delivery is a line in the run log at INFO (the guide's logging contract). Each line is an event in
    # Dagster's event log (~3 ms on SQLite storage): "WARNING" keeps only retries and failures there and roughly
    # doubles a run's throughput at 20 ms provider latency; the warehouse's attempt log keeps everything either way.
    run_log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    def settings(self) -> DeliverySettings:
        base = DeliverySettings.from_env()
        return DeliverySettings(
            concurrency=self.concurrency,
            claim_batch=base.claim_batch,
            lease_s=self.lease_s,
            connect_timeout_s=base.connect_timeout_s,
            read_timeout_s=base.read_timeout_s,
            max_run_attempts=self.max_run_attempts,
            retry=base.retry,
        )

    @classmethod
    def from_env(cls) -> "DeliveryResource":
        base = DeliverySettings.from_env()
        return cls(
            concurrency=base.concurrency,
            lease_s=base.lease_s,
            max_run_attempts=base.max_run_attempts,
            run_log_level=os.environ.get("IMPACTIN_RUN_LOG_LEVEL", "INFO").upper(),
        )


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


ProvidersResource = _provider_resource()
