"""Goodera: JSON over HTTPS with OAuth2 client credentials and a client-side rate limit."""

from collections.abc import Mapping
from typing import Any

from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register
from impactin_pipelines.providers.goodera.connector import build
from impactin_pipelines.providers.goodera.fake import GooderaSandbox
from impactin_pipelines.providers.goodera.mapping import goodera_payload
from impactin_pipelines.providers.goodera.settings import GooderaSettings


def payload_for(settings: Mapping[str, Any], env: Any) -> PayloadBuilder:
    return goodera_payload


SPEC = register(
    ProviderSpec(
        name="goodera",
        settings=GooderaSettings,
        payload_for=payload_for,
        connector=build,
        fake=GooderaSandbox,
    )
)
