"""What every sandbox provider shares: the request log, idempotency memory and fault injection.

Faults are set per provider, over HTTP (`POST /_sandbox/{provider}/faults`) or in-process, so tests that run
the pipeline in a subprocess can script them too.
"""

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False  # for the request log: a repeat of an idempotency key already accepted
    event_id: str | None = None  # for the request log, when the body is not JSON the server can read

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> "Response":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain") -> "Response":
        return cls(status, text.encode(), {"Content-Type": content_type})


@dataclass
class Faults:
    """Knobs. `fail_next` entries are consumed in order, one per request:
    {"status": 503, "count": 2, "retry_after": "1", "body": "<html>..</html>", "content_type": "text/html"}
    {"mode": "hang", "seconds": 5}          - answer only after the client has given up (read timeout)
    {"mode": "reset"}                       - close the connection without answering
    {"mode": "truncate"}                    - announce a body longer than the one sent
    Any entry with "accept": true is first handled normally (stored, deduplicated), and only its answer goes
    wrong: the response lost after the provider acted on the request, which a retry must not double-count.
    """

    fail_next: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0
    reject_events: set[str] = field(default_factory=set)

    def take(self) -> dict[str, Any] | None:
        while self.fail_next:
            head = self.fail_next[0]
            remaining = int(head.get("count", 1))
            if remaining <= 0:
                self.fail_next.pop(0)
                continue
            if remaining == 1:
                self.fail_next.pop(0)
            else:
                head["count"] = remaining - 1
            return head
        return None


@dataclass
class LoggedRequest:
    at: float
    method: str
    path: str
    idempotency_key: str | None
    status: int | None
    duplicate: bool
    fault: str | None
    event_id: str | None = None


class ProviderSandbox:
    """Base for the fakes: subclasses implement `route` and name themselves."""

    name = "provider"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.log: list[LoggedRequest] = []
        self.accepted: dict[str, dict[str, Any]] = {}  # idempotency key -> stored record

    def env(self, base_url: str) -> dict[str, str]:
        """The provider's environment variables pointing at this fake served at `base_url`."""
        return {}

    # -- control -----------------------------------------------------------------------------------------
    def configure(self, spec: Mapping[str, Any]) -> None:
        with self.lock:
            if "fail_next" in spec:
                items = spec["fail_next"]
                self.faults.fail_next.extend([items] if isinstance(items, dict) else list(items))
            if "latency_ms" in spec:
                self.faults.latency_ms = float(spec["latency_ms"])
            if "reject_events" in spec:
                self.faults.reject_events = set(spec["reject_events"])
            self.configure_extra(spec)

    def configure_extra(self, spec: Mapping[str, Any]) -> None:
        """Provider-specific knobs."""

    def reset(self) -> None:
        with self.lock:
            self.faults = Faults()
            self.log.clear()
            self.accepted.clear()
            self.reset_extra()

    def reset_extra(self) -> None:
        """Provider-specific state."""

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": [asdict(r) for r in self.log],
                "accepted": list(self.accepted.values()),
            }

    # -- serving -----------------------------------------------------------------------------------------
    def next_fault(self) -> tuple[dict[str, Any] | None, float]:
        with self.lock:
            return self.faults.take(), self.faults.latency_ms

    def record(
        self,
        request: Request,
        status: int | None,
        *,
        duplicate: bool = False,
        fault: str | None = None,
        event_id: str | None = None,
    ) -> None:
        with self.lock:
            self.log.append(
                LoggedRequest(
                    time.time(),
                    request.method,
                    request.path,
                    request.header("X-Idempotency-Key"),
                    status,
                    duplicate,
                    fault,
                    event_id,
                )
            )

    def route(self, request: Request) -> Response:
        raise NotImplementedError

    def accept_once(self, key: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Idempotency: the first request with a key is stored; later ones get the stored record back."""
        with self.lock:
            if key in self.accepted:
                return self.accepted[key], True
            self.accepted[key] = record
            return record, False

    def read_json_event(
        self, request: Request, schema_problem: Callable[[Any], str | None]
    ) -> tuple[str, dict[str, Any]] | Response:
        """(idempotency key, document), or the error a JSON provider answers: wrong content type, no key, a body
        that is not JSON or not the provider's schema."""
        if not (request.header("Content-Type") or "").startswith("application/json"):
            return Response.json(415, {"error": "content type must be application/json"})
        key = request.header("X-Idempotency-Key")
        if not key:
            return Response.json(400, {"error": "X-Idempotency-Key is required"})
        try:
            doc = request.json()
        except ValueError:
            return Response.json(400, {"error": "body is not JSON"})
        problem = schema_problem(doc)
        if problem:
            return Response.json(400, {"error": problem})
        return key, doc

    def accept_response(self, key: str, record: dict[str, Any], **shown: Any) -> Response:
        """Store once per key; 201 the first time, 200 with the same record for a repeat."""
        stored, duplicate = self.accept_once(key, record)
        response = Response.json(
            200 if duplicate else 201, {"id": stored["id"], **shown, "status": "accepted", "duplicate": duplicate}
        )
        response.duplicate = duplicate
        return response
