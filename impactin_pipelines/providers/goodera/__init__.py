"""Goodera: JSON over HTTPS with OAuth2 client credentials and a client-side rate limit."""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register
from impactin_pipelines.providers.goodera.mapping import goodera_payload
from impactin_pipelines.providers.goodera.settings import GooderaSettings

if TYPE_CHECKING:
    from impactin_pipelines.connectors.base import Connector, ConnectorContext
    from impactin_pipelines.connectors.config import ConfigResolver
    from impactin_pipelines.providers.env import ProviderEnv
    from impactin_pipelines.sandbox.core import ProviderSandbox


def new_fake() -> "ProviderSandbox":
    """The loopback fake (imported only when a sandbox is started)."""
    from impactin_pipelines.providers.goodera.fake import GooderaSandbox

    return GooderaSandbox()


def build(resolver: "ConfigResolver", ctx: "ConnectorContext") -> "Connector":
    """The company's connector (its HTTP stack is imported only when a connector is built)."""
    from impactin_pipelines.providers.goodera.connector import build as build_connector

    return build_connector(resolver, ctx)


def payload_for(settings: Mapping[str, Any], env: "ProviderEnv") -> PayloadBuilder:
    return goodera_payload


SPEC = register(
    ProviderSpec(
        name="goodera",
        settings=GooderaSettings,
        payload_for=payload_for,
        connector=build,
        fake=new_fake,
    )
)
