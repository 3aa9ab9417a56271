"""Encryption at rest for OAuth tokens and per-company credentials (Fernet, from `cryptography`).

`IMPACTIN_ENCRYPTION_KEY` holds one key, or several separated by commas while rotating: the first encrypts,
all of them decrypt. The embedded default (SQLite) creates and keeps a key in its state folder; any other
warehouse without a key is a startup error, never a silent plain-text store.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.settings import is_embedded, state_dir, warehouse_url

KEY_ENV = "IMPACTIN_ENCRYPTION_KEY"
KEY_FILE_NAME = "encryption.key"


class DecryptionError(ValueError):
    """A stored secret that none of the configured keys opens."""


class KeyRing:
    def __init__(self, keys: list[str], *, source: str = KEY_ENV) -> None:
        """`source` names where the keys came from in errors; a key's value is never shown."""
        if not keys:
            raise ConfigError(f"{source} holds no key")
        self._fernets = [_fernet(key, source, position, len(keys)) for position, key in enumerate(keys, start=1)]
        self._multi = MultiFernet(self._fernets)

    @property
    def key_count(self) -> int:
        return len(self._fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._multi.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._multi.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise DecryptionError(
                f"a stored secret cannot be decrypted with {KEY_ENV}: the key is wrong or was rotated away"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether the first (current) key opens this token: rotating it again would change nothing."""
        try:
            self._fernets[0].decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeError, ValueError):
            return False
        return True

    def rotate(self, token: str) -> str:
        """Re-encrypt under the first (current) key."""
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError, ValueError):
            raise DecryptionError(f"a stored secret cannot be decrypted with {KEY_ENV}") from None


def _fernet(key: str, source: str, position: int, count: int) -> Fernet:
    try:
        return Fernet(key.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        which = f"key {position} of {count}: " if count > 1 else ""
        raise ConfigError(
            f"{source} is not a valid Fernet key ({which}32 url-safe base64-encoded bytes are needed; "
            "make one with `impactin keys generate`)"
        ) from None


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def load_keyring(env: Mapping[str, str] = os.environ) -> KeyRing:
    configured = env.get(KEY_ENV)
    if configured:
        return KeyRing([k for k in configured.split(",") if k.strip()])
    if not is_embedded(warehouse_url(env)):
        raise ConfigError(
            f"{KEY_ENV} is required when IMPACTIN_WAREHOUSE_URL is not the embedded SQLite default",
            missing=(KEY_ENV,),
        )
    path = state_dir(env) / KEY_FILE_NAME
    return KeyRing([_local_key(path)], source=f"{KEY_ENV} is not set, and the key file {path}")


def _local_key(path: Path) -> str:
    """The embedded default's key: created once (0600, published atomically), reused by every process after."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_key())
    try:
        os.link(draft, path)  # fails if another process published first; then theirs wins
    except FileExistsError:
        pass
    finally:
        draft.unlink(missing_ok=True)
    return path.read_text().strip()
