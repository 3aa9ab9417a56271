"""The spec's logging contract: every line about a delivery carries deliveryId, provider, eventId, status and
attemptCount, as structured fields (`extra`) and in the message, so they survive any handler."""

import logging
from typing import Any

DELIVERY_FIELDS = ("deliveryId", "provider", "eventId", "status", "attemptCount")


def log_delivery(
    logger: logging.Logger,
    level: int,
    message: str,
    *,
    delivery_id: str,
    provider: str,
    event_id: str,
    status: str,
    attempt_count: int,
    **more: Any,
) -> None:
    fields: dict[str, Any] = {
        "deliveryId": delivery_id,
        "provider": provider,
        "eventId": event_id,
        "status": status,
        "attemptCount": attempt_count,
        **more,
    }
    rendered = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.log(level, f"{message} {rendered}", extra={"impactin": fields, **fields})
