"""Request shapes (the API contract's camelCase, exactly) and the helpers that read them from a request.

Every field is bounded (length, range, enumeration, pattern), so hostile input (SQL fragments, huge strings,
absurd pages) is a 400 naming the field before anything reaches a query; queries are parameterised anyway.
"""

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from starlette.requests import Request

from impactin_pipelines.api.errors import LONE_SURROGATE, bad_request, field_error
from impactin_pipelines.domain.companies import validate_company_id
from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import MAX_TEXT_CHARS, DuplicateKey, unique_keys
from impactin_pipelines.domain.periods import BoundOutOfRange, out_of_range_reason, parse_bound
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.services.replay import MAX_BULK_IDS
from impactin_pipelines.store.delivery_log import (
    MAX_METADATA_VALUE_CHARS,
    MAX_SEARCH_CHARS,
    METADATA_KEY,
    MIN_SEARCH_CHARS,
    decode_cursor,
)

MAX_PAGE = 1_000_000
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 200
METADATA_PREFIX = "metadata."

_MAX_BOUND_CHARS = 40

Model = TypeVar("Model", bound=BaseModel)


def _company(value: str) -> str:
    try:
        return validate_company_id(value)
    except InvalidEvent as exc:
        raise ValueError(exc.reason) from None


def _delivery_id(value: str) -> str:
    """Row ids and delivery ids are both UUIDs; anything else cannot name a delivery."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("must be a UUID (the delivery's id or deliveryId)") from None


def _json_number(value: Any) -> Any:
    """A JSON number (not a numeric string, not a boolean); its range is parse_event's business."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


CompanyId = Annotated[str, Field(max_length=128), AfterValidator(_company)]
DeliveryIdent = Annotated[str, Field(max_length=36), AfterValidator(_delivery_id)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Number = Annotated[Any, AfterValidator(_json_number), WithJsonSchema({"type": "number", "minimum": 0})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- query strings -------------------------------------------------------------------------------------------------
class PeriodQuery(_Strict):
    startDate: datetime | None = Field(None, description="Created at or after: YYYY-MM-DD (UTC midnight) or ISO 8601.")
    endDate: datetime | None = Field(None, description="Created before: a date includes that whole UTC day.")

    @field_validator("startDate", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        return _bound(value, "startDate", end=False)

    @field_validator("endDate", mode="before")
    @classmethod
    def _end(cls, value: Any) -> Any:
        return _bound(value, "endDate", end=True)


def _bound(value: Any, name: str, *, end: bool) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) > _MAX_BOUND_CHARS:
        raise ValueError(f"is longer than {_MAX_BOUND_CHARS} characters")
    try:
        return parse_bound(value, name, end=end)
    except BoundOutOfRange:
        raise ValueError(out_of_range_reason(value.strip(), end=end)) from None
    except ValueError:
        raise ValueError("is not a date (YYYY-MM-DD) or an ISO 8601 datetime") from None


class StatsQuery(PeriodQuery):
    companyId: CompanyId | None = None


class ListQuery(PeriodQuery):
    companyId: CompanyId | None = None
    provider: Provider | None = None
    status: DeliveryStatus | None = None
    errorKind: ErrorKind | None = None
    eventId: Text | None = None
    userId: Text | None = None
    search: str | None = Field(None, min_length=MIN_SEARCH_CHARS, max_length=MAX_SEARCH_CHARS)
    page: int = Field(1, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(None, max_length=MAX_CURSOR_CHARS)
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    metadata: dict[str, str] = Field(default_factory=dict)  # from `metadata.KEY=VALUE` parameters

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value:
            decode_cursor(value)  # ValueError names what is wrong
        return value


def list_query(request: Request) -> ListQuery:
    """The list's query string: `metadata.KEY=VALUE` parameters become `metadata`; `page` and `cursor` exclude
    each other (a cursor already says where the page starts)."""
    params = request.query_params
    problems = []
    metadata: dict[str, str] = {}
    for name in params:
        if not name.startswith(METADATA_PREFIX):
            continue
        key, value = name[len(METADATA_PREFIX) :], params[name]
        if not METADATA_KEY.match(key):
            problems.append(field_error(name, "names a metadata key: 1 to 64 letters, digits, '_' or '-'", key))
        elif not 1 <= len(value) <= MAX_METADATA_VALUE_CHARS:
            problems.append(field_error(name, f"must be 1 to {MAX_METADATA_VALUE_CHARS} characters", value))
        else:
            metadata[key] = value
    if "metadata" in params:
        problems.append(field_error("metadata", "is given as metadata.KEY=VALUE", params["metadata"]))
    if "cursor" in params and "page" in params:
        problems.append(field_error("cursor", "cannot be combined with page", params["cursor"]))
    if problems:
        raise bad_request(problems)
    return query(request, ListQuery, extra={"metadata": metadata}, skip_prefix=METADATA_PREFIX)


class DeliveryPath(_Strict):
    id: DeliveryIdent


class JobPath(_Strict):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]  # a job id (store/api_jobs: uuid4 hex)


# -- bodies --------------------------------------------------------------------------------------------------------
class BulkReplayBody(_Strict):
    ids: list[DeliveryIdent] = Field(min_length=1, max_length=MAX_BULK_IDS)


class RetryAllFailedBody(_Strict):
    companyId: CompanyId
    provider: Provider | None = None


class EventBody(_Strict):
    """The event as the `POST /deliver` contract carries it. Shape and bounds here; meaning in parse_event."""

    eventId: Text
    userId: Text
    eventType: Text
    timestamp: Annotated[str, Field(max_length=64)]
    value: Number
    unit: Text
    outcomeScores: dict[str, Any] | None = None
    metadata: Annotated[
        dict[str, Any] | None,
        Field(
            description="Free-form, sent to the provider as it is. `priority`: `urgent` or `normal` (the default); "
            "urgent deliveries are claimed before normal ones."
        ),
    ] = None


class DeliverBody(_Strict):
    companyId: CompanyId
    provider: Provider
    event: EventBody

    def raw_event(self) -> dict[str, Any]:
        """The snake_case row `parse_event` (and the warehouse) take."""
        e = self.event
        return {
            "event_id": e.eventId,
            "company_id": self.companyId,
            "user_id": e.userId,
            "event_type": e.eventType,
            "occurred_at": e.timestamp,
            "value": e.value,
            "unit": e.unit,
            "outcome_scores": e.outcomeScores,
            "metadata": e.metadata,
        }


# -- readers -------------------------------------------------------------------------------------------------------
def query(
    request: Request, model: type[Model], *, extra: dict[str, Any] | None = None, skip_prefix: str | None = None
) -> Model:
    """A query string as the model; a parameter given twice is an error, not a silent pick. Parameters starting
    with `skip_prefix` were read by the caller, which passes what it made of them in `extra`."""
    params = request.query_params
    repeated = sorted({k for k in params if len(params.getlist(k)) > 1})
    if repeated:
        raise bad_request([field_error(k, "is given more than once", params.getlist(k)[0]) for k in repeated])
    fields = {k: v for k, v in params.items() if skip_prefix is None or not k.startswith(skip_prefix)}
    return model.model_validate({**fields, **(extra or {})})


def path(request: Request, model: type[Model]) -> Model:
    return model.model_validate(dict(request.path_params))


async def body(request: Request, model: type[Model], max_bytes: int) -> Model:
    """A JSON object body, at most `max_bytes`, as the model."""
    data = await _read_capped(request, max_bytes)
    if not data.strip():
        raise bad_request([field_error("body", "a JSON object is required", with_value=False)])
    try:
        parsed = json.loads(data, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:  # which value wins differs between parsers, so none is guessed
        raise bad_request([field_error("body", f"names the key {exc.key!r} twice in one object", exc.key)]) from None
    except RecursionError:
        raise bad_request([field_error("body", "is nested too deeply", with_value=False)]) from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise bad_request([field_error("body", f"is not valid JSON ({reason})", with_value=False)]) from None
    if not isinstance(parsed, dict):
        raise bad_request([field_error("body", "must be a JSON object", parsed)])
    found = _lone_surrogate(parsed)
    if found is not None:
        where, text = found
        reason = "contains a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not Unicode text"
        raise bad_request([field_error(where, reason, text)])
    return model.model_validate(parsed)


def _lone_surrogate(document: Any) -> tuple[str, str] | None:
    """The first key or string value, in document order, that holds a lone surrogate, and where it is.

    JSON can spell one (`"\\ud800"`) but no UTF-8 text can hold it: not the warehouse, not a provider's payload,
    not the answer naming it. Checked once here so that every field of every body is covered."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return where or "body", value
        elif isinstance(value, dict):
            items = [(f"{where}.{k}" if where else str(k), k, v) for k, v in value.items()]
            for at, name, _ in items:
                if LONE_SURROGATE.search(name):
                    return at, name
            pending.extend((at, v) for at, _, v in reversed(items))
        elif isinstance(value, list):
            pending.extend((f"{where}.{i}" if where else str(i), v) for i, v in reversed(list(enumerate(value))))
    return None


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    too_big = bad_request([field_error("body", f"is larger than {max_bytes} bytes", with_value=False)])
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


read_capped = _read_capped  # the raw bytes, for routes that verify a signature over them (webhooks)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed in JSON")
