"""Serving the app with uvicorn: in the foreground (`impactin api`, with uvicorn's access log: method, path, status,
never a header, so never a key) or on a background thread for tests and demos (quiet)."""

import json
import threading
import time

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

STARTUP_TIMEOUT_S = 10.0
_UNPARSEABLE = json.dumps(
    {"error": "Bad request", "message": "the request is not valid HTTP/1.1 and could not be read"}
).encode("ascii")


# uvicorn declares AutoHTTPProtocol as a variable (type[asyncio.Protocol]: httptools or h11, whichever is installed),
# which a type checker cannot take as a base class; subclassing it is how uvicorn picks the same implementation.
class JsonErrorHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol (httptools, or h11 without it), except that a request it cannot parse is answered
    with the API's JSON error instead of plain text: the app never sees such a request, so it cannot answer it."""

    def send_400_response(self, msg: str) -> None:
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(_UNPARSEABLE)
        )
        self.transport.write(head + _UNPARSEABLE)
        self.transport.close()


def serve(app: Starlette, host: str, port: int, *, log_level: str = "info") -> None:
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        http=JsonErrorHTTPProtocol,
        proxy_headers=False,  # the app trusts X-Forwarded-For from its configured proxies only (api/app.py)
    )


class BackgroundServer:
    """The app on a real socket in this process; port 0 picks a free one. Use as a context manager."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="on",
            http=JsonErrorHTTPProtocol,
            proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="impactin-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=STARTUP_TIMEOUT_S)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
