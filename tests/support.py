"""Helpers for tests: seed the source contract, read the ledger."""

import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.schema import company_integrations, impact_deliveries, impact_events

if TYPE_CHECKING:
    from impactin_pipelines.connectors.registry import ConnectorFactory
    from impactin_pipelines.settings import DeliverySettings

SPEC_EVENT: dict[str, Any] = {
    "event_id": "evt_123",
    "company_id": "company_789",
    "user_id": "user_456",
    "event_type": "volunteer_hours",
    "occurred_at": datetime(2025, 11, 14, 10, 0, tzinfo=UTC),
    "value": 5.0,
    "unit": "hours",
    "outcome_scores": {"community_engagement": 0.85, "skill_development": 0.72},
    "metadata": {"program": "buddy_mentoring"},
}


def event(event_id: str, company_id: str = "acme", **overrides: Any) -> dict[str, Any]:
    return {**SPEC_EVENT, "event_id": event_id, "company_id": company_id, **overrides}


def events(company_id: str, n: int, prefix: str = "evt") -> list[dict[str, Any]]:
    return [event(f"{prefix}_{company_id}_{i:05d}", company_id) for i in range(n)]


def add_integration(
    engine: Engine, company_id: str, provider: str, *, settings: Any = None, enabled: bool = True
) -> None:
    with engine.begin() as conn:
        conn.execute(
            company_integrations.insert().values(
                company_id=company_id, provider=provider, enabled=enabled, settings=settings
            )
        )


def add_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(impact_events.insert(), rows)


def statuses(engine: Engine, provider: str | None = None) -> Counter[str]:
    stmt = sa.select(impact_deliveries.c.status, sa.func.count()).group_by(impact_deliveries.c.status)
    if provider:
        stmt = stmt.where(impact_deliveries.c.provider == provider)
    with engine.connect() as conn:
        return Counter(dict(conn.execute(stmt).all()))


def rows(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    stmt = sa.select(impact_deliveries).order_by(impact_deliveries.c.event_id)
    for name, value in where.items():
        stmt = stmt.where(impact_deliveries.c[name] == value)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]


def fast_settings(**overrides: Any) -> "DeliverySettings":
    """Real retries with short sleeps, so tests exercise the policy without waiting for it."""
    from impactin_pipelines.settings import DeliverySettings, RetrySettings

    retry = RetrySettings(initial_delay_s=0.01, max_delay_s=0.05, rerun_base_delay_s=60, **overrides.pop("retry", {}))
    return DeliverySettings(**{"concurrency": 4, "lease_s": 30.0, "retry": retry, **overrides})


def factory_for(engine: Engine, sandbox: Any, **overrides: Any) -> "ConnectorFactory":
    from impactin_pipelines.connectors.registry import ConnectorFactory
    from impactin_pipelines.providers.env import ProviderEnv

    return ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env()), settings=fast_settings(**overrides))


def deliver(engine: Engine, factory: Any, provider: str, companies: list[str] | None = None, **kwargs: Any) -> Any:
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.services.deliver import DeliveryRun

    return DeliveryRun(engine, factory, provider=Provider(provider), company_ids=companies, **kwargs).run()


def attempts(engine: Engine, delivery_id: str | None = None) -> list[dict[str, Any]]:
    from impactin_pipelines.store.schema import impact_delivery_attempts as a

    stmt = sa.select(a).order_by(a.c.delivery_id, a.c.attempt_number)
    if delivery_id:
        stmt = stmt.where(a.c.delivery_id == delivery_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]


def own_pid_namespace(*, mount_proc: bool = True) -> list[str]:
    """A command prefix that runs a command in a PID namespace of its own, with the host's hostname and network (as
    a container with host networking does); `mount_proc`: with a /proc of that namespace. Fails, never skips, where
    it cannot (it needs util-linux `unshare` and root or CAP_SYS_ADMIN): the claims tests prove containers with it."""
    wrapper = ["unshare", "--fork", "--pid", *(["--mount-proc"] if mount_proc else [])]
    if shutil.which("unshare") is None:
        pytest.fail("util-linux `unshare` is required for the PID-namespace tests (apt-get install util-linux)")
    probe = subprocess.run([*wrapper, "true"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.fail(f"`{' '.join(wrapper)} true` failed (it needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}")
    return wrapper
