"""Receive one provider webhook callback: choose the secret, verify, refuse replays, record (store/confirmations).

Order matters: nothing is written before the signature is proven. The body is only peeked at, read-only, to find the
delivery and so its company, whose own webhook secret (`settings.webhook_secret`, stored encrypted like every
per-company secret) replaces the provider's `<PROVIDER>_WEBHOOK_SECRET`. A callback id already stored with the same
signed timestamp is a replay (401); with another timestamp it is the provider sending the callback again (200,
`duplicate`, nothing changes).
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from impactin_pipelines.connectors.config import ConfigResolver, parse_settings
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.providers import spec_for
from impactin_pipelines.security.webhooks import SignatureError, verify
from impactin_pipelines.store import source
from impactin_pipelines.store.confirmations import Confirmations, Target, parse_callback, peek_reference

SECRET_FIELD = "webhook_secret"  # noqa: S105 - the name of a settings field, not a secret


@dataclass(frozen=True)
class Received:
    effect: str
    callback_id: str
    delivery_id: str | None


def secret_variable(provider: str) -> str:
    """`BENEVITY_WEBHOOK_SECRET` and so on, from the provider's settings model."""
    return spec_for(provider).variables()[SECRET_FIELD]


def webhook_secret(factory: ConnectorFactory, provider: str, company_id: str | None) -> str | None:
    """The company's own secret when its integration sets one, else the provider's environment variable."""
    settings: dict[str, object] = {}
    if company_id is not None:
        integration = source.integration(factory.engine, company_id, provider)
        if integration is not None:
            settings = parse_settings(integration.settings, company_id=company_id, provider=provider)
    resolver = ConfigResolver(
        company_id=company_id or "-", provider=provider, settings=settings, env=factory.env, keyring=factory.keyring
    )
    return resolver.secret(SECRET_FIELD, secret_variable(provider), required=False)


def receive(
    factory: ConnectorFactory,
    provider: str,
    body: bytes,
    signature: str | None,
    *,
    tolerance_s: float,
    now: datetime | None = None,
) -> Received:
    """Verify and record one callback. SignatureError: not authentic, stale or replayed (nothing written);
    CallbackError: authentic but unreadable (nothing written); ConfigError: the company's secret cannot be read."""
    now = now or datetime.now(UTC)
    store = Confirmations(factory.engine)
    key, event_id = peek_reference(body)
    target: Target | None = store.find(provider, key, event_id) if (key or event_id) else None
    try:
        secret = webhook_secret(factory, provider, target.company_id if target else None)
    except ConfigError:
        raise SignatureError("the webhook secret for this delivery's company cannot be read") from None
    timestamp = verify(signature, body, [secret] if secret else [], now=now.timestamp(), tolerance_s=tolerance_s)
    callback = parse_callback(provider, body)
    signed_at = datetime.fromtimestamp(timestamp, UTC)
    seen = store.signed_at(provider, callback.callback_id)
    if seen is not None and seen == signed_at:
        raise SignatureError("this callback was already received with this signature (a replay)")
    effect = store.record(callback, target, signed_at=signed_at, now=now)
    return Received(effect, callback.callback_id, target.delivery_id if target else None)
