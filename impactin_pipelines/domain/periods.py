"""Period bounds as people type them: a date means the whole UTC day, a datetime means that instant."""

from datetime import UTC, date, datetime, time, timedelta


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
    except OverflowError:  # 9999-12-31 as an end (the next midnight), or an offset past year 1 or 9999
        raise ValueError(f"{field}={value!r} is out of range") from None
