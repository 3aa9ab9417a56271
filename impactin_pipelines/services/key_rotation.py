"""Re-encrypt every secret at rest under the current key: OAuth tokens (`impact_provider_tokens`) and per-company
credentials (`{"encrypted": ...}` anywhere in `company_integrations.settings`).

Rotation without downtime: every process first gets IMPACTIN_ENCRYPTION_KEY="new,old" (the KeyRing encrypts with
the first key and decrypts with all), then this runs, then "old" is dropped. Runs may go on meanwhile: rows are
rewritten one at a time, each in its own short transaction, and only if the row still holds the ciphertext that was
read (compare-and-set). A token refreshed in between was written under the current key already, so losing the race
costs nothing. Idempotent: a secret the current key opens is left as it is.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.security.crypto import DecryptionError, KeyRing
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import company_integrations as ci
from impactin_pipelines.store.schema import impact_provider_tokens as t

MAX_RACES = 5  # a row changed under us this often in a row is left for the next rotation (and reported)


@dataclass
class Tally:
    rotated: int = 0  # re-encrypted under the current key (with --dry-run: would be)
    current: int = 0  # the current key opens it already
    unreadable: list[str] = field(default_factory=list)  # no configured key opens it
    unparsed: list[str] = field(default_factory=list)  # settings that are not JSON: their secrets cannot be found

    def as_dict(self) -> dict[str, Any]:
        return {"rotated": self.rotated, "current": self.current, "unreadable": list(self.unreadable)}


@dataclass
class RotationReport:
    keys: int
    dry_run: bool
    tokens: Tally = field(default_factory=Tally)
    secrets: Tally = field(default_factory=Tally)
    unparsed_settings: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # rows that changed under us MAX_RACES times in a row

    @property
    def ok(self) -> bool:
        """Safe to drop the old keys: every per-company secret opens with the current key. (A token no key opens
        is only a cache miss: the next run fetches a new one, so it is reported but does not fail the rotation.)"""
        return not (self.secrets.unreadable or self.unparsed_settings or self.busy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "keys": self.keys,
            "tokens": self.tokens.as_dict(),
            "secrets": self.secrets.as_dict(),
            "unparsedSettings": list(self.unparsed_settings),
            "busy": list(self.busy),
        }


def rotate_secrets(engine: Engine, keyring: KeyRing, *, dry_run: bool = False) -> RotationReport:
    report = RotationReport(keys=keyring.key_count, dry_run=dry_run)
    token_columns = ("access_token_encrypted", "refresh_token_encrypted")
    for provider, cred_key in _keys(engine, t.c.provider, t.c.credential_key):
        where = f"{provider}/{cred_key[:12]}"  # the credentials' hash, never the credentials
        tally = _rotate_row(
            engine, t, (provider, cred_key), token_columns, _token_rewriter(keyring, dry_run, f"token {where}")
        )
        _merge(report, report.tokens, tally, f"impact_provider_tokens {where}")
    for company_id, provider in _keys(engine, ci.c.company_id, ci.c.provider):
        rewrite = _settings_rewriter(keyring, dry_run, f"{company_id}/{provider}")
        tally = _rotate_row(engine, ci, (company_id, provider), ("settings",), rewrite)
        _merge(report, report.secrets, tally, f"company_integrations {company_id}/{provider}")
    return report


Rewrite = Callable[[dict[str, Any], Tally], dict[str, Any] | None]


def _keys(engine: Engine, *key: sa.Column[str]) -> list[tuple[str, ...]]:
    """The primary keys of a table's rows (its `key` columns), in order."""
    with read_connection(engine) as conn:
        return [tuple(row) for row in conn.execute(sa.select(*key).order_by(*key)).all()]


def _rotate_row(
    engine: Engine, table: sa.Table, key: tuple[str, ...], columns: tuple[str, ...], rewrite: Rewrite
) -> Tally | None:
    """Read the row with primary key `key`, let `rewrite` compute new values for `columns` (None: nothing to
    write), and write them only if the row still holds what was read. Returns the tally of the pass that counted,
    or None if the row kept changing."""
    where = tuple(column == value for column, value in zip(table.primary_key.columns, key, strict=True))
    for _ in range(MAX_RACES):
        tally = Tally()
        with engine.begin() as conn:
            row = conn.execute(sa.select(*(table.c[c] for c in columns)).where(*where)).first()
            if row is None:  # deleted meanwhile: nothing left to protect
                return tally
            old = dict(row._mapping)
            new = rewrite(old, tally)
            if new is None:
                return tally
            unchanged = [table.c[c].is_(None) if v is None else table.c[c] == v for c, v in old.items()]
            stmt = sa.update(table).where(*where, *unchanged).values(**new).execution_options(preserve_rowcount=True)
            if conn.execute(stmt).rowcount == 1:
                return tally
    return None


def _merge(report: RotationReport, into: Tally, tally: Tally | None, where: str) -> None:
    if tally is None:
        report.busy.append(where)
        return
    into.rotated += tally.rotated
    into.current += tally.current
    into.unreadable.extend(tally.unreadable)
    report.unparsed_settings.extend(tally.unparsed)


def _token_rewriter(keyring: KeyRing, dry_run: bool, where: str) -> Rewrite:
    def rewrite(old: dict[str, Any], tally: Tally) -> dict[str, Any] | None:
        tokens = {column: value for column, value in old.items() if value is not None}
        if all(keyring.is_current(value) for value in tokens.values()):
            tally.current += 1
            return None
        try:
            new = {column: keyring.rotate(value) for column, value in tokens.items()}
        except DecryptionError:
            tally.unreadable.append(f"{where}: no key opens it (a new token is fetched when next needed)")
            return None
        tally.rotated += 1
        return None if dry_run else new

    return rewrite


def _settings_rewriter(keyring: KeyRing, dry_run: bool, where: str) -> Rewrite:
    def rewrite(old: dict[str, Any], tally: Tally) -> dict[str, Any] | None:
        raw = old["settings"]
        if raw is None or raw == "":
            return None
        try:
            settings = json.loads(raw) if isinstance(raw, str | bytes) else raw
        except ValueError as exc:
            tally.unparsed.append(f"{where}: settings are not valid JSON ({exc})")
            return None
        changed = False
        for path, holder in _encrypted(settings, "settings"):
            token = holder["encrypted"]
            if keyring.is_current(token):
                tally.current += 1
                continue
            try:
                holder["encrypted"] = keyring.rotate(token)
            except DecryptionError:
                tally.unreadable.append(f"{where}: {path} cannot be decrypted with any key in IMPACTIN_ENCRYPTION_KEY")
                continue
            tally.rotated += 1
            changed = True
        if not changed or dry_run:
            return None
        return {"settings": json.dumps(settings, ensure_ascii=False)}

    return rewrite


def _encrypted(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `{"encrypted": "<token>"}` in a settings document, with its path (settings.password, ...)."""
    if isinstance(node, dict):
        if isinstance(node.get("encrypted"), str):
            yield path, node
            return
        for key, value in node.items():
            yield from _encrypted(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _encrypted(value, f"{path}[{i}]")
