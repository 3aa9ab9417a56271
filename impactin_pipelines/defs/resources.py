"""Resources: the warehouse engine, delivery tuning and the provider credentials (as EnvVar, never values)."""

import os
from dataclasses import fields

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from impactin_pipelines.settings import DeliverySettings, ProviderEnv, warehouse_url
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
    # Every delivery is a line on the run's stderr (its compute log) and in the warehouse's attempt log. Lines at or
    # above this level (IMPACTIN_RUN_LOG_LEVEL) also enter Dagster's run log, each an event-log write (~3 ms on
    # SQLite storage): WARNING keeps retries and failures there; INFO adds every success, at half the throughput.
    run_log_level: str = Field(default="WARNING", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

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
            run_log_level=os.environ.get("IMPACTIN_RUN_LOG_LEVEL", "WARNING").upper(),
        )


class ProvidersResource(dg.ConfigurableResource):
    """The integration guide's variables. Each is wired as `EnvVar` so Dagster shows the name, never the value;
    a variable that is not set stays None and only the integrations needing it fail (as `config`)."""

    BENEVITY_API_URL: str | None = None
    BENEVITY_API_KEY: str | None = None
    BENEVITY_SIGNATURE_SECRET: str | None = None
    GOODERA_API_URL: str | None = None
    GOODERA_TOKEN_URL: str | None = None
    GOODERA_CLIENT_ID: str | None = None
    GOODERA_CLIENT_SECRET: str | None = None
    GOODERA_RATE_LIMIT: str | None = None
    GOODERA_TOKEN_AUTH_METHOD: str | None = None
    WORKDAY_API_URL: str | None = None
    WORKDAY_TENANT_ID: str | None = None
    WORKDAY_PROTOCOL: str | None = None
    WORKDAY_USERNAME: str | None = None
    WORKDAY_PASSWORD: str | None = None
    WORKDAY_PASSWORD_TYPE: str | None = None
    WORKDAY_CLIENT_ID: str | None = None
    WORKDAY_CLIENT_SECRET: str | None = None
    WORKDAY_TOKEN_URL: str | None = None
    WORKDAY_TOKEN_AUTH_METHOD: str | None = None

    def provider_env(self) -> ProviderEnv:
        return ProviderEnv(**{f.name: getattr(self, f.name) for f in fields(ProviderEnv)})

    @classmethod
    def from_env(cls) -> "ProvidersResource":
        names = [f.name for f in fields(ProviderEnv)]
        return cls(**{name: dg.EnvVar(name) for name in names if os.environ.get(name)})
