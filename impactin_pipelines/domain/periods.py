"""Period bounds as people type them: a date means the whole UTC day, a datetime means that instant."""

from datetime import UTC, date, datetime, time, timedelta


class BoundOutOfRange(ValueError):
    """A well-formed date or datetime that falls outside what a UTC datetime can hold (years 1 to 9999)."""


def parse_bound(value: str, field: str, *, end: bool = False) -> datetime:
    """`since`/`startDate` include the instant; `until`/`endDate` given as a date include that whole day
    (the bound returned is exclusive: the next midnight)."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{field}={value!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime") from None
    except OverflowError:
        raise BoundOutOfRange(f"{field}={value!r} {out_of_range_reason(text, end=end)}") from None


def out_of_range_reason(text: str, *, end: bool) -> str:
    """Why a well-formed bound cannot be used: a date as an end covers its whole day, so it ends at the next
    midnight, which for 9999-12-31 does not exist; a datetime with an offset can fall before year 1 or after
    9999 once moved to UTC."""
    if end and len(text) == 10:
        return "is out of range: an end date includes its whole day, so the latest is 9999-12-30"
    return "is out of range: in UTC it falls outside years 1 to 9999"
