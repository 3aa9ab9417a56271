"""Benevity: JSON over HTTPS with an API key and an HMAC-SHA256 body signature."""

from collections.abc import Mapping
from typing import Any

from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register
from impactin_pipelines.providers.benevity.connector import build
from impactin_pipelines.providers.benevity.fake import BenevitySandbox
from impactin_pipelines.providers.benevity.mapping import benevity_payload
from impactin_pipelines.providers.benevity.settings import BenevitySettings


def payload_for(settings: Mapping[str, Any], env: Any) -> PayloadBuilder:
    return benevity_payload


SPEC = register(
    ProviderSpec(
        name="benevity",
        settings=BenevitySettings,
        payload_for=payload_for,
        connector=build,
        fake=BenevitySandbox,
    )
)
