"""What every sandbox provider shares: the request log, idempotency memory and fault injection.

Faults are set per provider, over HTTP (`POST /_sandbox/{provider}/faults`) or in-process, so tests that run
the pipeline in a subprocess can script them too.

Each fake also plays the provider's side of what happens after the send: it signs and sends webhook callbacks
(`callbacks` knobs) to a configured URL, and answers a read-back of what it holds (`read_back`, with knobs that make
it hold less, more or other than it accepted), so confirmations and reconciliation are exercised end to end.
"""

import hashlib
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.security.webhooks import SIGNATURE_HEADER, sign


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
    `latency_ms` is the provider's response time: every answer leaves that long after its request arrived, the
    sandbox's own work included, so that a client measured against it is measured against that latency only.
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
class CallbackKnobs:
    """Webhook callbacks the fake sends after accepting a new request (nothing is sent while `url` is None):
    `delay_s` before sending; `duplicates`: the same callback sent again that many times, freshly signed;
    `replay`: the exact same request (bytes and signature) sent again; `bad_signature` / `unsigned` / `stale_s`
    (sign with a timestamp that far in the past) to be refused; `reject_events`: event ids accepted with a 2xx and
    then rejected by callback (`reason`); `silent`: accept without any callback."""

    url: str | None = None
    secret: str = ""
    delay_s: float = 0.0
    duplicates: int = 0
    replay: bool = False
    bad_signature: bool = False
    unsigned: bool = False
    stale_s: float = 0.0
    reject_events: set[str] = field(default_factory=set)
    reason: str = "rejected by the sandbox"
    silent: bool = False


@dataclass
class ReadBackKnobs:
    """What the read-back shows instead of the truth: `drop_events` accepted but not held (silently lost),
    `extra_events` held although nobody sent them ({"event_id", "idempotency_key"?, "body"?}), `alter_events`
    held with another payload."""

    drop_events: set[str] = field(default_factory=set)
    extra_events: list[dict[str, Any]] = field(default_factory=list)
    alter_events: set[str] = field(default_factory=set)


def document_hash(document: Any) -> str:
    """sha256 of a JSON document in our one serialisation (mapping/encoding), so equal documents hash equal."""
    return hashlib.sha256(encode_json(document)).hexdigest()


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
        self.received_at: dict[str, float] = {}  # idempotency key -> when it was first accepted
        self.webhook_secret = f"sandbox-{self.name}-webhook-secret"
        self.callbacks = CallbackKnobs(secret=self.webhook_secret)
        self.read_back_knobs = ReadBackKnobs()
        self.callback_log: list[dict[str, Any]] = []
        self._callback_ids = itertools.count(1)

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
            if "callbacks" in spec:
                knobs = dict(spec["callbacks"] or {})
                knobs["reject_events"] = set(knobs.get("reject_events", ()))
                self.callbacks = CallbackKnobs(**{"secret": self.webhook_secret, **knobs})
            if "read_back" in spec:
                knobs = dict(spec["read_back"] or {})
                for name in ("drop_events", "alter_events"):
                    knobs[name] = set(knobs.get(name, ()))
                self.read_back_knobs = ReadBackKnobs(**knobs)
            self.configure_extra(spec)

    def configure_extra(self, spec: Mapping[str, Any]) -> None:
        """Provider-specific knobs."""

    def reset(self) -> None:
        with self.lock:
            self.faults = Faults()
            self.log.clear()
            self.accepted.clear()
            self.received_at.clear()
            self.callbacks = CallbackKnobs(secret=self.webhook_secret)
            self.read_back_knobs = ReadBackKnobs()
            self.callback_log.clear()
            self.reset_extra()

    def reset_extra(self) -> None:
        """Provider-specific state."""

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": [asdict(r) for r in self.log],
                "accepted": list(self.accepted.values()),
                "callbacks": list(self.callback_log),
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
            self.received_at[key] = time.time()
            self._schedule_callback(record)
            return record, False

    # -- after the send: callbacks and read-back -----------------------------------------------------------
    def _schedule_callback(self, record: dict[str, Any]) -> None:
        knobs = self.callbacks
        if knobs.url is None or knobs.silent:
            return
        rejected = record.get("event_id") in knobs.reject_events
        kind = "rejected" if rejected else "confirmed"
        timer = threading.Timer(knobs.delay_s, self.send_callback, (record, kind), {"knobs": knobs})
        timer.daemon = True
        timer.start()

    def callback_body(self, record: dict[str, Any], kind: str, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {
            "id": f"cb_{self.name}_{next(self._callback_ids)}",
            "type": f"delivery.{kind}",
            "idempotencyKey": record.get("idempotency_key"),
            "eventId": record.get("event_id"),
            "providerReference": record.get("id"),
            "occurredAt": datetime.now(UTC).isoformat(),
        }
        if kind != "confirmed":
            doc["reason"] = reason or self.callbacks.reason
        return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()

    def send_callback(
        self, record: dict[str, Any], kind: str, *, knobs: CallbackKnobs | None = None, reason: str | None = None
    ) -> list[int | None]:
        """Send one callback about `record` (and its configured repeats); the HTTP statuses answered, in order."""
        knobs = knobs or self.callbacks
        if knobs.url is None:
            raise ValueError("no callback url is configured (callbacks.url)")
        body = self.callback_body(record, kind, reason)
        statuses = []
        first_headers: dict[str, str] | None = None
        for repeat in range(1 + max(0, knobs.duplicates)):
            headers = self._callback_headers(body, knobs, later_s=repeat)
            first_headers = first_headers or headers
            statuses.append(self._post_callback(knobs.url, body, headers, record, kind))
        if knobs.replay and first_headers is not None:
            statuses.append(self._post_callback(knobs.url, body, first_headers, record, kind, replay=True))
        return statuses

    def _callback_headers(self, body: bytes, knobs: CallbackKnobs, later_s: int = 0) -> dict[str, str]:
        """Signed now (a repeat as if sent `later_s` seconds later, as a provider's retry would be: a new signature,
        not a byte-exact replay)."""
        headers = {"Content-Type": "application/json"}
        if knobs.unsigned:
            return headers
        timestamp = int(time.time() - knobs.stale_s) + later_s
        secret = knobs.secret + ("-wrong" if knobs.bad_signature else "")
        headers[SIGNATURE_HEADER] = sign(body, secret, timestamp)
        return headers

    def _post_callback(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        record: dict[str, Any],
        kind: str,
        *,
        replay: bool = False,
    ) -> int | None:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - see below
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the URL a test or demo configured
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = None
        with self.lock:
            self.callback_log.append(
                {
                    "event_id": record.get("event_id"),
                    "kind": kind,
                    "status": status,
                    "replay": replay,
                    "at": time.time(),
                }
            )
        return status

    def read_back(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """What this fake holds, received in [since, until) (unix seconds): one item per stored record with its
        idempotency key, event id, our reference and the hash of the document held; the knobs apply."""
        knobs = self.read_back_knobs
        with self.lock:
            held = [(key, rec, self.received_at.get(key, 0.0)) for key, rec in self.accepted.items()]
        items = []
        for _key, record, at in held:
            if (since is not None and at < since) or (until is not None and at >= until):
                continue
            event_id = record.get("event_id")
            if event_id in knobs.drop_events:
                continue
            body = record.get("body")
            if record.get("protocol") == "soap":  # a parsed SOAP report: no JSON document of ours to compare
                body = None
            if event_id in knobs.alter_events:
                body = {"altered_by_sandbox": True, "original": body}
            items.append(
                {
                    "id": record.get("id"),
                    "idempotency_key": record.get("idempotency_key"),
                    "event_id": event_id,
                    "received_at": datetime.fromtimestamp(at, UTC).isoformat(),
                    "payload_hash": document_hash(body) if body is not None else None,
                }
            )
        for n, extra in enumerate(knobs.extra_events, start=1):
            items.append(
                {
                    "id": f"extra_{n}",
                    "idempotency_key": extra.get("idempotency_key"),
                    "event_id": extra.get("event_id"),
                    "received_at": datetime.now(UTC).isoformat(),
                    "payload_hash": document_hash(extra.get("body", {})),
                }
            )
        return items

    def read_back_response(self, request: Request) -> Response:
        """`GET ...?since=<iso>&until=<iso>`: `{"items": [...]}` (the provider's list API, as the fake has it)."""
        try:
            since, until = (_instant(request.query.get(name)) for name in ("since", "until"))
        except ValueError as exc:
            return Response.json(400, {"error": str(exc)})
        return Response.json(200, {"items": self.read_back(since, until)})

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


def _instant(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} needs a UTC offset")
    return moment.timestamp()
