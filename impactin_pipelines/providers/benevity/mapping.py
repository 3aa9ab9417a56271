"""Benevity schema v1.0: `POST /api/v1/impact-events`."""

from typing import Any

from impactin_pipelines.domain.events import ImpactEvent
from impactin_pipelines.mapping.encoding import json_number

SCHEMA_VERSION = "v1.0"


def benevity_payload(event: ImpactEvent) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event": {
            "id": event.event_id,
            "type": event.event_type,
            "timestamp": event.timestamp,
            "user": {"external_id": event.user_id, "company_id": event.company_id},
            "impact": {
                "value": json_number(event.value),
                "unit": event.unit,
                "metadata": dict(event.metadata),
            },
        },
    }
