"""OAuth tokens per (provider, credentials) in `impact_provider_tokens`, encrypted at rest with the KeyRing.

A client-credentials token belongs to the client that asked for it: the companies that use the environment's
credentials for a provider share its token (a night of a thousand of them asks the token endpoint once). A company
with credentials of its own (any of them in its settings) has a token of its own, so its settings alone decide
whether it can fetch one. A token is only ever handed back for the credentials it was issued to: `credential_key`
is a hash of (token URL, client id, scope, and the owning company for a company's own), so changing any of them
makes the stored token invisible rather than wrongly reused.

`exclusive()` is the cross-process half of single-flight refresh: a transaction that holds a lock for the
(provider, credentials) pair while the caller checks, fetches and saves. PostgreSQL: a transaction-scoped advisory
lock (it also covers the first fetch, when there is no row to `SELECT ... FOR UPDATE`). SQLite: the engine's
`BEGIN IMMEDIATE`, the database's single writer lock.
"""

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from impactin_pipelines.security.crypto import DecryptionError, KeyRing
from impactin_pipelines.store.engine import is_sqlite, read_connection
from impactin_pipelines.store.schema import impact_provider_tokens as t

LOG = logging.getLogger("impactin.tokens")


def credential_key(token_url: str, client_id: str, scope: str | None = None, owner: str | None = None) -> str:
    """Which credentials a token belongs to, without storing them (a token asked with a scope is another token).
    `owner`: the company whose own credentials these are (None: the environment's, shared by every company)."""
    identity = f"{token_url.rstrip('/')}\n{client_id}" + (f"\n{scope}" if scope else "")
    if owner is not None:
        identity += f"\ncompany:{owner}"
    return hashlib.sha256(identity.encode()).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredToken:
    access_token: str
    issued_at: datetime
    expires_at: datetime
    token_type: str = "Bearer"  # noqa: S105 - a scheme name, not a secret
    refresh_token: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"StoredToken(token_type={self.token_type!r}, expires_at={self.expires_at.isoformat()})"

    def refresh_at(self, skew_s: float) -> datetime:
        """`skew_s` before expiry, but never earlier than half the token's life: a provider issuing short tokens
        must not make every request fetch a new one."""
        lifetime = max(0.0, (self.expires_at - self.issued_at).total_seconds())
        return self.expires_at - timedelta(seconds=min(skew_s, lifetime / 2))

    def is_fresh(self, skew_s: float, now: datetime | None = None) -> bool:
        return (now or _utcnow()) < self.refresh_at(skew_s)


def _lock_id(provider: str, cred_key: str) -> int:
    """A signed 64-bit advisory lock id, the same in every process."""
    digest = hashlib.sha256(f"impact_provider_tokens\n{provider}\n{cred_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TokenStore:
    def __init__(self, engine: Engine, keyring: Callable[[], KeyRing]) -> None:
        self.engine = engine
        self._keyring = keyring

    def load(self, provider: str, cred_key: str) -> StoredToken | None:
        """The stored token for these credentials, fresh or not; None if absent or no longer decryptable (a
        rotated-away key): then the caller fetches a new one and overwrites it."""
        with read_connection(self.engine) as conn:
            return self._read(conn, provider, cred_key)

    @contextmanager
    def exclusive(self, provider: str, cred_key: str) -> Iterator["TokenTransaction"]:
        with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE
            if not is_sqlite(self.engine):
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_id(provider, cred_key))))
            yield TokenTransaction(self, conn, provider, cred_key)

    # -- rows ----------------------------------------------------------------------------------------------
    def _read(self, conn: Connection, provider: str, cred_key: str) -> StoredToken | None:
        row = conn.execute(sa.select(t).where(t.c.provider == provider, t.c.credential_key == cred_key)).first()
        if row is None:
            return None
        keyring = self._keyring()
        try:
            access = keyring.decrypt(row.access_token_encrypted)
            refresh = keyring.decrypt(row.refresh_token_encrypted) if row.refresh_token_encrypted else None
        except DecryptionError:
            LOG.warning(f"stored {provider} token cannot be decrypted; fetching a new one")
            return None
        return StoredToken(access, row.updated_at, row.expires_at, row.token_type or "Bearer", refresh)

    def _write(self, conn: Connection, provider: str, cred_key: str, token: StoredToken) -> None:
        keyring = self._keyring()
        values = {
            "access_token_encrypted": keyring.encrypt(token.access_token),
            "refresh_token_encrypted": keyring.encrypt(token.refresh_token) if token.refresh_token else None,
            "token_type": token.token_type,
            "expires_at": token.expires_at,
            "updated_at": token.issued_at,
        }
        from sqlalchemy.dialects import postgresql, sqlite

        insert = sqlite.insert if is_sqlite(self.engine) else postgresql.insert
        stmt = insert(t).values(provider=provider, credential_key=cred_key, created_at=token.issued_at, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["provider", "credential_key"], set_=values))


class TokenTransaction:
    """Reads and writes inside `TokenStore.exclusive()`: nobody else refreshes these credentials' token meanwhile."""

    def __init__(self, store: TokenStore, conn: Connection, provider: str, cred_key: str) -> None:
        self._store, self._conn, self.provider, self.cred_key = store, conn, provider, cred_key

    def current(self) -> StoredToken | None:
        return self._store._read(self._conn, self.provider, self.cred_key)

    def save(self, token: StoredToken) -> None:
        self._store._write(self._conn, self.provider, self.cred_key, token)

    def expire(self, access_token: str) -> bool:
        """Mark the stored token expired, only if it is still this one (a 401 seen late must not throw away
        the token someone else has just fetched)."""
        current = self.current()
        if current is None or current.access_token != access_token:
            return False
        self._conn.execute(
            sa.update(t)
            .where(t.c.provider == self.provider, t.c.credential_key == self.cred_key)
            .values(expires_at=current.issued_at)
        )
        return True
