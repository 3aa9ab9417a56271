"""Fake Benevity: checks the API key and the HMAC over the raw body, dedups by idempotency key."""

import hashlib
import hmac
import itertools
from typing import Any

from impactin_pipelines.sandbox.core import ProviderSandbox, Request, Response

API_KEY = "sandbox-benevity-api-key"
SIGNATURE_SECRET = "sandbox-benevity-signing-secret"


def _schema_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("schema_version") != "v1.0":
        return "schema_version must be v1.0"
    event = doc.get("event")
    if not isinstance(event, dict):
        return "event is required"
    for key in ("id", "type", "timestamp"):
        if not isinstance(event.get(key), str) or not event[key]:
            return f"event.{key} is required"
    user = event.get("user")
    if not isinstance(user, dict) or not user.get("external_id") or not user.get("company_id"):
        return "event.user.external_id and event.user.company_id are required"
    impact = event.get("impact")
    if not isinstance(impact, dict) or not isinstance(impact.get("value"), int | float):
        return "event.impact.value must be a number"
    return None


class BenevitySandbox(ProviderSandbox):
    name = "benevity"

    def __init__(self, api_key: str = API_KEY, signature_secret: str = SIGNATURE_SECRET) -> None:
        super().__init__()
        self.api_key = api_key
        self.signature_secret = signature_secret
        self._ids = itertools.count(1)

    def env(self, base_url: str) -> dict[str, str]:
        """The BENEVITY_* variables pointing at this fake with its credentials."""
        return {
            "BENEVITY_API_URL": base_url,
            "BENEVITY_API_KEY": self.api_key,
            "BENEVITY_SIGNATURE_SECRET": self.signature_secret,
        }

    def route(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/api/v1/impact-events":  # read-back (reconciliation)
            if request.header("X-API-Key") != self.api_key:
                return Response.json(401, {"error": "invalid_api_key"})
            return self.read_back_response(request)
        if request.method != "POST" or request.path != "/api/v1/impact-events":
            return Response.json(404, {"error": "not_found"})
        if request.header("X-API-Key") != self.api_key:
            return Response.json(401, {"error": "invalid_api_key"})
        expected = hmac.new(self.signature_secret.encode(), request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.header("X-Benevity-Signature") or "", expected):
            return Response.json(401, {"error": "invalid_signature"})
        parsed = self.read_json_event(request, _schema_problem)
        if isinstance(parsed, Response):
            return parsed
        key, doc = parsed
        event_id = doc["event"]["id"]
        if event_id in self.faults.reject_events:
            return Response.json(422, {"error": "event_rejected", "event_id": event_id})
        record = {"id": f"bnv_{next(self._ids)}", "event_id": event_id, "idempotency_key": key, "body": doc}
        return self.accept_response(key, record)
