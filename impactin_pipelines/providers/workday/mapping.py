"""Workday schema v3.0 (CSR Impact Report), in its REST and SOAP forms.

The Impact-In contract's SOAP and REST examples differ on purpose and we follow them: SOAP carries a date-only
`Report_Date` and prettified `Activity_Type` ("Volunteer Hours"); REST keeps the raw `activity_type` and the full
timestamp.
Both prettify the unit ("Hours").
"""

from decimal import Decimal
from typing import Any

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import ImpactEvent, has_visible_text
from impactin_pipelines.mapping.encoding import json_number

SCHEMA_VERSION = "v3.0"
WORKER_ID_TYPE = "Employee_ID"

_UNIT_LABELS = {
    "hour": "Hours",
    "hours": "Hours",
    "minute": "Minutes",
    "minutes": "Minutes",
    "usd": "USD",
    "eur": "EUR",
    "gbp": "GBP",
    "cad": "CAD",
    "kg": "kg",
    "km": "km",
}


def prettify(code: str) -> str:
    """`volunteer_hours` -> `Volunteer Hours`."""
    return " ".join(word.capitalize() for word in code.replace("-", "_").split("_") if word)


def unit_label(unit: str) -> str:
    return _UNIT_LABELS.get(unit.strip().lower(), prettify(unit))


def _labelled(label: str, field: str, value: str, element: str) -> str:
    """Workday requires the element: a code that prettifies to nothing (`___`, `-`) is refused here rather than
    by Workday after sending."""
    if not has_visible_text(label):
        raise InvalidEvent(field, value, f"maps to an empty Workday {element}")
    return label


def activity_type(event: ImpactEvent) -> str:
    return _labelled(prettify(event.event_type), "event_type", event.event_type, "Activity_Type")


def unit_of_measure(event: ImpactEvent) -> str:
    return _labelled(unit_label(event.unit), "unit", event.unit, "Unit_of_Measure")


def decimal_text(value: Decimal) -> str:
    """xsd:decimal text that keeps one decimal place for whole numbers, as the contract's example shows (`5.0`)."""
    text = format(value, "f")
    return text if "." in text else text + ".0"


def workday_rest_payload(event: ImpactEvent) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "impact_report": {
            "external_reference_id": event.event_id,
            "report_date": event.timestamp,
            "worker": {"worker_id": event.user_id},
            "csr_activity": {
                "activity_type": event.event_type,
                "value": json_number(event.value),
                "unit_of_measure": unit_of_measure(event),
            },
        },
    }


def workday_soap_report(event: ImpactEvent) -> dict[str, Any]:
    """The values of `wd:CSR_Impact_Report`, by element name; the SOAP connector turns them into XML."""
    return {
        "schema_version": SCHEMA_VERSION,
        "CSR_Impact_Report": {
            "External_Reference_ID": event.event_id,
            "Report_Date": event.occurred_at.date().isoformat(),
            "Worker_Reference": {"ID": {"type": WORKER_ID_TYPE, "value": event.user_id}},
            "CSR_Activity": {
                "Activity_Type": activity_type(event),
                "Value": decimal_text(event.value),
                "Unit_of_Measure": unit_of_measure(event),
            },
        },
    }
