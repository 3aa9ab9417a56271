"""Scrub known secret values out of any text before it is logged, stored or shown."""

from collections.abc import Iterable

MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary text


class Redactor:
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)

    def with_secrets(self, secrets: Iterable[str | None]) -> "Redactor":
        return Redactor([*self._secrets, *secrets])

    def scrub(self, text: str | None) -> str | None:
        if not text:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


NO_SECRETS = Redactor()
