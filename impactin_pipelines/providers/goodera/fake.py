"""Fake Goodera: OAuth2 client credentials at `/oauth/token`, `POST /v2/events/impact` with a sliding-window rate
limit (429 + Retry-After + X-RateLimit-*), dedup by idempotency key, and the shared fault knobs.

The quota belongs to the credential, as Goodera's does: each client id (the default one, or those added with the
`clients` knob) has its own window of `limit` requests. Every admitted API request's arrival time is kept
(`admitted_at` in the snapshot, and per client in `admitted_by_client`), so tests and the quota benchmarks can check
that no window ever held more than the limit.
"""

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from impactin_pipelines.sandbox.core import ProviderSandbox, Request, Response
from impactin_pipelines.sandbox.oauth import OAuthTokenIssuer

CLIENT_ID = "sandbox-goodera-client"
CLIENT_SECRET = "sandbox-goodera-client-secret"
ENDPOINT = "/v2/events/impact"
TOKEN_PATH = "/oauth/token"
DEFAULT_LIMIT = 100
DEFAULT_WINDOW_S = 60.0


def max_in_window(timestamps: Sequence[float], window_s: float) -> int:
    """The most timestamps any half-open window (t - window_s, t] holds: what a sliding-window limiter counts."""
    ordered = sorted(timestamps)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def _schema_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("schema_version") != "v2.1":
        return "schema_version must be v2.1"
    event = doc.get("event")
    if not isinstance(event, dict):
        return "event is required"
    for key in ("external_id", "event_type", "timestamp"):
        if not isinstance(event.get(key), str) or not event[key]:
            return f"event.{key} is required"
    participant = event.get("participant")
    if not isinstance(participant, dict) or not participant.get("external_user_id"):
        return "event.participant.external_user_id is required"
    impact = event.get("impact")
    if not isinstance(impact, dict) or not isinstance(impact.get("dimensions"), list):
        return "event.impact.dimensions must be a list"
    for i, dimension in enumerate(impact["dimensions"]):
        if not isinstance(dimension, dict) or not isinstance(dimension.get("dimension_name"), str):
            return f"event.impact.dimensions[{i}].dimension_name is required"
        score = dimension.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            return f"event.impact.dimensions[{i}].score must be a number in [0, 1]"
        if dimension.get("scale") != "normalized_0_1":
            return f"event.impact.dimensions[{i}].scale must be normalized_0_1"
    return None


class GooderaSandbox(ProviderSandbox):
    name = "goodera"

    def __init__(
        self,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        *,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        token_expires_in: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.oauth = OAuthTokenIssuer(client_id, client_secret, expires_in=token_expires_in, clock=clock)
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[str, deque[float]] = {}  # per client: arrival times of admitted requests in the window
        self._window_lock = threading.Lock()
        self.admitted_at: list[float] = []
        self.admitted_by_client: dict[str, list[float]] = {}
        self.rate_limited = 0
        self.rate_limit_headers = True  # False: successes carry no X-RateLimit-* (the provider only ever says 429)
        self._ids = itertools.count(1)

    def env(self, base_url: str) -> dict[str, str]:
        """The GOODERA_* variables pointing at this fake (plain http is accepted for loopback
        token URLs without any other variable)."""
        return {
            "GOODERA_API_URL": base_url,
            "GOODERA_TOKEN_URL": f"{base_url}{TOKEN_PATH}",
            "GOODERA_CLIENT_ID": self.client_id,
            "GOODERA_CLIENT_SECRET": self.client_secret,
            "GOODERA_RATE_LIMIT": f"{self.limit}/{_format_window(self.window_s)}",
        }

    # -- control -----------------------------------------------------------------------------------------
    def configure_extra(self, spec: Mapping[str, Any]) -> None:
        """`rate_limit`: {"limit": 20, "window_s": 5}; `rate_limit_headers`: false to answer successes without
        X-RateLimit-*; the OAuth knobs of `OAuthTokenIssuer.configure`."""
        rate = spec.get("rate_limit")
        if rate is not None:
            limit, window_s = int(rate["limit"]), float(rate["window_s"])
            if limit < 1 or window_s <= 0:
                raise ValueError("rate_limit needs limit >= 1 and window_s > 0")
            with self._window_lock:
                self.limit, self.window_s = limit, window_s
        if "rate_limit_headers" in spec:
            self.rate_limit_headers = bool(spec["rate_limit_headers"])
        self.oauth.configure(spec)

    def reset_extra(self) -> None:
        self.oauth.reset()
        with self._window_lock:
            self._windows.clear()
            self.admitted_at.clear()
            self.admitted_by_client.clear()
            self.rate_limited = 0
            self.rate_limit_headers = True

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        with self._window_lock:
            snap["admitted_at"] = list(self.admitted_at)
            snap["admitted_by_client"] = {client: list(times) for client, times in self.admitted_by_client.items()}
            snap["rate_limited"] = self.rate_limited
            snap["limit"] = {"limit": self.limit, "window_s": self.window_s}
        snap["oauth"] = self.oauth.stats()
        return snap

    # -- serving -----------------------------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        if request.path == TOKEN_PATH:
            return self.oauth.token_response(request)
        if request.method == "GET" and request.path == ENDPOINT:  # read-back (reconciliation), outside the quota
            return self.oauth.refuse_bearer(request) or self.read_back_response(request)
        if request.method != "POST" or request.path != ENDPOINT:
            return Response.json(404, {"error": "not_found"})
        refused = self.oauth.refuse_bearer(request)
        if refused is not None:
            return refused
        admitted, remaining, reset_s = self._admit(self.oauth.client_of(self.oauth.bearer_token(request)) or "")
        limit_headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{math.ceil(reset_s * 1000) / 1000:.3f}",  # seconds until a slot frees, rounded up
        }
        if not admitted:
            response = Response.json(429, {"error": "rate_limit_exceeded"}, **limit_headers)
            response.headers["Retry-After"] = str(max(1, math.ceil(reset_s)))
            return response
        response = self._accept(request)
        if self.rate_limit_headers:
            response.headers.update(limit_headers)
        return response

    def _admit(self, client_id: str) -> tuple[bool, int, float]:
        """Sliding window over the client's admitted requests: (admitted, remaining after this one, seconds until
        reset)."""
        with self._window_lock:
            now = self.clock()
            window = self._windows.setdefault(client_id, deque())
            while window and window[0] <= now - self.window_s:
                window.popleft()
            if len(window) >= self.limit:
                self.rate_limited += 1
                return False, 0, max(0.0, window[0] + self.window_s - now)
            window.append(now)
            self.admitted_at.append(now)
            self.admitted_by_client.setdefault(client_id, []).append(now)
            remaining = self.limit - len(window)
            reset_s = window[0] + self.window_s - now
            return True, remaining, max(0.0, reset_s)

    def _accept(self, request: Request) -> Response:
        parsed = self.read_json_event(request, _schema_problem)
        if isinstance(parsed, Response):
            return parsed
        key, doc = parsed
        event_id = doc["event"]["external_id"]
        if event_id in self.faults.reject_events:
            return Response.json(422, {"error": "event_rejected", "event_id": event_id})
        record = {"id": f"gdr_{next(self._ids)}", "event_id": event_id, "idempotency_key": key, "body": doc}
        return self.accept_response(key, record)


def _format_window(window_s: float) -> str:
    if window_s == 60:
        return "minute"
    return f"{window_s:g}s"
