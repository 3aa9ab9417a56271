"""Which builder a (provider, protocol) uses."""

from typing import Any

from impactin_pipelines.domain.events import ImpactEvent
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.mapping.benevity import benevity_payload
from impactin_pipelines.mapping.goodera import goodera_payload
from impactin_pipelines.mapping.workday import workday_rest_payload, workday_soap_report


def build_payload(provider: Provider, event: ImpactEvent, *, workday_protocol: str = "soap") -> dict[str, Any]:
    """The provider document for one event. Raises InvalidEvent when the event cannot be expressed in it."""
    if provider is Provider.BENEVITY:
        return benevity_payload(event)
    if provider is Provider.GOODERA:
        return goodera_payload(event)
    if workday_protocol == "rest":
        return workday_rest_payload(event)
    return workday_soap_report(event)
