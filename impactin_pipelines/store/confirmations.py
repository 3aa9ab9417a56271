"""What providers tell us after the send: their webhook callbacks (confirmed, rejected, deleted), recorded on the
delivery and kept as an audit row each.

A callback names its delivery by our idempotency key (the `delivery_id` we sent as X-Idempotency-Key) or by the
event id the payload carried. Every distinct callback (provider, callback id) is stored once, in the transaction
that applies it; the same callback again changes nothing. One that matches no delivery of ours is kept with
`effect = 'unmatched'` and reported (the confirmation ledger check, `unmatched`), never dropped.

A rejection of a row that already succeeded turns it `failed/rejected` with the provider's reason, so stats, checks
and `--all-failed` replays see it. A rejection that arrives before our run has settled the row (the provider's
callback raced our own bookkeeping) marks it, and `Outbox.record` then settles it `failed/rejected` instead of
`success`. A deletion is recorded (`confirmation = 'deleted'`) without resending: the provider removed it on
purpose; reconciliation reports such rows as deleted rather than missing.
"""

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_callbacks as cb

KINDS = ("confirmed", "rejected", "deleted")
TYPE_PREFIX = "delivery."
MAX_ID_CHARS = 256
MAX_REASON_CHARS = 1000
MAX_BODY_CHARS = 16_000


class CallbackError(ValueError):
    """A callback body we cannot read; the message names the field and its value."""


@dataclass(frozen=True)
class Callback:
    provider: str
    callback_id: str
    kind: str  # one of KINDS
    idempotency_key: str | None
    event_id: str | None
    provider_reference: str | None
    reason: str | None
    body: str


@dataclass(frozen=True)
class Target:
    """The delivery a callback is about."""

    delivery_id: str
    company_id: str
    status: str


def _text(doc: Mapping[str, Any], field: str, *, required: bool = False, limit: int = MAX_ID_CHARS) -> str | None:
    value = doc.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        shown = repr(value)[:80]
        raise CallbackError(f"{field} must be a non-empty string of at most {limit} characters (got {shown})")
    return value.strip()


def parse_callback(provider: str, raw: bytes) -> Callback:
    """The callback in a (verified) body: `{"id", "type": "delivery.confirmed|rejected|deleted", "idempotencyKey"
    and/or "eventId", "providerReference"?, "reason"?}`."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CallbackError("the body is not a JSON document") from None
    if not isinstance(doc, dict):
        raise CallbackError("the body must be a JSON object")
    callback_id = _text(doc, "id", required=True)
    kind_text = _text(doc, "type", required=True) or ""
    kind = kind_text.removeprefix(TYPE_PREFIX)
    if kind not in KINDS:
        allowed = ", ".join(TYPE_PREFIX + k for k in KINDS)
        raise CallbackError(f"type must be one of {allowed} (got {kind_text[:80]!r})")
    key, event_id = _text(doc, "idempotencyKey"), _text(doc, "eventId")
    if key is None and event_id is None:
        raise CallbackError("idempotencyKey or eventId is required")
    assert callback_id is not None
    return Callback(
        provider=provider,
        callback_id=callback_id,
        kind=kind,
        idempotency_key=key,
        event_id=event_id,
        provider_reference=_text(doc, "providerReference"),
        reason=_text(doc, "reason", limit=MAX_REASON_CHARS),
        body=raw.decode("utf-8")[:MAX_BODY_CHARS],
    )


def peek_reference(raw: bytes) -> tuple[str | None, str | None]:
    """(idempotencyKey, eventId) of a body not yet verified, to choose the secret that verifies it; nothing is
    trusted or written on the strength of this."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    key, event_id = doc.get("idempotencyKey"), doc.get("eventId")
    return (key if isinstance(key, str) else None), (event_id if isinstance(event_id, str) else None)


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


class Confirmations:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find(self, provider: str, idempotency_key: str | None, event_id: str | None) -> Target | None:
        """The delivery by idempotency key (within the provider), else by event id."""
        with read_connection(self.engine) as conn:
            for column, value in ((d.c.delivery_id, idempotency_key), (d.c.event_id, event_id)):
                if not value:
                    continue
                row = conn.execute(
                    sa.select(d.c.delivery_id, d.c.company_id, d.c.status)
                    .where(d.c.provider == provider, column == value)
                    .limit(1)
                ).first()
                if row is not None:
                    return Target(row.delivery_id, row.company_id, row.status)
        return None

    def signed_at(self, provider: str, callback_id: str) -> datetime | None:
        """When the stored callback with this id was signed (None: never seen)."""
        with read_connection(self.engine) as conn:
            return conn.execute(
                sa.select(cb.c.signed_at).where(cb.c.provider == provider, cb.c.callback_id == callback_id)
            ).scalar_one_or_none()

    def record(self, callback: Callback, target: Target | None, *, signed_at: datetime, now: datetime) -> str:
        """Store the callback and apply it, in one transaction; return its effect: `duplicate` (seen before,
        nothing changed), `unmatched`, `confirmed`, `rejected` (a success turned failed/rejected),
        `rejected_unsettled` (marked; the run settling it will fail it), `deleted`, or `ignored` (a confirmation
        after a rejection or deletion: the earlier verdict stands)."""
        row_id = str(uuid.uuid4())
        values = {
            "id": row_id,
            "provider": callback.provider,
            "callback_id": callback.callback_id,
            "kind": callback.kind,
            "delivery_id": target.delivery_id if target else None,
            "company_id": target.company_id if target else None,
            "idempotency_key": callback.idempotency_key,
            "event_id": callback.event_id,
            "provider_reference": callback.provider_reference,
            "reason": callback.reason,
            "effect": "unmatched",
            "signed_at": signed_at,
            "received_at": now,
            "body": callback.body,
        }
        stmt = _insert(self.engine)(cb).values(**values).on_conflict_do_nothing().returning(cb.c.id)
        with self.engine.begin() as conn:
            if conn.execute(stmt).first() is None:
                return "duplicate"
            if target is None:
                return "unmatched"
            effect = self._apply(conn, callback, target.delivery_id, now)
            conn.execute(sa.update(cb).where(cb.c.id == row_id).values(effect=effect))
        return effect

    @staticmethod
    def _apply(conn: sa.Connection, callback: Callback, delivery_id: str, now: datetime) -> str:
        row = d.c.delivery_id == delivery_id
        if callback.kind == "confirmed":
            moved = conn.execute(
                sa.update(d)
                .where(row, sa.or_(d.c.confirmation.is_(None), d.c.confirmation == "confirmed"))
                .values(confirmation="confirmed", confirmed_at=now)
                .returning(d.c.id)
            ).first()
            return "confirmed" if moved else "ignored"
        if callback.kind == "deleted":
            conn.execute(sa.update(d).where(row).values(confirmation="deleted", confirmed_at=now))
            return "deleted"
        reason = f"rejected by {callback.provider} after accepting it: {callback.reason or 'no reason given'}"
        failed = conn.execute(
            sa.update(d)
            .where(row, d.c.status == DeliveryStatus.SUCCESS.value)
            .values(
                confirmation="rejected",
                confirmed_at=now,
                status=DeliveryStatus.FAILED.value,
                error_kind=ErrorKind.REJECTED.value,
                last_error=reason,
                next_attempt_at=None,
                updated_at=now,
            )
            .returning(d.c.id)
        ).first()
        if failed:
            return "rejected"
        conn.execute(sa.update(d).where(row).values(confirmation="rejected", confirmed_at=now, last_error=reason))
        return "rejected_unsettled"

    def callbacks(
        self, *, delivery_id: str | None = None, unmatched: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored callbacks, newest first: those of one delivery, or those that matched none."""
        stmt = sa.select(cb).order_by(cb.c.received_at.desc(), cb.c.id).limit(limit)
        if delivery_id is not None:
            stmt = stmt.where(cb.c.delivery_id == delivery_id)
        if unmatched:
            stmt = stmt.where(cb.c.delivery_id.is_(None))
        with read_connection(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(stmt).all()]
