"""One loopback HTTP server for every registered provider's fake (`/<provider>/...`), plus `/_sandbox/...` to
script faults and read the request log.

A plain threading HTTP server on purpose: it can misbehave at the socket level (reset, hang, truncate),
which an ASGI stack would smooth over.
"""

import json
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from impactin_pipelines.providers import specs
from impactin_pipelines.sandbox.core import ProviderSandbox, Request, Response


class SandboxServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, providers: list[ProviderSandbox] | None = None):
        self.providers: dict[str, ProviderSandbox] = {
            p.name: p for p in (providers if providers is not None else default_providers())
        }
        self._httpd = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def provider_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def env(self) -> dict[str, str]:
        """The providers' variables, pointing at this sandbox with its credentials."""
        return self.env_for(self.url, list(self.providers.values()))

    @staticmethod
    def env_for(base_url: str, providers: list[ProviderSandbox] | None = None) -> dict[str, str]:
        env: dict[str, str] = {}
        for provider in providers if providers is not None else default_providers():
            env.update(provider_env(provider, f"{base_url}/{provider.name}"))
        return env

    def start(self) -> "SandboxServer":
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="impactin-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_providers() -> list[ProviderSandbox]:
    """A fresh fake of every registered provider."""
    return [spec.fake() for spec in specs()]


def provider_env(provider: ProviderSandbox, base_url: str) -> dict[str, str]:
    """The fake's variables, plus the webhook secret its callbacks are signed with when the provider declares one."""
    env = provider.env(base_url)
    spec = next((s for s in specs() if s.name == provider.name), None)
    variable = spec.variables().get("webhook_secret") if spec else None
    if variable:
        env.setdefault(variable, provider.webhook_secret)
    return env


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _handler_for(server: SandboxServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real providers; the client pools connections
        # Headers and body leave in one segment: otherwise Nagle + delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True
        wbufsize = -1

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is the record
            return

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            arrived = time.monotonic()
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            segments = parts.path.split("/", 2)  # "", "<provider>", "rest"
            if len(segments) < 2 or not segments[1]:
                return self._send(Response.json(404, {"error": "not_found"}))
            if segments[1] == "_sandbox":
                return self._send(_control(server, parts.path, self.command, body))
            provider = server.providers.get(segments[1])
            if provider is None:
                return self._send(Response.json(404, {"error": f"no sandbox provider {segments[1]!r}"}))
            request = Request(
                self.command,
                "/" + (segments[2] if len(segments) > 2 else ""),
                headers,
                body,
                dict(parse_qsl(parts.query)),
            )
            fault, latency_ms = provider.next_fault()
            answer_at = arrived + latency_ms / 1000
            if fault is not None:
                _sleep_until(answer_at)
                return self._inject(provider, request, fault)
            response = provider.route(request)
            provider.record(
                request,
                response.status,
                duplicate=response.duplicate,
                event_id=response.event_id or _event_id(request),
            )
            _sleep_until(answer_at)
            self._send(response)

        def _inject(self, provider: ProviderSandbox, request: Request, fault: Mapping[str, Any]) -> None:
            mode = fault.get("mode", "status")
            if fault.get("accept"):  # the provider stores the request, then its answer is lost or garbled on the way
                stored = provider.route(request)
                event_id = stored.event_id or _event_id(request)
                provider.record(
                    request, stored.status, duplicate=stored.duplicate, fault=f"{mode} after accept", event_id=event_id
                )
            else:
                provider.record(request, fault.get("status"), fault=str(mode), event_id=_event_id(request))
            if mode == "hang":
                time.sleep(float(fault.get("seconds", 5)))
                return self._send(Response.json(504, {"error": "too late"}))
            if mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return None
            if mode == "truncate":
                self.send_response(int(fault.get("status", 200)))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"id": "trunc')
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            status = int(fault.get("status", 503))
            headers = {"Content-Type": fault.get("content_type", "application/json")}
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            for name, value in (fault.get("headers") or {}).items():
                headers[name] = str(value)
            body = fault.get("body")
            payload = body.encode() if isinstance(body, str) else json.dumps({"error": f"injected {status}"}).encode()
            return self._send(Response(status, payload, headers))

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

    return Handler


def _event_id(request: Request) -> str | None:
    try:
        doc = request.json()
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    event = doc.get("event") or doc.get("impact_report") or {}
    if isinstance(event, dict):
        return event.get("id") or event.get("external_id") or event.get("external_reference_id")
    return None


def _control(server: SandboxServer, path: str, method: str, body: bytes) -> Response:
    """`POST /_sandbox/reset`, `POST /_sandbox/{p}/faults`, `GET /_sandbox/{p}/requests`."""
    parts = [p for p in path.split("/") if p][1:]
    if parts == ["reset"] and method == "POST":
        for provider in server.providers.values():
            provider.reset()
        return Response.json(200, {"reset": True})
    if len(parts) == 2 and parts[0] in server.providers:
        provider = server.providers[parts[0]]
        if parts[1] == "faults" and method == "POST":
            try:
                provider.configure(json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                return Response.json(400, {"error": str(exc)})
            return Response.json(200, {"configured": True})
        if parts[1] == "requests" and method == "GET":
            return Response.json(200, provider.snapshot())
        if parts[1] == "callback" and method == "POST":
            return _send_callback(provider, body)
    return Response.json(404, {"error": "unknown sandbox control path"})


def _send_callback(provider: ProviderSandbox, body: bytes) -> Response:
    """`POST /_sandbox/{p}/callback` {"event_id", "type": "confirmed|rejected|deleted", "reason"?}: send one callback
    about a record the fake holds now, signed as the knobs say; answers the statuses our API gave."""
    try:
        spec = json.loads(body or b"{}")
        with provider.lock:
            record = next(r for r in provider.accepted.values() if r.get("event_id") == spec.get("event_id"))
        statuses = provider.send_callback(record, str(spec.get("type", "confirmed")), reason=spec.get("reason"))
    except StopIteration:
        return Response.json(404, {"error": "the sandbox holds no such event"})
    except (ValueError, TypeError) as exc:
        return Response.json(400, {"error": str(exc)})
    return Response.json(200, {"statuses": statuses})
