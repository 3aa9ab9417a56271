"""The providers we deliver to, one `ProviderSpec` each, registered by name.

Everything that differs between providers lives in its folder (`providers/<name>/`) and is reached through its
spec: services, the sandbox server, the CLI and the API ask this registry, so adding a provider is adding a folder
(or calling `register` with a spec) and nothing else.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings

from impactin_pipelines.domain.events import ImpactEvent

if TYPE_CHECKING:
    from impactin_pipelines.connectors.base import ConnectivityResult, Connector, ConnectorContext
    from impactin_pipelines.connectors.config import ConfigResolver
    from impactin_pipelines.providers.env import ProviderEnv
    from impactin_pipelines.sandbox.core import ProviderSandbox

PayloadBuilder = Callable[[ImpactEvent], dict[str, Any]]
"""Pure: one event -> the provider's document. Raises InvalidEvent when the event cannot be expressed in it."""


def _check(connector: "Connector") -> "ConnectivityResult":
    return connector.check()


@dataclass(frozen=True)
class ProviderSpec:
    """One provider: what it is called, the variables it reads, how events become its documents, how they are sent,
    how its connectivity is checked and the loopback fake that stands in for it."""

    name: str
    settings: type[BaseSettings]
    """Its environment variables: a pydantic-settings model whose env_prefix plus field name is the variable."""
    payload_for: Callable[[Mapping[str, Any], "ProviderEnv"], PayloadBuilder]
    """The document builder one integration uses, from its company settings and the environment (Workday's
    SOAP/REST choice is made here). Raises ConfigError when the settings cannot choose one."""
    connector: Callable[["ConfigResolver", "ConnectorContext"], "Connector"]
    fake: Callable[[], "ProviderSandbox"]
    check: Callable[["Connector"], "ConnectivityResult"] = _check

    def variables(self) -> dict[str, str]:
        """Field name -> environment variable name, e.g. `api_url` -> `BENEVITY_API_URL`."""
        prefix = self.settings.model_config.get("env_prefix", "")
        return {field: f"{prefix}{field}".upper() for field in self.settings.model_fields}


REGISTRY: dict[str, ProviderSpec] = {}


def register(spec: ProviderSpec) -> ProviderSpec:
    """Add (or replace) a provider; its name must be a lower-case identifier, as it is a partition key and a URL
    segment."""
    if not spec.name.isidentifier() or spec.name != spec.name.lower():
        raise ValueError(f"provider name {spec.name!r} must be a lower-case identifier")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def spec_for(name: str) -> ProviderSpec:
    """The registered spec; a name nobody registered is a ValueError naming it and the known ones."""
    found = REGISTRY.get(str(name))
    if found is None:
        raise ValueError(f"provider {str(name)!r} is not one of: {', '.join(REGISTRY)}")
    return found


def provider_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def specs() -> tuple[ProviderSpec, ...]:
    return tuple(REGISTRY.values())


def all_variables() -> dict[str, tuple[ProviderSpec, str]]:
    """Every registered provider's environment variable -> (its spec, the settings field)."""
    return {var: (spec, field) for spec in REGISTRY.values() for field, var in spec.variables().items()}


# The built-in providers register themselves on import, in this order (the order of partitions and listings).
from impactin_pipelines.providers import benevity, goodera, workday  # noqa: E402

__all__ = [
    "REGISTRY",
    "PayloadBuilder",
    "ProviderSpec",
    "all_variables",
    "benevity",
    "goodera",
    "provider_names",
    "register",
    "spec_for",
    "specs",
    "unregister",
    "workday",
]
