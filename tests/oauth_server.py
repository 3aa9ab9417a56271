"""An OAuth2 client-credentials token endpoint written with Authlib (not by us), served on loopback for tests.

It accepts exactly one client authentication method, as a real server may: Authlib's own client-credentials grant,
its own client authentication (`client_secret_basic` decodes the form-encoded Basic credentials, as RFC 6749 2.3.1
says) and its own error answers (`invalid_client: The client cannot authenticate with methods: [...]`). Each issued
token can be handed to a sandbox API (`on_token`), so deliveries run against this endpoint end to end.
"""

import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator


class _Client(ClientMixin):
    def __init__(self, client_id: str, client_secret: str, method: str) -> None:
        self.client_id, self.client_secret, self.method = client_id, client_secret, method

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.method

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return ""


class _Request(OAuth2Request):
    def __init__(self, uri: str, headers: Any, form: dict[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _Server(AuthorizationServer):
    def __init__(self, client: _Client, expires_in: int, on_token: Callable[[dict[str, Any], str], None]) -> None:
        super().__init__()
        self.client = client
        self.on_token = on_token

        class OnlyThisMethod(grants.ClientCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = [client.method]

        self.register_grant(OnlyThisMethod)
        generator = BearerTokenGenerator(lambda **_: secrets.token_urlsafe(24), expires_generator=expires_in)
        self.register_token_generator("default", generator)

    def query_client(self, client_id: str) -> _Client | None:
        return self.client if client_id == self.client.client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.on_token(token, request.auth_method)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers


@dataclass
class AuthlibTokenEndpoint:
    url: str
    method: str
    client_id: str
    client_secret: str
    issued: list[dict[str, Any]] = field(default_factory=list)  # {"access_token", "expires_in", "auth_method"}
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, error) of every answer

    @property
    def requests(self) -> int:
        return len(self.answers)


@contextmanager
def authlib_token_endpoint(
    method: str,
    *,
    client_id: str,
    client_secret: str,
    expires_in: int = 3600,
    on_token: Callable[[str, int], None] | None = None,
) -> Iterator[AuthlibTokenEndpoint]:
    """A token endpoint at http://127.0.0.1:<port>/oauth/token accepting only `method` for this one client."""
    lock = threading.Lock()
    endpoint = AuthlibTokenEndpoint("", method, client_id, client_secret)

    def issued(token: dict[str, Any], auth_method: str) -> None:
        with lock:
            endpoint.issued.append({**token, "auth_method": auth_method})
        if on_token is not None:
            on_token(token["access_token"], int(token.get("expires_in") or expires_in))

    server = _Server(_Client(client_id, client_secret, method), expires_in, issued)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode("utf-8"), keep_blank_values=True))
            request = _Request(endpoint.url, self.headers, form)
            status, body, headers = server.create_token_response(request)
            with lock:
                endpoint.answers.append((status, body.get("error", "") if isinstance(body, dict) else ""))
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers:
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    endpoint.url = f"http://127.0.0.1:{httpd.server_address[1]}/oauth/token"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
