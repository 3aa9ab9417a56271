"""Goodera schema v2.1: `POST /v2/events/impact`. Outcome scores become impact dimensions."""

import math
from decimal import Decimal
from typing import Any

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import ImpactEvent, has_visible_text

SCHEMA_VERSION = "v2.1"
NORMALIZED_SCALE = "normalized_0_1"


def _in_unit_range(score: int | float | Decimal) -> bool:
    try:
        return math.isfinite(score) and 0 <= score <= 1
    except (OverflowError, ArithmeticError, ValueError):  # an int too big for a float; a signalling Decimal NaN
        return False


def impact_dimensions(outcome_scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Label a score `normalized_0_1` only when it is one: a number in [0, 1]. Anything else is refused.
    A negative zero is sent as `0.0`."""
    dimensions = []
    for name, score in outcome_scores.items():
        field = f"outcome_scores.{name}"
        if not isinstance(name, str) or not has_visible_text(name):
            raise InvalidEvent("outcome_scores", name, "dimension names must be non-blank strings")
        if isinstance(score, bool) or not isinstance(score, int | float | Decimal):
            raise InvalidEvent(field, score, "must be a number between 0 and 1")
        if not _in_unit_range(score):
            raise InvalidEvent(field, score, "must be between 0 and 1 (scale normalized_0_1)")
        number = float(score)
        dimensions.append({"dimension_name": name, "score": number if number else 0.0, "scale": NORMALIZED_SCALE})
    return dimensions


def goodera_payload(event: ImpactEvent) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event": {
            "external_id": event.event_id,
            "event_type": event.event_type,
            "timestamp": event.timestamp,
            "participant": {"external_user_id": event.user_id},
            "impact": {
                "dimensions": impact_dimensions(dict(event.outcome_scores)),
                "metadata": dict(event.metadata),
            },
        },
    }
