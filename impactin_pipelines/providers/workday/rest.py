"""Workday over REST: `POST {api}/api/v1/{tenant}/csr-impact-reports` with an OAuth2 client-credentials Bearer token
(from `connectors.oauth`, stored encrypted and shared across runs and processes) and `X-Idempotency-Key`.

The body is the stored payload byte for byte (`mapping.workday.workday_rest_payload`). The token is taken right
before the request leaves. A 401 forgets the token and comes back as AUTH_EXPIRED, saying whether the token was
stale: the delivery loop retries with a new token without burning an attempt, and only a current token refused
after such a refresh fails the row as `config`.
"""

import json
from datetime import UTC, datetime

import requests

from impactin_pipelines.connectors.base import (
    AttemptResult,
    ConnectivityResult,
    OutboundDelivery,
    PreparedRequest,
)
from impactin_pipelines.connectors.http import exchange
from impactin_pipelines.connectors.oauth import OAuthClientCredentials, TokenEndpointUnavailable, refusal_result
from impactin_pipelines.connectors.readback import HeldRecord, Period, ReadBackError, fetch_held
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.redaction import MASK

REPORTS_PATH = "/api/v1/{tenant}/csr-impact-reports"


def reports_url(api_url: str, tenant_id: str) -> str:
    return api_url + REPORTS_PATH.format(tenant=tenant_id)


def payload_problem(payload: str) -> str | None:
    """A stored SOAP report cannot go to the REST API (the company's protocol changed after extraction)."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        return f"stored payload is not JSON ({exc})"
    if isinstance(doc, dict) and "impact_report" in doc:
        return None
    if isinstance(doc, dict) and "CSR_Impact_Report" in doc:
        return (
            "stored payload is a Workday SOAP report but the company now uses REST "
            "(its protocol changed after extraction)"
        )
    return "stored payload is not a Workday REST report (no impact_report)"


class WorkdayRestConnector:
    provider = Provider.WORKDAY

    def __init__(
        self,
        *,
        url: str,
        oauth: OAuthClientCredentials,
        session: requests.Session,
        timeout: tuple[float, float],
        company_id: str,
    ) -> None:
        self.url = url
        self.oauth = oauth
        self.session = session
        self.timeout = timeout
        self.company_id = company_id
        self.redactor = oauth.redactor

    def __repr__(self) -> str:
        return f"WorkdayRestConnector(url={self.url!r}, company_id={self.company_id!r})"

    def _request(self, delivery: OutboundDelivery, token: str) -> PreparedRequest:
        return PreparedRequest(
            method="POST",
            url=self.url,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Idempotency-Key": delivery.delivery_id,
            },
            body=delivery.payload.encode("utf-8"),
            secret_headers=frozenset({"authorization"}),
        )

    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        """For dry runs: no token is fetched (the Authorization header is masked in any case)."""
        problem = payload_problem(delivery.payload)
        if problem:
            raise ConfigError(problem)
        return self._request(delivery, MASK)

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        started = datetime.now(UTC)
        problem = payload_problem(delivery.payload)
        if problem:
            return AttemptResult(AttemptOutcome.CONFIG, started, datetime.now(UTC), error=problem)
        try:
            token = self.oauth.token()
        except TokenEndpointUnavailable as exc:
            return AttemptResult(
                AttemptOutcome.RETRYABLE,
                started,
                datetime.now(UTC),
                http_status=exc.http_status,
                error=self.redactor.scrub(str(exc)),
                retry_after_s=exc.retry_after_s,
            )
        except ConfigError as exc:  # TokenRejected included: credentials or token URL are wrong
            return AttemptResult(AttemptOutcome.CONFIG, started, datetime.now(UTC), error=self.redactor.scrub(str(exc)))
        redactor = self.redactor.with_secrets([token.access_token])
        result, _ = exchange(
            self.session,
            self._request(delivery, token.access_token),
            timeout=self.timeout,
            redactor=redactor,
            oauth=True,
        )
        if result.outcome is AttemptOutcome.AUTH_EXPIRED:
            result = refusal_result(result, stale=self.oauth.refused(token))
        return result

    def check(self) -> ConnectivityResult:
        """REST mode authenticates at the token endpoint, so the check fetches a new token there (a
        stored one is no proof: it is keyed by token URL and client id, so it outlives a changed secret); it
        replaces the stored one. No request is made to the reports API."""
        extra = {"protocol": "rest", "token_auth_method": self.oauth.auth_method}
        try:
            self.oauth.refresh()
        except (ConfigError, TokenEndpointUnavailable) as exc:
            detail = self.redactor.scrub(str(exc)) or type(exc).__name__
            return ConnectivityResult(self.provider.value, self.company_id, False, detail, extra)
        return ConnectivityResult(
            self.provider.value, self.company_id, True, f"access token obtained ({self.oauth.auth_method})", extra
        )

    def read_back(self, period: Period) -> list[HeldRecord]:
        """What the provider holds for the period (connectors/readback: the guide documents no list endpoint)."""
        try:
            token = self.oauth.token()
        except (TokenEndpointUnavailable, ConfigError) as exc:
            raise ReadBackError(self.redactor.scrub(f"no token for the read-back: {exc}") or "no token") from None
        headers = {"Authorization": f"Bearer {token.access_token}"}
        redactor = self.redactor.with_secrets([token.access_token])
        return fetch_held(self.session, self.url, headers, period, timeout=self.timeout, redactor=redactor)

    def close(self) -> None:
        return None  # the session belongs to the factory
