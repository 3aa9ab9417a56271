"""Benevity: API key + HMAC-SHA256 over the exact body bytes we send."""

import hashlib
import hmac
from dataclasses import dataclass

import requests

from impactin_pipelines.connectors.base import (
    AttemptResult,
    ConnectivityResult,
    ConnectorContext,
    OutboundDelivery,
    PreparedRequest,
)
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import exchange, require_secure_url
from impactin_pipelines.connectors.readback import HeldRecord, Period, fetch_held
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.security.redaction import Redactor

ENDPOINT = "/api/v1/impact-events"


@dataclass(frozen=True, repr=False)
class BenevityConfig:
    api_url: str
    api_key: str
    signature_secret: str

    @classmethod
    def resolve(cls, r: ConfigResolver) -> "BenevityConfig":
        api_url = r.value("api_url", "BENEVITY_API_URL")
        api_key = r.secret("api_key", "BENEVITY_API_KEY")
        secret = r.secret("signature_secret", "BENEVITY_SIGNATURE_SECRET")
        r.done()
        assert api_url and api_key and secret
        return cls(require_secure_url("BENEVITY_API_URL", api_url), api_key, secret)

    def __repr__(self) -> str:
        return f"BenevityConfig(api_url={self.api_url!r})"


def sign(body: bytes, secret: str) -> str:
    """Lowercase hex HMAC-SHA256 of the body, as `X-Benevity-Signature` carries it."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class BenevityConnector:
    provider = Provider.BENEVITY

    def __init__(
        self,
        config: BenevityConfig,
        session: requests.Session,
        *,
        timeout: tuple[float, float],
        company_id: str,
    ) -> None:
        self.config = config
        self.session = session
        self.timeout = timeout
        self.company_id = company_id
        self.redactor = Redactor([config.api_key, config.signature_secret])

    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        body = delivery.payload.encode("utf-8")
        return PreparedRequest(
            method="POST",
            url=self.config.api_url + ENDPOINT,
            headers={
                "Content-Type": "application/json",
                "X-API-Key": self.config.api_key,
                "X-Benevity-Signature": sign(body, self.config.signature_secret),
                "X-Idempotency-Key": delivery.delivery_id,
            },
            body=body,
            secret_headers=frozenset({"x-api-key"}),
        )

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        result, _ = exchange(self.session, self.prepare(delivery), timeout=self.timeout, redactor=self.redactor)
        return result

    def read_back(self, period: Period) -> list[HeldRecord]:
        """What Benevity holds for the period (connectors/readback: the guide documents no list endpoint)."""
        headers = {"X-API-Key": self.config.api_key}
        url = self.config.api_url + ENDPOINT
        return fetch_held(self.session, url, headers, period, timeout=self.timeout, redactor=self.redactor)

    def check(self) -> ConnectivityResult:
        """Benevity has no token endpoint: an authenticated request with an empty body must be refused for
        its content (400/422), not for its credentials (401/403)."""
        request = self.prepare(OutboundDelivery("connectivity-check", self.company_id, self.provider.value, "-", "{}"))
        request = PreparedRequest(
            request.method, request.url, {**request.headers, "X-Impactin-Check": "1"}, request.body
        )
        result, _ = exchange(self.session, request, timeout=self.timeout, redactor=self.redactor)
        status = result.http_status
        ok = status is not None and status not in (401, 403) and status < 500
        detail = f"HTTP {status}" if status is not None else (result.error or "no response")
        return ConnectivityResult(self.provider.value, self.company_id, ok, detail)

    def close(self) -> None:
        return None


def build(resolver: ConfigResolver, ctx: ConnectorContext) -> BenevityConnector:
    return BenevityConnector(
        BenevityConfig.resolve(resolver), ctx.session, timeout=ctx.timeout, company_id=ctx.company_id
    )
