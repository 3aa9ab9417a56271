"""The OpenAPI 3.1 document served at `/openapi.json`: request bodies from the same pydantic models that
validate them (so the two cannot drift), responses written out from the contract's shapes."""

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from impactin_pipelines.api import validation
from impactin_pipelines.domain.events import MAX_TEXT_CHARS
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.store.confirmations import KINDS
from impactin_pipelines.store.delivery_log import (
    MAX_METADATA_VALUE_CHARS,
    MAX_SEARCH_CHARS,
    METADATA_KEY,
    MIN_SEARCH_CHARS,
)

VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"
STATUSES = [s.value for s in DeliveryStatus]
ERROR_KINDS = [k.value for k in ErrorKind]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_TIME = {"type": "string", "format": "date-time", "example": "2025-11-14T10:05:00Z"}
_ANY_JSON = {"description": "The stored document: JSON when it is JSON, else the text (SOAP XML)."}
_CONFIRMATION = {
    "confirmation": {
        "type": ["string", "null"],
        "enum": [*KINDS, None],
        "description": "What the provider said about the delivery after the send, through its webhook: null until "
        "then. A rejection also turns a success `failed` (errorKind `rejected`).",
    },
    "confirmedAt": {**_nullable(_TIME), "description": "When the provider's latest verdict arrived."},
}

WEBHOOK_SCHEMAS: dict[str, Any] = {
    "WebhookCallback": {
        "type": "object",
        "required": ["id", "type"],
        "description": "Names the delivery by `idempotencyKey` (our deliveryId) or `eventId`; at least one.",
        "properties": {
            "id": {"type": "string", "maxLength": 256, "description": "The provider's callback id (deduplication)."},
            "type": {"type": "string", "enum": ["delivery.confirmed", "delivery.rejected", "delivery.deleted"]},
            "idempotencyKey": {"type": "string", "maxLength": 256},
            "eventId": {"type": "string", "maxLength": 256},
            "providerReference": {"type": "string", "maxLength": 256},
            "reason": {"type": "string", "maxLength": 1000},
        },
    },
    "WebhookReceived": {
        "type": "object",
        "required": ["received", "effect", "deliveryId"],
        "properties": {
            "received": {"type": "boolean"},
            "effect": {
                "type": "string",
                "enum": ["confirmed", "rejected", "rejected_unsettled", "deleted", "ignored", "duplicate", "unmatched"],
            },
            "deliveryId": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    },
}

RESPONSE_SCHEMAS: dict[str, Any] = {
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "field": {"type": "string", "example": "limit"},
            "message": {"type": "string"},
            "value": {"description": "The offending value, shortened."},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "example": "Validation error"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": _ref("FieldError")},
            "id": {"type": "string", "description": "The delivery id the error is about."},
            "ref": {"type": "string", "description": "Log reference of an unexpected error."},
        },
    },
    "DeliverySummary": {
        "type": "object",
        "required": [
            "id",
            "companyId",
            "provider",
            "deliveryId",
            "status",
            "attemptCount",
            "deliveredAt",
            "createdAt",
            "confirmation",
            "confirmedAt",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "companyId": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "deliveryId": {"type": "string", "format": "uuid", "description": "The X-Idempotency-Key."},
            "status": {"type": "string", "enum": STATUSES},
            "attemptCount": {"type": "integer", "minimum": 0},
            "deliveredAt": _nullable(_TIME),
            "createdAt": _TIME,
            **_CONFIRMATION,
        },
    },
    "DeliveryDetail": {
        "type": "object",
        "required": [
            "id",
            "companyId",
            "provider",
            "deliveryId",
            "payload",
            "status",
            "attemptCount",
            "priority",
            "providerResponse",
            "deliveredAt",
            "createdAt",
            "updatedAt",
            "confirmation",
            "confirmedAt",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "companyId": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "deliveryId": {"type": "string", "format": "uuid"},
            "payload": _ANY_JSON,
            "status": {"type": "string", "enum": STATUSES},
            "attemptCount": {"type": "integer", "minimum": 0},
            "priority": {
                "type": "string",
                "enum": ["urgent", "normal"],
                "description": "From the event's `metadata.priority`: urgent rows are claimed before normal ones.",
            },
            "providerResponse": _ANY_JSON,
            "deliveredAt": _nullable(_TIME),
            "createdAt": _TIME,
            "updatedAt": _TIME,
            **_CONFIRMATION,
        },
    },
    "Pagination": {
        "type": "object",
        "required": ["page", "limit", "total", "totalPages", "hasNext", "hasPrev"],
        "properties": {
            "page": {"type": "integer", "minimum": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": validation.MAX_LIMIT},
            "total": {"type": "integer", "minimum": 0},
            "totalPages": {"type": "integer", "minimum": 0},
            "hasNext": {"type": "boolean"},
            "hasPrev": {"type": "boolean"},
        },
    },
    "CursorPagination": {
        "type": "object",
        "description": "A page asked for with `cursor`: no total (counting every match would cost what the cursor "
        "saves); pass `nextCursor` as `cursor` for the next page.",
        "required": ["limit", "hasNext", "hasPrev", "nextCursor"],
        "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": validation.MAX_LIMIT},
            "hasNext": {"type": "boolean"},
            "hasPrev": {"type": "boolean"},
            "nextCursor": _nullable({"type": "string", "description": "Opaque; null on the last page."}),
        },
    },
    "DeliveryList": {
        "type": "object",
        "required": ["data", "pagination"],
        "properties": {
            "data": {"type": "array", "items": _ref("DeliverySummary")},
            "pagination": {"oneOf": [_ref("Pagination"), _ref("CursorPagination")]},
        },
    },
    "DeliveryResponse": {"type": "object", "required": ["data"], "properties": {"data": _ref("DeliveryDetail")}},
    "Stats": {
        "type": "object",
        "required": ["overall", "byProvider"],
        "properties": {
            "overall": {
                "type": "object",
                "required": ["total", "successful", "failed", "pending", "retrying"],
                "properties": {
                    k: {"type": "integer", "minimum": 0}
                    for k in ("total", "successful", "failed", "pending", "retrying")
                },
            },
            "byProvider": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["provider", "status", "count", "avgAttempts"],
                    "properties": {
                        "provider": {"type": "string"},
                        "status": {"type": "string", "enum": STATUSES},
                        "count": {"type": "integer", "minimum": 0},
                        "avgAttempts": {"type": "number"},
                    },
                },
            },
        },
    },
    "StatsResponse": {"type": "object", "required": ["data"], "properties": {"data": _ref("Stats")}},
    "ReplayResponse": {
        "type": "object",
        "required": ["success", "message", "newStatus"],
        "properties": {
            "success": {"type": "boolean"},
            "message": {"type": "string", "example": "Delivery replayed successfully"},
            "newStatus": {"type": "string", "enum": STATUSES},
        },
    },
    "ReplayItem": {
        "type": "object",
        "required": ["id", "success"],
        "properties": {
            "id": {"type": "string"},
            "success": {"type": "boolean"},
            "newStatus": {"type": "string", "enum": STATUSES},
            "error": {"type": "string"},
        },
    },
    "ReplaySummaryResponse": {
        "type": "object",
        "required": ["summary", "results"],
        "properties": {
            "summary": {
                "type": "object",
                "required": ["total", "successful", "failed"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "successful", "failed")},
            },
            "results": {"type": "array", "items": _ref("ReplayItem")},
        },
    },
    "JobAccepted": {
        "type": "object",
        "required": ["jobId", "status", "total", "location"],
        "properties": {
            "jobId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "status": {"type": "string", "enum": ["queued"]},
            "total": {"type": "integer", "minimum": 0, "description": "Failed rows when the job was accepted."},
            "location": {"type": "string", "example": "/v1/impact-in/jobs/0f0e0d0c0b0a09080706050403020100"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["jobId", "kind", "status", "companyId", "provider", "progress", "outcomes", "error", "createdAt"],
        "properties": {
            "jobId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "kind": {"type": "string", "enum": ["retry-all-failed"]},
            "status": {
                "type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "abandoned"],
                "description": "`failed`: the job itself broke (`error` says how); `abandoned`: its API process "
                "stopped (no heartbeat for 5 minutes), its rows stay replayable.",
            },
            "companyId": {"type": "string"},
            "provider": _nullable({"type": "string", "enum": list(PROVIDERS)}),
            "progress": {
                "type": "object",
                "required": ["total", "processed"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "processed")},
            },
            "outcomes": {
                "type": "object",
                "required": ["succeeded", "failed"],
                "properties": {
                    "succeeded": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                    "byNewStatus": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "failures": {
                        "type": "array",
                        "description": "The first 100 rows that did not deliver.",
                        "items": _ref("ReplayItem"),
                    },
                },
            },
            "error": _nullable({"type": "string"}),
            "createdAt": _TIME,
            "startedAt": _nullable(_TIME),
            "finishedAt": _nullable(_TIME),
        },
    },
    "JobResponse": {"type": "object", "required": ["data"], "properties": {"data": _ref("Job")}},
    "Health": {
        "type": "object",
        "required": ["status", "service"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "alive", "ready", "unavailable"]},
            "service": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


def _json(schema_name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }
    if headers:
        response["headers"] = headers
    return response


_ERRORS = {
    "400": _json("Error", "Invalid input: `details` names each bad field."),
    "401": _json("Error", "No API key, or a wrong or revoked one."),
    "429": _json(
        "Error",
        "Rate limit of the API key exceeded.",
        {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    ),
    "503": _json("Error", "The warehouse database is unavailable."),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


_FORBIDDEN = {"403": _json("Error", "A company key named another company.")}
_NOT_FOUND = {"404": _json("Error", "Unknown delivery, or another company's.")}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_COMPANY = _query(
    "companyId",
    "Only this company. A company key may name only its own company (default: its own).",
    {"type": "string", "maxLength": 128, "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"},
)
_PERIOD = [
    _query("startDate", "Created at or after: YYYY-MM-DD (UTC) or ISO 8601.", {"type": "string", "maxLength": 40}),
    _query("endDate", "Created before; a date includes that whole UTC day.", {"type": "string", "maxLength": 40}),
]
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The delivery's id or its deliveryId.",
    "schema": {"type": "string", "format": "uuid"},
}


def _body(model: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _paths() -> dict[str, Any]:
    public: list[dict[str, list[str]]] = []
    return {
        "/v1/impact-in/deliver": {
            "post": {
                "operationId": "deliver",
                "summary": "Store one event and deliver it now (idempotent on eventId).",
                "description": (
                    "With a company key the event is stored, and sent, as `api/<companyId>/<eventId>`: the key can "
                    "neither take nor detect another company's event ids. With an admin key `eventId` is the "
                    "warehouse's own id. `event.metadata.priority` (`urgent` or `normal`, the default) is stored with "
                    "the delivery; when a run under way claims the new delivery first (it takes urgent ones in its "
                    "next batch), the answer waits a few seconds for that run to send it, so it is sent once and "
                    "within the provider's shared quota."
                ),
                "requestBody": _body("DeliverBody"),
                "responses": {
                    "201": _json("DeliveryResponse", "Created and sent; `status` says how the send went."),
                    "200": _json("DeliveryResponse", "This event was already delivered to this provider."),
                    "409": _json("Error", "The caller's own event exists under this eventId with different content."),
                    **_errors("400", "401"),
                    **_FORBIDDEN,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/deliveries": {
            "get": {
                "operationId": "listDeliveries",
                "summary": "Deliveries, newest first, one page.",
                "parameters": [
                    _COMPANY,
                    _query("provider", "Only this provider.", {"type": "string", "enum": list(PROVIDERS)}),
                    _query("status", "Only this status.", {"type": "string", "enum": STATUSES}),
                    *_PERIOD,
                    _query(
                        "errorKind",
                        "Only rows failed or retrying for this reason.",
                        {"type": "string", "enum": ERROR_KINDS},
                    ),
                    _query(
                        "eventId",
                        "Only this event's deliveries (a company key: its own submissions' eventId too).",
                        {"type": "string", "maxLength": MAX_TEXT_CHARS},
                    ),
                    _query(
                        "userId",
                        "Only deliveries of this user's events.",
                        {"type": "string", "maxLength": MAX_TEXT_CHARS},
                    ),
                    _query(
                        "search",
                        "Case-insensitive text inside the last error (`%` and `_` are plain characters).",
                        {"type": "string", "minLength": MIN_SEARCH_CHARS, "maxLength": MAX_SEARCH_CHARS},
                    ),
                    {
                        "name": "metadata",
                        "in": "query",
                        "required": False,
                        "description": "Written `metadata.KEY=VALUE` (e.g. `metadata.program=buddy_mentoring`), "
                        "repeatable with different keys, all must match: the event's metadata has KEY (top level) "
                        "equal to VALUE as text, or as the number or boolean VALUE spells.",
                        "style": "deepObject",
                        "explode": True,
                        "schema": {
                            "type": "object",
                            "propertyNames": {"pattern": METADATA_KEY.pattern},
                            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
                        },
                    },
                    _query(
                        "page",
                        "1-based page (the guide's pagination, with `total`). Not with `cursor`.",
                        {"type": "integer", "minimum": 1, "maximum": validation.MAX_PAGE},
                    ),
                    _query(
                        "cursor",
                        "Keyset pagination: `nextCursor` of the previous page, or empty for the first page. The "
                        "answer's pagination is then `CursorPagination`; a deep page costs what the first does. "
                        "Not with `page`.",
                        {"type": "string", "maxLength": validation.MAX_CURSOR_CHARS},
                    ),
                    _query(
                        "limit",
                        "Rows per page.",
                        {"type": "integer", "minimum": 1, "maximum": validation.MAX_LIMIT, "default": 20},
                    ),
                ],
                "responses": {
                    "200": _json("DeliveryList", "A page of deliveries."),
                    **_errors("400", "401"),
                    **_FORBIDDEN,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/deliveries/{id}": {
            "get": {
                "operationId": "getDelivery",
                "summary": "One delivery with its payload and the provider's response.",
                "parameters": [_ID],
                "responses": {
                    "200": _json("DeliveryResponse", "The delivery."),
                    **_errors("400", "401"),
                    **_NOT_FOUND,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/deliveries/{id}/replay": {
            "post": {
                "operationId": "replayDelivery",
                "summary": "Send one delivery again now, with its original deliveryId as idempotency key.",
                "parameters": [_ID],
                "responses": {
                    "200": _json("ReplayResponse", "Replayed; `success` false means the send failed again."),
                    "400": _json("Error", "Invalid id, or the replay is refused (e.g. the delivery succeeded)."),
                    "401": _ERRORS["401"],
                    **_NOT_FOUND,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/deliveries/bulk-replay": {
            "post": {
                "operationId": "bulkReplay",
                "summary": f"Replay up to {validation.MAX_BULK_IDS} deliveries.",
                "requestBody": _body("BulkReplayBody"),
                "responses": {
                    "200": _json("ReplaySummaryResponse", "One result per id, in order."),
                    **_errors("400", "401", "429", "503"),
                },
            }
        },
        "/v1/impact-in/deliveries/retry-all-failed": {
            "post": {
                "operationId": "retryAllFailed",
                "summary": "Replay every failed delivery of a company (optionally one provider), oldest first.",
                "requestBody": _body("RetryAllFailedBody"),
                "description": (
                    "Up to IMPACTIN_API_INLINE_REPLAY_MAX failed rows (default 100) the request replays them and "
                    "answers 200; more, it answers 202 at once and a worker of the API replays them: follow "
                    "`Location` (`GET /v1/impact-in/jobs/{id}`)."
                ),
                "responses": {
                    "200": _json("ReplaySummaryResponse", "One result per failed delivery."),
                    "202": _json(
                        "JobAccepted",
                        "Too many rows to answer inline: a job replays them.",
                        {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}},
                    ),
                    **_errors("400", "401"),
                    **_FORBIDDEN,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/jobs/{id}": {
            "get": {
                "operationId": "getJob",
                "summary": "Progress and outcome summary of bulk work run outside the request; any replica answers.",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "description": "The jobId a 202 answered.",
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    }
                ],
                "responses": {
                    "200": _json("JobResponse", "The job."),
                    **_errors("400", "401"),
                    "404": _json("Error", "Unknown job, or another company's."),
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/stats": {
            "get": {
                "operationId": "deliveryStats",
                "summary": "Totals by status, and by provider x status with average attempts.",
                "parameters": [_COMPANY, *_PERIOD],
                "responses": {
                    "200": _json("StatsResponse", "Delivery statistics."),
                    **_errors("400", "401"),
                    **_FORBIDDEN,
                    **_errors("429", "503"),
                },
            }
        },
        "/v1/impact-in/webhooks/{provider}": {
            "post": {
                "operationId": "providerWebhook",
                "summary": "A provider confirms, rejects or deletes a delivery (signed callback, no API key).",
                "description": (
                    "Authenticated by `X-Impactin-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 with the "
                    "provider's webhook secret (`<PROVIDER>_WEBHOOK_SECRET`, or the company's own) over `<t>.` and "
                    "the raw body. `t` must be within `IMPACTIN_API_WEBHOOK_TOLERANCE_S` (300) of our clock. The "
                    "same callback `id` again with a new signature changes nothing (`duplicate`); with the same "
                    "signature it is a replay (401). A rejection of a delivered row turns it `failed/rejected`."
                ),
                "security": public,
                "parameters": [
                    {
                        "name": "provider",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(PROVIDERS)},
                    }
                ],
                "requestBody": _body("WebhookCallback"),
                "responses": {
                    "200": _json(
                        "WebhookReceived", "Recorded (or recognised as a repeat); `effect` says what changed."
                    ),
                    "400": _json("Error", "Authentic, but the body is not a callback we can read."),
                    "401": _json("Error", "Unsigned, mis-signed, stale or replayed: nothing was recorded."),
                    "404": _json("Error", "No such provider."),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document.", "content": {"application/json": {}}},
                    **_errors("401", "429"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Overall health (checks the warehouse).",
                "security": public,
                "responses": {"200": _json("Health", "Healthy."), "503": _json("Health", "Unhealthy.")},
            }
        },
        "/health/liveness": {
            "get": {
                "operationId": "liveness",
                "summary": "Liveness probe: the process serves requests.",
                "security": public,
                "responses": {"200": _json("Health", "Alive.")},
            }
        },
        "/health/readiness": {
            "get": {
                "operationId": "readiness",
                "summary": "Readiness probe: the warehouse answers and its schema is current.",
                "security": public,
                "responses": {"200": _json("Health", "Ready."), "503": _json("Health", "Not ready.")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of every delivery, read from the warehouse (admin key).",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors("401"),
                    "403": _json("Error", "A company key: the metrics span every company."),
                    **_errors("429", "503"),
                },
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    _, request_schemas = models_json_schema(
        [
            (validation.DeliverBody, "validation"),
            (validation.BulkReplayBody, "validation"),
            (validation.RetryAllFailedBody, "validation"),
        ],
        ref_template=_REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Impact-In API",
            "version": VERSION,
            "description": "Deliveries of TEEI impact events to Benevity, Goodera and Workday: find, inspect, "
            "replay, trigger, and statistics. Every route but the health probes needs `Authorization: Bearer "
            "<key>` (`impactin api-keys create`); a company key sees only its own company.",
        },
        "servers": [{"url": "http://localhost:3007"}],
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {**request_schemas.get("$defs", {}), **RESPONSE_SCHEMAS, **WEBHOOK_SCHEMAS},
        },
    }
