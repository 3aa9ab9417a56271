"""Benevity: JSON over HTTPS with an API key and an HMAC-SHA256 body signature."""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register
from impactin_pipelines.providers.benevity.mapping import benevity_payload
from impactin_pipelines.providers.benevity.settings import BenevitySettings

if TYPE_CHECKING:
    from impactin_pipelines.connectors.base import Connector, ConnectorContext
    from impactin_pipelines.connectors.config import ConfigResolver
    from impactin_pipelines.providers.env import ProviderEnv
    from impactin_pipelines.sandbox.core import ProviderSandbox


def new_fake() -> "ProviderSandbox":
    """The loopback fake (imported only when a sandbox is started)."""
    from impactin_pipelines.providers.benevity.fake import BenevitySandbox

    return BenevitySandbox()


def build(resolver: "ConfigResolver", ctx: "ConnectorContext") -> "Connector":
    """The company's connector (its HTTP stack is imported only when a connector is built)."""
    from impactin_pipelines.providers.benevity.connector import build as build_connector

    return build_connector(resolver, ctx)


def payload_for(settings: Mapping[str, Any], env: "ProviderEnv") -> PayloadBuilder:
    return benevity_payload


SPEC = register(
    ProviderSpec(
        name="benevity",
        settings=BenevitySettings,
        payload_for=payload_for,
        connector=build,
        fake=new_fake,
    )
)
