"""API keys: created once (the caller sees the key one time), stored as a hash, looked up by their public id.

A key reads `imk_<key_id>_<secret>`. `key_id` (12 hex digits) is the row's primary key and safe to show in
listings and logs; `secret` (256 random bits) is never stored, only SHA-256(key_id:secret). A plain SHA-256 is
enough here: the secret is random, not a password, so there is nothing for a slow hash to protect against.
"""

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.companies import validate_company_id
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import utcnow
from impactin_pipelines.store.schema import UTCDateTime

KEY_PREFIX = "imk"
_KEY = re.compile(r"^imk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is a hint for operators, not an audit log: spare the writes

impact_api_keys = sa.Table(
    "impact_api_keys",
    sa.MetaData(),
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("company_id", sa.Text),
    sa.Column("is_admin", sa.Boolean, nullable=False),
    sa.Column("label", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)
_k = impact_api_keys


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (never its secret)."""

    key_id: str
    company_id: str | None
    is_admin: bool
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None

    @property
    def company_ids(self) -> tuple[str, ...] | None:
        """The tenant scope services take: None means every company (admin)."""
        return None if self.is_admin else (str(self.company_id),)

    @property
    def scope(self) -> str:
        return "admin" if self.is_admin else f"company:{self.company_id}"


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    token: str  # the full key, shown once


def _hash(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    match = _KEY.match(token)
    return (match.group(1), match.group(2)) if match else None


class ApiKeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._touched: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def create(self, *, company_id: str | None = None, admin: bool = False, label: str | None = None) -> NewKey:
        """A company key (company_id) or an admin key (admin=True), never both."""
        if admin == (company_id is not None):
            raise ValueError("give exactly one of company_id (a company key) or admin=True (an admin key)")
        if company_id is not None:
            validate_company_id(company_id)
        if label is not None and len(label) > 200:
            raise ValueError(f"label is {len(label)} characters long, at most 200")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = utcnow()
        row: dict[str, Any] = {
            "key_id": key_id,
            "key_hash": _hash(key_id, secret),
            "company_id": company_id,
            "is_admin": admin,
            "label": label,
            "created_at": now,
            "last_used_at": None,
            "revoked": False,
            "revoked_at": None,
        }
        with self.engine.begin() as conn:
            conn.execute(_k.insert().values(**row))
        del row["key_hash"]
        return NewKey(ApiKey(**row), f"{KEY_PREFIX}_{key_id}_{secret}")

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token is, or None (malformed, unknown, wrong secret or revoked)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with read_connection(self.engine) as conn:
            row = conn.execute(sa.select(_k).where(_k.c.key_id == key_id)).first()
        if row is None or not hmac.compare_digest(row.key_hash, _hash(key_id, secret)) or row.revoked:
            return None
        key = _key(row)
        self._touch(key.key_id)
        return key

    def _touch(self, key_id: str) -> None:
        """Record use at most once a minute per key and process (each write takes SQLite's write lock)."""
        now = utcnow()
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < TOUCH_EVERY:
                return
            self._touched[key_id] = now
        with self.engine.begin() as conn:
            conn.execute(_k.update().where(_k.c.key_id == key_id).values(last_used_at=now))

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        stmt = sa.select(_k).order_by(_k.c.created_at, _k.c.key_id)
        if not include_revoked:
            stmt = stmt.where(_k.c.revoked.is_(False))
        with read_connection(self.engine) as conn:
            return [_key(r) for r in conn.execute(stmt).all()]

    def revoke(self, key_id: str) -> bool:
        """True if the key existed and was live; it stops working on the next request."""
        with self.engine.begin() as conn:
            done = conn.execute(
                _k.update()
                .where(_k.c.key_id == key_id, _k.c.revoked.is_(False))
                .values(revoked=True, revoked_at=utcnow())
                .returning(_k.c.key_id)
            ).first()
        return done is not None


def _key(row: sa.Row) -> ApiKey:
    m = row._mapping
    return ApiKey(
        key_id=m["key_id"],
        company_id=m["company_id"],
        is_admin=bool(m["is_admin"]),
        label=m["label"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked=bool(m["revoked"]),
        revoked_at=m["revoked_at"],
    )
