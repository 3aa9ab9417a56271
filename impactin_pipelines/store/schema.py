"""SQLAlchemy Core views of the tables the SQL migrations create (the migrations are the source of truth;
a test checks these match them)."""

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite keeps text and forgets the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} would be stored without its zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Raw(TypeDecorator[Any]):
    """A landing column (TEXT) written by another system and read back exactly as stored, so a malformed value
    reaches validation instead of crashing the query. Python values are written in their canonical text form."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return value


class StoredDoc(TypeDecorator[Any]):
    """A JSON document the database derives and keeps for its own operators and indexes (jsonb on PostgreSQL, text
    on SQLite). Selected as its text, so Python never parses it: landing JSON may hold what Python's json refuses
    (an integer of 5,000 digits), and reading a row must not fail on it."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else sa.Text())

    def column_expression(self, colexpr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.cast(colexpr, sa.Text)


metadata = sa.MetaData()

impact_events = sa.Table(
    "impact_events",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("company_id", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text),
    sa.Column("event_type", sa.Text),
    sa.Column("occurred_at", Raw),
    sa.Column("value", Raw),
    sa.Column("unit", sa.Text),
    sa.Column("outcome_scores", Raw),
    sa.Column("metadata", Raw),
    sa.Column("created_at", UTCDateTime, nullable=False, server_default=sa.func.current_timestamp()),
    # `metadata` parsed by the database (sql/0012), NULL when it is no JSON: PostgreSQL stores it (jsonb, GIN-indexed
    # for the metadata filter), SQLite computes it when read. Never written by us.
    sa.Column(
        "metadata_doc",
        StoredDoc(),
        sa.Computed("impactin_jsonb_or_null(metadata)", persisted=True),
    ),
)

company_integrations = sa.Table(
    "company_integrations",
    metadata,
    sa.Column("company_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("settings", Raw),
)

impact_deliveries = sa.Table(
    "impact_deliveries",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("company_id", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("delivery_id", sa.Text, nullable=False, unique=True),
    sa.Column("payload", sa.Text),
    sa.Column("payload_hash", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error_kind", sa.Text),
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("provider_response", sa.Text),
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("claimed_by", sa.Text),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("claim_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),  # 1 urgent, 0 normal: claimed highest first
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("confirmed_at", UTCDateTime),
    sa.Column("confirmation", sa.Text),
    sa.UniqueConstraint("company_id", "provider", "event_id", name="uq_impact_deliveries_event"),
)

impact_delivery_attempts = sa.Table(
    "impact_delivery_attempts",
    metadata,
    sa.Column("delivery_id", sa.Text, primary_key=True),
    sa.Column("attempt_number", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Text),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("response_excerpt", sa.Text),
    sa.Column("request_body", sa.Text),
)

impact_delivery_callbacks = sa.Table(
    "impact_delivery_callbacks",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("callback_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("delivery_id", sa.Text),
    sa.Column("company_id", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("event_id", sa.Text),
    sa.Column("provider_reference", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("effect", sa.Text, nullable=False),
    sa.Column("signed_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.UniqueConstraint("provider", "callback_id", name="uq_impact_delivery_callbacks_callback"),
)

impact_reconciliations = sa.Table(
    "impact_reconciliations",
    metadata,
    sa.Column("company_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("period_start", UTCDateTime, nullable=False),
    sa.Column("period_end", UTCDateTime, nullable=False),
    sa.Column("ours", sa.Integer, nullable=False),
    sa.Column("held", sa.Integer, nullable=False),
    sa.Column("differences", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("reconciled_at", UTCDateTime, nullable=False),
)

impact_reconciliation_differences = sa.Table(
    "impact_reconciliation_differences",
    metadata,
    sa.Column("company_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("problem", sa.Text, primary_key=True),
    sa.Column("ref", sa.Text, primary_key=True),
    sa.Column("row_id", sa.Text),
    sa.Column("event_id", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("found_at", UTCDateTime, nullable=False),
)

impact_provider_tokens = sa.Table(
    "impact_provider_tokens",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("credential_key", sa.Text, primary_key=True),
    sa.Column("access_token_encrypted", sa.Text, nullable=False),
    sa.Column("refresh_token_encrypted", sa.Text),
    sa.Column("token_type", sa.Text),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

impactin_circuits = sa.Table(
    "impactin_circuits",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("scope", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False, server_default="closed"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("trips", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_until", UTCDateTime),
    sa.Column("probe_until", UTCDateTime),
    sa.Column("company_id", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

impact_api_rate_hits = sa.Table(
    "impact_api_rate_hits",
    metadata,
    sa.Column("caller", sa.Text, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_impact_api_rate_hits_caller", "caller", "at_ms"),
    sa.Index("ix_impact_api_rate_hits_at", "at_ms"),
)

impact_api_jobs = sa.Table(
    "impact_api_jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("company_id", sa.Text, nullable=False),
    sa.Column("provider", sa.Text),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("processed", sa.Integer, nullable=False, default=0),
    sa.Column("succeeded", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("summary", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("heartbeat_at", UTCDateTime),
)
