"""Workday: SOAP (WS-Security UsernameToken) or REST (OAuth2), chosen per integration by `protocol`."""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register
from impactin_pipelines.providers.workday.mapping import workday_rest_payload, workday_soap_report
from impactin_pipelines.providers.workday.settings import WorkdaySettings

if TYPE_CHECKING:
    from impactin_pipelines.connectors.base import Connector, ConnectorContext
    from impactin_pipelines.connectors.config import ConfigResolver
    from impactin_pipelines.providers.env import ProviderEnv
    from impactin_pipelines.sandbox.core import ProviderSandbox


def new_fake() -> "ProviderSandbox":
    """The loopback fake (imported only when a sandbox is started)."""
    from impactin_pipelines.providers.workday.fake import WorkdaySandbox

    return WorkdaySandbox()


def build(resolver: "ConfigResolver", ctx: "ConnectorContext") -> "Connector":
    """The company's connector (its HTTP stack is imported only when a connector is built)."""
    from impactin_pipelines.providers.workday.connector import build as build_connector

    return build_connector(resolver, ctx)


def payload_for(settings: Mapping[str, Any], env: "ProviderEnv") -> PayloadBuilder:
    """SOAP's report or REST's document, as the company's `protocol` (else WORKDAY_PROTOCOL, else SOAP) says."""
    from impactin_pipelines.providers.workday.connector import protocol_of

    protocol = protocol_of(str(settings.get("protocol") or env.get("WORKDAY_PROTOCOL") or "soap"))
    return workday_rest_payload if protocol == "rest" else workday_soap_report


SPEC = register(
    ProviderSpec(
        name="workday",
        settings=WorkdaySettings,
        payload_for=payload_for,
        connector=build,
        fake=new_fake,
    )
)
