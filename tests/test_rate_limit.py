"""The Goodera quota: parsing GOODERA_RATE_LIMIT, provider pause headers, and the shared bucket measured from the fake
Goodera's own arrival log with two delivery processes at a scaled-down limit (no window over the limit, no 429)."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import sqlalchemy as sa

from impactin_pipelines.connectors.ratelimit import (
    PauseStore,
    RateLimit,
    RateLimitWait,
    SlotStore,
    parse_rate_limit,
    pause_requested_s,
    reset_after_s,
    shared_limiter,
)
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.providers.goodera.fake import max_in_window
from impactin_pipelines.security.crypto import generate_key
from tests.support import add_events, add_integration, events, statuses

CHILD = """
import sys
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.settings import DeliverySettings, warehouse_url
from impactin_pipelines.store.engine import make_engine

engine = make_engine(warehouse_url())
company = sys.argv[1]
extract(engine, company, Provider.GOODERA)
factory = ConnectorFactory(engine, settings=DeliverySettings(concurrency=4))
report = DeliveryRun(engine, factory, provider=Provider.GOODERA, company_ids=[company]).run()
factory.close()
print(dict(report.totals.outcomes))
"""


class Stop(Exception):
    pass


def recording_sleep(slept: list[float]):
    """A sleep that records what it was asked and ends the wait there (no test waits for real)."""

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise Stop

    return sleep


# -- GOODERA_RATE_LIMIT -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "limit", "window_s"),
    [
        ("100/minute", 100, 60.0),
        ("100/min", 100, 60.0),
        ("20/5s", 20, 5.0),
        (" 7 / 2 m ", 7, 120.0),
        ("1000/hour", 1000, 3600.0),
        ("5/second", 5, 1.0),
        ("50/1500ms", 50, 1.5),
    ],
)
def test_rate_limits_parse(raw: str, limit: int, window_s: float) -> None:
    rate = parse_rate_limit(raw, name="GOODERA_RATE_LIMIT")
    assert (rate.limit, rate.window_s) == (limit, window_s)
    assert 0 < rate.margin_s <= max(0.15, 0.02 * window_s)  # a small safety margin, never a large one


@pytest.mark.parametrize("raw", ["", "lots", "100", "100/fortnight", "0/minute", "-1/minute", "10/0s", "1.5/minute"])
def test_bad_rate_limits_name_the_variable_and_the_value(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_rate_limit(raw, name="GOODERA_RATE_LIMIT")
    assert str(raised.value).startswith(f"GOODERA_RATE_LIMIT={raw!r}")


# -- what the provider asks for -----------------------------------------------------------------------------------
def test_reset_and_pause_headers() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert reset_after_s({"Retry-After": "3"}) == 3.0
    assert 25 < (reset_after_s({"Retry-After": soon}) or 0) <= 30
    assert reset_after_s({"X-RateLimit-Reset": "1.5"}) == 1.5  # a delay ...
    assert 8 < (reset_after_s({"X-RateLimit-Reset": str(int(time.time()) + 10)}) or 0) <= 10  # ... or a Unix time
    assert reset_after_s({"Retry-After": "2", "X-RateLimit-Reset": "50"}) == 2.0  # Retry-After wins
    assert reset_after_s({"X-RateLimit-Reset": "soon"}) is None
    assert reset_after_s({"Retry-After": "999999"}) == 3600.0  # capped
    assert pause_requested_s(201, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1.5"}) == 1.5
    assert pause_requested_s(201, {"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1.5"}) is None
    assert pause_requested_s(429, {"Retry-After": "2"}) == 2.0
    assert pause_requested_s(429, {}) is None  # no hint: the retry policy's backoff decides


# -- the shared bucket and pause, on both backends ----------------------------------------------------------------
def test_a_pause_seen_by_one_sender_stops_every_sender(engine) -> None:
    rate = RateLimit(100, 60.0, 0.15)
    limiter = shared_limiter(engine, "goodera", "c" * 64, rate)
    assert limiter.observe(429, {"Retry-After": "20"}) == 20.0
    other = PauseStore(limiter.pauses.engine)  # another process's view of the same store
    assert 15 < other.remaining_s(limiter.key) <= 20
    slept: list[float] = []
    limiter.sleep = recording_sleep(slept)
    with pytest.raises(Stop):
        limiter.acquire(max_wait_s=60)
    assert len(slept) == 1 and 15 < slept[0] <= 20  # it waited for the provider's reset before taking a slot
    with pytest.raises(RateLimitWait) as raised:  # a pause longer than we may wait: give back, send nothing
        limiter.acquire(max_wait_s=5)
    assert 15 < raised.value.retry_after_s <= 20
    assert limiter.observe(201, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "60"}) is None
    limiter.observe(201, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "5"})  # never moves a pause back
    assert other.remaining_s(limiter.key) > 10


def test_a_full_bucket_gives_back_within_the_allowed_wait(engine) -> None:
    limiter = shared_limiter(engine, "goodera", "d" * 64, RateLimit(1, 30.0, 0.15))
    limiter.acquire(max_wait_s=1)
    with pytest.raises(RateLimitWait, match="no room in the shared 1/30s quota") as raised:
        limiter.acquire(max_wait_s=0.2)
    assert raised.value.retry_after_s == pytest.approx(30.15)


def test_buckets_are_per_credential(engine) -> None:
    one = shared_limiter(engine, "goodera", "e" * 64, RateLimit(1, 30.0, 0.15))
    other = shared_limiter(engine, "goodera", "f" * 64, RateLimit(1, 30.0, 0.15))
    assert one.key != other.key and "e" * 16 in one.key
    one.acquire(max_wait_s=1)
    other.acquire(max_wait_s=1)  # another credential's quota is untouched
    with pytest.raises(RateLimitWait):
        one.acquire(max_wait_s=0.1)


def test_a_quota_is_one_row_however_many_requests_it_admits(engine) -> None:
    """A slot costs one row look-up: the bucket keeps when the next request may leave, not a log of requests (a
    log is counted on every request and grows with the quota: 30,000 rows for a night at a raised quota)."""
    limiter = shared_limiter(engine, "goodera", "a1" * 32, RateLimit(1_000_000, 60.0, 0.15))  # 60 µs apart
    taken = 0
    for _ in range(2000):
        wait_s = limiter.try_acquire()
        if wait_s == 0:
            taken += 1
        else:
            assert wait_s < 0.01  # never more than a spacing (or a look-again) away
            time.sleep(wait_s)
    assert taken > 1000
    with limiter.slots.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT limit_key FROM impactin_rate_limit_slots")).scalars().all()
    assert rows == [limiter.key]


def test_slots_are_timed_by_the_database_clock_not_the_hosts(pg_engine) -> None:
    """Two senders on hosts whose clocks are an hour apart still keep one quota: on PostgreSQL the database's clock
    times every slot (the embedded SQLite file is one machine's, on its own clock)."""
    here = SlotStore(pg_engine)
    ahead = SlotStore(pg_engine, clock=lambda: time.time() + 3600)
    behind = SlotStore(pg_engine, clock=lambda: time.time() - 3600)
    assert here.take("goodera_clock", 30.0) == 0.0
    assert 29 < ahead.take("goodera_clock", 30.0) <= 30  # a host an hour ahead sees the same 30 s to wait
    assert 29 < behind.take("goodera_clock", 30.0) <= 30


# -- two processes, one quota ---------------------------------------------------------------------------------------
def test_two_processes_together_stay_within_the_limit(engine, sandbox, tmp_path) -> None:
    limit, window_s, per_company = 20, 5.0, 15
    goodera = sandbox.providers["goodera"]
    goodera.configure({"rate_limit": {"limit": limit, "window_s": window_s}})
    for company in ("acme", "globex"):
        add_integration(engine, company, "goodera")
        add_events(engine, events(company, per_company))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOODERA_", "BENEVITY_", "WORKDAY_"))}
    env.update(sandbox.env())
    env.update(
        IMPACTIN_WAREHOUSE_URL=engine.url.render_as_string(hide_password=False),
        IMPACTIN_STATE_DIR=str(tmp_path / "shared-state"),  # the SQLite bucket lives here for the embedded default
        IMPACTIN_ENCRYPTION_KEY=generate_key(),
        GOODERA_RATE_LIMIT=f"{limit}/{window_s:g}s",
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, company], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for company in ("acme", "globex")
    ]
    for child in children:
        _out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-3000:]
    assert statuses(engine, "goodera") == {"success": 2 * per_company}
    snapshot = goodera.snapshot()
    admitted = snapshot["admitted_at"]
    assert len(admitted) == 2 * per_company
    assert snapshot["rate_limited"] == 0  # not one 429
    assert max_in_window(admitted, window_s) <= limit  # measured on the provider's side
    # and the two runs really overlapped: both companies among the first window's requests
    api = sorted((r for r in snapshot["requests"] if r["path"] == "/v2/events/impact"), key=lambda r: r["at"])
    first_window = {r["event_id"].split("_")[1] for r in api if r["at"] < api[0]["at"] + window_s}
    assert first_window == {"acme", "globex"}


def test_max_in_window_counts_a_sliding_window() -> None:
    assert max_in_window([], 5) == 0
    assert max_in_window([0, 1, 2, 4.9, 5.0, 9.9], 5) == 4  # (0, 5] holds 1, 2, 4.9, 5.0
    assert max_in_window([0, 0, 0], 1) == 3


def test_threads_opening_limiters_at_once_get_one_per_credential(engine) -> None:
    """Opening a limiter creates its bucket: threads open different credentials side by side, and a credential
    opened by several threads at once is opened once, so they all share its one bucket."""
    rate = RateLimit(1, 30.0, 0.15)
    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(lambda _: shared_limiter(engine, "goodera", "1" * 64, rate), range(8)))
        different = list(pool.map(lambda i: shared_limiter(engine, "goodera", f"{i}" * 64, rate), range(2, 10)))
    assert len({id(limiter) for limiter in same}) == 1
    assert len({limiter.key for limiter in different}) == 8
    same[0].acquire(max_wait_s=1)
    with pytest.raises(RateLimitWait):  # the slot the first took is gone for every thread's view of it
        same[-1].acquire(max_wait_s=0.1)
    for limiter in different:
        limiter.acquire(max_wait_s=1)
