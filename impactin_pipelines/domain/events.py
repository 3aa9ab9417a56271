"""An impact event as the TEEI platform recorded it, and the rules that make it deliverable.

`parse_event` is the single gate between raw warehouse rows (or API bodies) and the mappers:
everything after it can rely on the types below.
"""

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from impactin_pipelines.domain.companies import validate_company_id
from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.identity import SCOPED_ID_PREFIX, scoped_event_id

MAX_TEXT_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
# Bounds that keep every provider's rendering of a value finite and short: a float for the JSON providers (1e400
# would become infinity), a plain decimal for Workday SOAP (1E-999999999 would print a billion zeros).
MAX_VALUE = Decimal("1e15")
# Any float written by the platform (17 significant digits, down to 1e-13) fits; `1E-999999999` would print a
# billion zeros into the SOAP envelope.
MAX_VALUE_DECIMALS = 30
_MAX = f"{MAX_VALUE:.0e}"
# What the platform writes: ASCII digits, an optional fraction and exponent. Python's own parsers also take `1_5`,
# fullwidth and Arabic-Indic digits, which no other system reads as the same number.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# xsd:date needs four-digit years and zeep prints year 999 as `999-01-01`; `0001-01-01` is also the usual "no date"
# placeholder of other systems. No impact event happened before this year.
MIN_YEAR = 1000
# Characters that show nothing on their own: controls, format characters (zero-width space and joiners, BOM, bidi
# marks), separators, lone combining marks, and the letters that render blank (Hangul fillers, Braille blank).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


class Priority(StrEnum):
    """How soon an event should go out (`metadata.priority`): urgent rows are claimed before normal ones."""

    NORMAL = "normal"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        """The outbox column's value: claims take the highest first."""
        return 1 if self is Priority.URGENT else 0

    @classmethod
    def of_rank(cls, rank: int) -> "Priority":
        return cls.URGENT if rank >= 1 else cls.NORMAL


@dataclass(frozen=True)
class ImpactEvent:
    event_id: str
    company_id: str
    user_id: str
    event_type: str
    occurred_at: datetime  # always timezone-aware UTC
    value: Decimal
    unit: str
    outcome_scores: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL  # read from metadata.priority, which the payload keeps as it is

    @property
    def timestamp(self) -> str:
        """The wire form every provider gets: UTC, second precision unless sub-seconds exist, 'Z'."""
        return format_timestamp(self.occurred_at)


def format_timestamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _text(raw: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = raw.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidEvent(name, value, "is missing or blank")
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(name, value, f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidEvent(name, value, f"is longer than {MAX_TEXT_CHARS} characters")
    if _CONTROL.search(value):  # C0, DEL and C1 (`\x85` included)
        raise InvalidEvent(name, value, "contains control characters")
    if value.isascii():  # the usual case, checked once per field of every staged event: no surrogate, noncharacter
        return value.strip()  # or blank letter can be in it, and a space is all it can have that does not show
    if not is_utf8_text(value):
        raise InvalidEvent(name, value, "is not valid UTF-8")
    if _NONCHARACTER.search(value):  # not for interchange; U+FFFE and U+FFFF cannot be written in XML
        raise InvalidEvent(name, value, "contains a Unicode noncharacter")
    if not has_visible_text(value):
        raise InvalidEvent(name, value, "has no visible characters")
    return value.strip()


# Checked once per text field of every staged event, so as one regular expression each rather than per character.
# Category Cc is exactly these code points (Unicode never changes it); noncharacters are U+FDD0..U+FDEF and the
# last two code points of every plane.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NONCHARACTER = re.compile(
    "[\ufdd0-\ufdef" + "".join(f"{chr(plane << 16 | 0xFFFE)}-{chr(plane << 16 | 0xFFFF)}" for plane in range(17)) + "]"
)


def _is_invisible(char: str) -> bool:
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _BLANK_LETTERS


def has_visible_text(text: str) -> bool:
    """True when something in `text` would show: not empty, not only spaces or zero-width characters."""
    return not all(_is_invisible(c) for c in text)


def _is_padding(char: str) -> bool:
    """Whitespace or an invisible character that can start or end an id unnoticed (zero-width space, BOM...)."""
    return char.isspace() or unicodedata.category(char) == "Cf" or char in _BLANK_LETTERS


def _identifier(raw: Mapping[str, Any], name: str) -> str:
    """An id is used exactly as stored: ' user_1' and 'user_1' are two ids, and trimming one silently would make
    them one (two events under one id, or two workers under one employee id)."""
    value = _text(raw, name)
    stored = raw.get(name)
    if value != stored or _is_padding(value[0]) or _is_padding(value[-1]):
        raise InvalidEvent(name, stored, "has leading or trailing whitespace or invisible characters")
    return value


def is_utf8_text(value: str) -> bool:
    """False for text holding lone surrogates (how undecodable bytes from the source reach us)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_timestamp(value: Any, name: str = "occurred_at") -> datetime:
    """ISO 8601 with an explicit offset. A naive time is refused: guessing its zone misplaces it by hours."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise InvalidEvent(name, value, "is not an ISO 8601 timestamp") from None
    else:
        raise InvalidEvent(name, value, "is missing or not an ISO 8601 timestamp")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEvent(name, value, "has no timezone offset (write it in UTC with 'Z' or with an offset)")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a valid local time with no UTC equivalent
        raise InvalidEvent(name, value, "is out of range in UTC") from None
    if moment.year < MIN_YEAR:
        raise InvalidEvent(name, value, f"is before the year {MIN_YEAR} (in UTC)")
    return moment


def parse_value(value: Any, name: str = "value") -> Decimal:
    """A finite, non-negative number; text must be a plain ASCII number. Decimal keeps '5.0' as 5.0 on the wire.
    Negative zero is zero: providers get `0.0`, never `-0.0`."""
    if isinstance(value, bool) or value is None:
        raise InvalidEvent(name, value, "must be a number")
    if isinstance(value, int) and abs(value) > MAX_VALUE:  # before str(): an int over 4300 digits cannot print
        raise InvalidEvent(name, value, "must not be negative" if value < 0 else f"must not be larger than {_MAX}")
    try:
        number = Decimal(str(value).strip()) if isinstance(value, str | int | float | Decimal) else None
    except InvalidOperation:
        number = None
    if number is None:
        raise InvalidEvent(name, value, "must be a number")
    if not number.is_finite():
        raise InvalidEvent(name, value, "must be a finite number")
    if isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value.strip()):
        raise InvalidEvent(name, value, "must be a plain number: ASCII digits 0-9, an optional '.' and exponent")
    if number < 0:
        raise InvalidEvent(name, value, "must not be negative")
    if number > MAX_VALUE:
        raise InvalidEvent(name, value, f"must not be larger than {_MAX}")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_VALUE_DECIMALS:
        raise InvalidEvent(name, value, f"has more than {MAX_VALUE_DECIMALS} decimal places")
    return number.copy_abs() if number.is_zero() else number


def parse_json_object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object given as a mapping or as JSON text; null and empty mean {}."""
    if value is None or value == "":
        return {}
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(name, value, "is not valid UTF-8") from None
    if isinstance(value, str):
        if not is_utf8_text(value):
            raise InvalidEvent(name, value, "is not valid UTF-8")
        if len(value.encode("utf-8")) > MAX_METADATA_BYTES:
            raise InvalidEvent(name, f"<{len(value)} characters>", f"is larger than {MAX_METADATA_BYTES} bytes")
        if value.startswith("\ufeff"):  # what `json.loads` refuses before decoding
            raise InvalidEvent(name, value, "is not valid JSON (it starts with a byte order mark)")
        try:
            value = _DECODER.decode(value)
        except DuplicateKey as exc:
            raise InvalidEvent(name, value, f"has the key {exc.key!r} more than once in one object") from None
        except (ValueError, RecursionError) as exc:
            raise InvalidEvent(name, value, f"is not valid JSON ({exc})") from None
    if not isinstance(value, Mapping):
        raise InvalidEvent(name, value, "must be a JSON object")
    try:
        size = len(_SIZE_ENCODER.encode(value).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidEvent(name, value, f"is not JSON-serialisable UTF-8 ({type(exc).__name__}: {exc})") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidEvent(name, f"<{size} bytes>", f"is larger than {MAX_METADATA_BYTES} bytes")
    return dict(value)


_PRIORITIES = frozenset(p.value for p in Priority)


def parse_priority(metadata: Mapping[str, Any]) -> Priority:
    """`metadata.priority`: absent means normal; anything but "urgent" or "normal" is refused, not guessed."""
    value = metadata.get("priority")
    if value is None:
        return Priority.NORMAL
    if not isinstance(value, str) or value not in _PRIORITIES:
        raise InvalidEvent("metadata.priority", value, "must be 'urgent' or 'normal'")
    return Priority(value)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key!r} appears more than once in one object")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys repeat: parsers disagree on which value wins, so none is guessed."""
    found: dict[str, Any] = {}
    for key, item in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = item
    return found


# Built once: `json.loads` and `json.dumps` with options build a new decoder or encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=unique_keys)
_SIZE_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)  # how large the payload will hold it


def parse_event(raw: Mapping[str, Any]) -> ImpactEvent:
    """Validate one raw event (warehouse row or API body, snake_case keys). Raises InvalidEvent, nothing else."""
    event_id, company_id = _identifier(raw, "event_id"), validate_company_id(raw.get("company_id"))
    if event_id.startswith(SCOPED_ID_PREFIX) and not event_id.startswith(scoped_event_id(company_id, "")):
        own = scoped_event_id(company_id, "")
        raise InvalidEvent("event_id", event_id, f"is in another company's API namespace (this company's: '{own}…')")
    return ImpactEvent(
        event_id=event_id,
        company_id=company_id,
        user_id=_identifier(raw, "user_id"),
        event_type=_text(raw, "event_type"),
        occurred_at=parse_timestamp(raw.get("occurred_at")),
        value=parse_value(raw.get("value")),
        unit=_text(raw, "unit"),
        outcome_scores=parse_json_object(raw.get("outcome_scores"), "outcome_scores"),
        metadata=(metadata := parse_json_object(raw.get("metadata"), "metadata")),
        priority=parse_priority(metadata),
    )


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool) and math.isfinite(float(value))
