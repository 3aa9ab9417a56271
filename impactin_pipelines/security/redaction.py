"""Scrub known secret values out of any text before it is logged, stored or shown.

A provider that quotes a secret back rarely quotes it verbatim: a JSON error escapes it (`\\"`, `\\\\`, `\\/`,
`\\u0026`), an XML fault or HTML page uses character references (`&amp;`, `&#38;`, `&#x26;`), an echoed form body or
URL percent-encodes it (`%2F`, `%2f`, `+` for a space), HTTP Basic base64-encodes `user:secret`, and these nest (a
JSON error quoting an XML fault). Every dialect and nesting as literal patterns would not scale, so the text is
searched as given and in each view that decoding it up to `DECODE_LAYERS` times gives (each time one family of
escapes: JSON, character references or percent); a match in a view masks the original characters behind it. The
secrets, their form-encoded spelling and their base64 forms are found with one compiled alternation per Redactor,
longest first.
"""

import base64
import bisect
import functools
import html
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary text
_MIN_BASE64_CORE_CHARS = 8  # a shorter base64 fragment could occur by chance
DECODE_LAYERS = 3  # JSON in XML in a percent-encoded query is as deep as an echo plausibly goes
_EXPANSION = 16  # how many times longer than itself an echoed secret plausibly gets (`&amp;#x5C;` for `\\`)
_DERIVED_CACHE = 16  # Redactors kept per parent for `with_secrets` (one per access token in use)

# One family of escapes per encoding, decoded separately: a literal `\/` inside an XML-escaped secret is not JSON.
_FAMILIES = (
    re.compile(  # JSON string escapes
        r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair
        r"|\\u[0-9a-fA-F]{4}"
        r'|\\["\\/bfnrt]'
    ),
    re.compile(r"&#[xX][0-9a-fA-F]+;?|&#[0-9]+;?|&[A-Za-z][A-Za-z0-9]{1,31};?"),  # XML and HTML references
    re.compile(  # percent-encoding; the UTF-8 bytes of a non-ASCII character decode together
        r"%[0-7][0-9a-fA-F]|%[89a-fA-F][0-9a-fA-F](?:%[89a-fA-F][0-9a-fA-F])*"
    ),
)
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

# (view start, view end, source start, source end) of each decoded escape, in order
_Token = tuple[int, int, int, int]


@functools.lru_cache(maxsize=4096)
def _decode_escape(token: str) -> str:
    if token[0] == "\\":
        if token[1] != "u":
            return _JSON_SHORT[token[1]]
        if len(token) == 12:
            high, low = int(token[2:6], 16), int(token[8:12], 16)
            return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        return chr(int(token[2:6], 16))
    if token[0] == "&":
        return html.unescape(token)  # an unknown name stays as it is
    return bytes.fromhex(token.replace("%", "")).decode("utf-8", "surrogateescape")


def _decoded(match: re.Match[str]) -> str:
    return _decode_escape(match.group())


class _View:
    """The original text, or a parent view with one family of escapes decoded once. Where each decoded escape came
    from is worked out only for a view in which a secret was found (rare), not for every view searched."""

    def __init__(self, text: str, parent: "_View | None" = None, family: re.Pattern[str] | None = None) -> None:
        self.text = text
        self.parent = parent
        self.family = family
        self._tokens: list[_Token] | None = None
        self._starts: list[int] = []

    def decode(self, family: re.Pattern[str]) -> "_View | None":
        text, count = family.subn(_decoded, self.text)
        return _View(text, self, family) if count and text != self.text else None

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text behind [start, end) of this view, widened to whole escapes."""
        view = self
        while view.parent is not None:
            tokens, starts = view._mapping()
            start, end = _source_start(start, tokens, starts), _source_end(end, tokens, starts)
            view = view.parent
        return start, end

    def _mapping(self) -> tuple[list[_Token], list[int]]:
        if self._tokens is None:
            assert self.parent is not None and self.family is not None
            self._tokens = _tokens(self.parent.text, self.family)
            self._starts = [t[0] for t in self._tokens]
        return self._tokens, self._starts


def _tokens(text: str, family: re.Pattern[str]) -> list[_Token]:
    """Where each escape of `family` in `text` lands once decoded."""
    tokens: list[_Token] = []
    shift = 0  # decoded length minus source length so far
    for match in family.finditer(text):
        raw = match.group()
        decoded = _decode_escape(raw)
        if decoded == raw:
            continue
        start, end = match.span()
        tokens.append((start + shift, start + shift + len(decoded), start, end))
        shift += len(decoded) - (end - start)
    return tokens


def _source_start(pos: int, tokens: list[_Token], starts: list[int]) -> int:
    i = bisect.bisect_right(starts, pos) - 1
    if i < 0:
        return pos
    _, view_end, source_start, source_end = tokens[i]
    return source_start if pos < view_end else source_end + (pos - view_end)


def _source_end(pos: int, tokens: list[_Token], starts: list[int]) -> int:
    i = bisect.bisect_left(starts, pos) - 1
    if i < 0:
        return pos
    _, view_end, _, source_end = tokens[i]
    return source_end if pos <= view_end else source_end + (pos - view_end)


def _b64(data: bytes) -> list[str]:
    standard = base64.b64encode(data).decode("ascii")
    return [standard, standard.translate(str.maketrans("+/", "-_"))]


def _base64_cores(data: bytes) -> list[str]:
    """The part of the base64 of any byte string containing `data` that depends on `data` alone, for each of the
    three alignments it can have: it finds a secret inside any base64 blob (Basic with any user name, a token)."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        core = encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
        if len(core) >= _MIN_BASE64_CORE_CHARS:
            cores.append(core)
    return [v for core in cores for v in (core, core.translate(str.maketrans("+/", "-_")))]


def _needles(secret: str, users: Iterable[str]) -> set[str]:
    """What to look for in each decoded view of a text: the secret, its form-encoded spelling (decoding turns
    `%2B` into `+` but leaves `+` alone, which a form reads as a space) and its base64 forms, alone and as HTTP
    Basic credentials with each user (raw, and form-encoded first as RFC 6749 asks of OAuth clients)."""
    found = {secret, secret.replace(" ", "+")}
    raw = secret.encode("utf-8")
    found.update(_b64(raw))
    found.update(_base64_cores(raw))
    for user in users:
        pairs = (
            f"{user}:{secret}",
            f"{quote_plus(user)}:{quote_plus(secret)}",
            f"{quote(user)}:{quote(secret)}",
            f"{quote(user, safe='')}:{quote(secret, safe='')}",
        )
        for pair in pairs:
            found.update(_b64(pair.encode("utf-8")))
    return found


@functools.lru_cache(maxsize=256)
def _pattern(needles: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(n) for n in needles))


class Redactor:
    """Masks a fixed set of secrets with `MASK`, in every spelling the module docstring lists. `credentials` are
    (user, secret) pairs whose secret is also searched for as HTTP Basic credentials with that user."""

    def __init__(
        self,
        secrets: Iterable[str | None] = (),
        *,
        credentials: Iterable[tuple[str | None, str | None]] = (),
    ) -> None:
        pairs = {(u or "", s) for u, s in credentials if s and len(s) >= _MIN_SECRET_CHARS}
        self._secrets = frozenset({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS} | {s for _, s in pairs})
        self._credentials = frozenset(pairs)
        needles: set[str] = set()
        for secret in self._secrets:
            needles |= _needles(secret, sorted(u for u, s in pairs if s == secret and u))
        ordered = tuple(sorted(needles, key=lambda n: (-len(n), n)))  # longest first: a Basic pair before its secret
        self._regex = _pattern(ordered) if ordered else None
        self._longest = len(ordered[0]) if ordered else 0
        self._derived: dict[frozenset[str], Redactor] = {}
        self._derived_lock = threading.Lock()

    def with_secrets(self, secrets: Iterable[str | None]) -> "Redactor":
        """This Redactor plus more secrets (an access token); the last few combinations are kept, built once."""
        extra = frozenset(s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS) - self._secrets
        if not extra:
            return self
        with self._derived_lock:
            derived = self._derived.pop(extra, None) or Redactor(
                [*self._secrets, *extra], credentials=self._credentials
            )
            self._derived[extra] = derived  # most recently used last
            if len(self._derived) > _DERIVED_CACHE:
                del self._derived[next(iter(self._derived))]
            return derived

    def scrub(self, text: str | None) -> str | None:
        if not text or self._regex is None:
            return text
        spans: list[tuple[int, int]] = []
        views = [_View(text)]
        seen = {text}
        for depth in range(DECODE_LAYERS + 1):
            for view in views:
                spans.extend(view.source_span(*match.span()) for match in self._regex.finditer(view.text))
            if depth == DECODE_LAYERS:
                break
            deeper = []
            for view in views:
                for family in _FAMILIES:
                    decoded = view.decode(family)
                    if decoded is not None and decoded.text not in seen:
                        seen.add(decoded.text)
                        deeper.append(decoded)
            if not deeper:
                break
            views = deeper
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        copied = 0
        for start, end in spans:
            if end <= copied:
                continue
            if start >= copied:
                out.append(text[copied:start])
                out.append(MASK)
            copied = end
        out.append(text[copied:])
        return "".join(out)

    def excerpt(self, text: str | None, limit: int) -> str | None:
        """The first `limit` characters of the scrubbed text. Cutting before scrubbing could leave the start of a
        secret that straddles the cut; scrubbing all of a very long text is wasted work."""
        if not text:
            return text
        window = limit + _EXPANSION * self._longest
        scrubbed = self.scrub(text if len(text) <= window else text[:window])
        return scrubbed[:limit] if scrubbed else scrubbed


NO_SECRETS = Redactor()
