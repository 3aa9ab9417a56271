"""Which document builder an integration uses: its provider's choice (`ProviderSpec.payload_for`)."""

from collections.abc import Mapping
from typing import Any

from impactin_pipelines.domain.events import ImpactEvent
from impactin_pipelines.providers import PayloadBuilder, spec_for
from impactin_pipelines.providers.env import ProviderEnv


def payload_builder(
    provider: str, settings: Mapping[str, Any] | None = None, env: ProviderEnv | None = None
) -> PayloadBuilder:
    """The builder for one integration (company settings, then the environment). Raises ConfigError."""
    return spec_for(provider).payload_for(
        settings if settings is not None else {}, env if env is not None else ProviderEnv()
    )


def build_payload(
    provider: str, event: ImpactEvent, *, settings: Mapping[str, Any] | None = None, env: ProviderEnv | None = None
) -> dict[str, Any]:
    """The provider document for one event. Raises InvalidEvent when the event cannot be expressed in it."""
    return payload_builder(provider, settings, env)(event)
