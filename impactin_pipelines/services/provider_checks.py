"""Provider health checks: can each enabled integration's configuration authenticate? No impact data is
sent: OAuth providers fetch a token, Benevity sends an empty signed request that must be refused for its content.

One company's broken configuration is one failed result, never an exception that hides the others.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import ConnectivityResult
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers import spec_for
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.source import Integration, integrations

MAX_PARALLEL_CHECKS = 8


def _check_one(factory: ConnectorFactory, integration: Integration) -> ConnectivityResult:
    company, provider_name = integration.company_id, integration.provider
    try:
        provider = Provider.parse(provider_name)
        connector = factory.connector(company, provider, integration.settings)
        return spec_for(provider).check(connector)
    except (ConfigError, ValueError) as exc:
        return ConnectivityResult(provider_name, company, False, str(exc), {"error_kind": "config"})
    except Exception as exc:  # a connector bug must not hide the other integrations' results
        return ConnectivityResult(provider_name, company, False, f"check crashed: {type(exc).__name__}: {exc}")


def check_providers(
    engine: Engine,
    *,
    company_ids: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    env: ProviderEnv | None = None,
    settings: DeliverySettings | None = None,
) -> list[ConnectivityResult]:
    """One result per enabled integration matching the filters, in (company, provider) order."""
    wanted = [
        i
        for i in integrations(engine)
        if (not company_ids or i.company_id in company_ids) and (not providers or i.provider in providers)
    ]
    if not wanted:
        return []
    factory = ConnectorFactory(engine, settings=settings, env=env)
    try:
        with ThreadPoolExecutor(min(MAX_PARALLEL_CHECKS, len(wanted)), thread_name_prefix="impactin-check") as pool:
            return list(pool.map(lambda i: _check_one(factory, i), wanted))
    finally:
        factory.close()
