"""The API's own settings (host and port come from the `impactin api` command line)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass

from impactin_pipelines.settings import _int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3007


@dataclass(frozen=True)
class ApiSettings:
    rate_limit_per_minute: int = 600  # per API key; failed authentications are limited per client address
    max_body_bytes: int = 256 * 1024  # an event may carry 64 KiB of metadata and 64 KiB of outcome scores
    max_query_bytes: int = 2048
    max_auth_header_chars: int = 256

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ApiSettings":
        return cls(
            rate_limit_per_minute=_int(env, "IMPACTIN_API_RATE_LIMIT_PER_MINUTE", 600, minimum=1),
            max_body_bytes=_int(env, "IMPACTIN_API_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
        )
