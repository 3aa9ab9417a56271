"""Shared setup for benchmarks: a throwaway warehouse, seeded events, a sandbox."""

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import Connector, OutboundDelivery
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine
from impactin_pipelines.store.schema import company_integrations, impact_events


@contextmanager
def scratch_warehouse() -> Iterator[tuple[Engine, Path]]:
    with tempfile.TemporaryDirectory(prefix="impactin-bench-") as tmp:
        os.environ["IMPACTIN_STATE_DIR"] = tmp
        engine = make_engine(f"sqlite:///{tmp}/warehouse.db")
        migrations.upgrade(engine)
        try:
            yield engine, Path(tmp)
        finally:
            engine.dispose()


def seed(engine: Engine, provider: str, companies: list[str], events_per_company: int) -> int:
    rows = [
        {
            "event_id": f"evt_{company}_{i:06d}",
            "company_id": company,
            "user_id": f"user_{i % 97}",
            "event_type": "volunteer_hours",
            "occurred_at": datetime(2025, 11, 14, 10, tzinfo=UTC),
            "value": 2.5,
            "unit": "hours",
            "outcome_scores": {"community_engagement": 0.5},
            "metadata": {"program": "bench"},
        }
        for company in companies
        for i in range(events_per_company)
    ]
    with engine.begin() as conn:
        conn.execute(
            company_integrations.insert(),
            [{"company_id": c, "provider": provider, "enabled": True, "settings": None} for c in companies],
        )
        conn.execute(impact_events.insert(), rows)
    return len(rows)


class SandboxProcess:
    """The sandbox in its own process, as a real provider would be: its CPU does not compete with ours for the GIL."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "impactin_pipelines.cli", "sandbox", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.env: dict[str, str] = {}
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("# sandbox ready at "):
                self.url = line.removeprefix("# sandbox ready at ").strip()
                break
            name, _, value = line.removeprefix("export ").strip().partition("=")
            self.env[name] = shlex.split(value)[0] if value else ""
        else:
            raise RuntimeError("the sandbox process exited before announcing its address")

    def configure(self, provider: str, faults: dict) -> None:  # type: ignore[type-arg]
        requests.post(f"{self.url}/_sandbox/{provider}/faults", json=faults, timeout=5).raise_for_status()

    def reset(self) -> None:
        requests.post(f"{self.url}/_sandbox/reset", timeout=5).raise_for_status()

    def requests_seen(self, provider: str) -> dict:  # type: ignore[type-arg]
        return requests.get(f"{self.url}/_sandbox/{provider}/requests", timeout=30).json()

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a benchmark stops by itself, whatever the sandbox does
            self._proc.kill()
            self._proc.wait(timeout=10)

    def __enter__(self) -> "SandboxProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


Posted = tuple[str, dict[str, str], bytes]  # a request as the bare loops post it: URL, headers, body


def post_concurrently(items: list[Posted], concurrency: int) -> None:
    """A bare loop: `concurrency` threads of `requests.post` on one pooled session, nothing recorded; every answer
    must be a success."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def post(item: Posted) -> None:
        response = session.post(item[0], headers=item[1], data=item[2], timeout=30)
        assert response.status_code < 300, response.text[:200]

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, items))
    session.close()


def send_concurrently(connector: Connector, rows: list[dict[str, Any]], concurrency: int) -> float:
    """The machine's own ceiling for a throughput benchmark: the stored payloads, prepared by the same connector
    beforehand, posted by `post_concurrently`; seconds taken. Keys are prefixed so the provider does not dedup the
    real runs after."""
    prepared: list[Posted] = []
    for row in rows:
        outbound = OutboundDelivery(
            "bare-" + row["delivery_id"], row["company_id"], row["provider"], row["event_id"], row["payload"]
        )
        request = connector.prepare(outbound)
        prepared.append((request.url, dict(request.headers), request.body))
    started = time.perf_counter()
    post_concurrently(prepared, concurrency)
    return time.perf_counter() - started


def send_sequentially(connector: Connector, rows: list[dict]) -> float:  # type: ignore[type-arg]
    """The baseline every throughput benchmark compares with: stored payloads sent one request at a time through
    the same connector, nothing recorded. Keys are prefixed so the provider does not dedup the real runs after."""
    started = time.perf_counter()
    for row in rows:
        outbound = OutboundDelivery(
            "baseline-" + row["delivery_id"], row["company_id"], row["provider"], row["event_id"], row["payload"]
        )
        result = connector.send(outbound)
        assert result.http_status == 201, result.error
    return time.perf_counter() - started
