"""Errors that carry the field and the value at fault, so an operator can act on the message alone."""

from typing import Any

_MAX_VALUE_CHARS = 80


def show_value(value: Any) -> str:
    """repr() of a value, cut short so one huge field cannot flood a log line or a column."""
    try:
        text = repr(value)
    except ValueError:  # an int over 4300 digits refuses to print
        text = f"<{type(value).__name__} too long to show>"
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class InvalidEvent(ValueError):
    """An event that cannot be delivered as it is; it is quarantined, never sent."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={show_value(value)}: {reason}")


class ConfigError(ValueError):
    """Provider configuration is missing or wrong for one company; only that integration fails."""

    def __init__(self, message: str, *, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        super().__init__(message)
