"""The ledger of a fault scenario: what the warehouse says happened, checked against what the provider (the sandbox)
saw. Shared by every scenario of the fault-injection suite so each one asserts the same guarantees:

- every eligible (event, provider) has exactly one outbox row, and `eligible = success + failed + retrying`
  (nothing pending, nothing lost);
- the provider stored each delivered event exactly once, and nothing it was never meant to get;
- every request for a row carried the row's `delivery_id` as idempotency key;
- duplicate sends (repeats the provider recognised and absorbed) happen only where an earlier request's answer was
  lost (a fault after the provider acted) or the request was in flight at a crash;
- every request that went out is an attempt row, unless it was in flight at a crash;
- no row is still claimed once the runs are over.
"""

import copy
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.goodera.connector import GooderaConnector
from impactin_pipelines.providers.workday.rest import WorkdayRestConnector
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import company_integrations as ci
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a
from impactin_pipelines.store.schema import impact_events as e
from tests.support import add_events, add_integration, events, fast_settings

COMPANY = "acme"
# Roomy enough that the quota never shapes a scenario (tests/test_rate_limit.py is about the quota), dense enough
# that the client's even spacing costs milliseconds.
GOODERA_QUOTA = {"limit": 12_000, "window_s": 60}
LOST_ANSWER = " after accept"  # the sandbox's log mark for a request it stored whose answer then went wrong


@dataclass(frozen=True)
class Case:
    """One way of delivering: a provider, and for Workday a protocol."""

    name: str
    provider: str
    api_path: str  # regex of the provider's API path inside the sandbox (token requests are not sends)
    oauth: bool
    env: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name

    def is_send(self, path: str) -> bool:
        return re.match(self.api_path, path) is not None

    def provider_env(self, sandbox: Any) -> ProviderEnv:
        return ProviderEnv.from_env({**sandbox.env(), **self.env})


CASES = [
    Case("benevity", "benevity", r"^/api/v1/impact-events$", oauth=False),
    Case("goodera", "goodera", r"^/v2/events/impact$", oauth=True),
    Case("workday_soap", "workday", r"^/ccx/service/[^/]+/CSR_Impact_Report$", False, {"WORKDAY_PROTOCOL": "soap"}),
    Case("workday_rest", "workday", r"^/api/v1/[^/]+/csr-impact-reports$", True, {"WORKDAY_PROTOCOL": "rest"}),
]
BY_NAME = {c.name: c for c in CASES}


# -- setting a scenario up ---------------------------------------------------------------------------------------
def seed(engine: Engine, case: Case, n: int, *, sandbox: Any = None, extract_now: bool = True) -> None:
    """n valid events of one company with the case's integration enabled, extracted into the outbox."""
    add_integration(engine, COMPANY, case.provider)
    add_events(engine, events(COMPANY, n))
    if extract_now:
        env = case.provider_env(sandbox) if sandbox is not None else ProviderEnv.from_env(dict(case.env))
        report = extract(engine, COMPANY, Provider(case.provider), env=env)
        assert report.new_rows == n and report.error is None, report


def make_factory(engine: Engine, sandbox: Any, case: Case, *, warm: bool = True, **settings: Any) -> ConnectorFactory:
    """The connectors of one run. `warm`: fetch the OAuth token first, so faults scripted afterwards hit sends
    (the sandbox's fault queue is shared by a provider's API and its token endpoint)."""
    factory = ConnectorFactory(engine, env=case.provider_env(sandbox), settings=fast_settings(**settings))
    if warm and case.oauth:
        connector = factory.connector(COMPANY, Provider(case.provider))
        assert isinstance(connector, GooderaConnector | WorkdayRestConnector), connector
        connector.oauth.bearer()
    return factory


def make_due(engine: Engine) -> int:
    """Advance the clock for `retrying` rows: their `next_attempt_at` is now (instead of sleeping minutes)."""
    stmt = (
        sa.update(d)
        .where(d.c.status == "retrying")
        .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        .execution_options(preserve_rowcount=True)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount


def unsettled(engine: Engine) -> int:
    """Rows a later run still has to do something about."""
    stmt = sa.select(sa.func.count()).where(
        sa.or_(d.c.status.in_(["pending", "retrying"]), d.c.claimed_by.is_not(None))
    )
    with read_connection(engine) as conn:
        return int(conn.execute(stmt).scalar_one())


def settle(engine: Engine, run_once: Callable[[int], object], *, max_runs: int = 5) -> int:
    """Plain re-runs until every row is settled (retrying rows made due in between), at most `max_runs`.
    Returns the number of runs; the ledger check reports what is left if the bound was hit."""
    for n in range(1, max_runs + 1):
        run_once(n)
        if not unsettled(engine):
            return n
        make_due(engine)
    return max_runs


def held_rows(engine: Engine) -> dict[str, str]:
    """delivery_id -> claimant of every row still claimed and not delivered."""
    stmt = sa.select(d.c.delivery_id, d.c.claimed_by).where(d.c.claimed_by.is_not(None), d.c.status != "success")
    with read_connection(engine) as conn:
        return dict(conn.execute(stmt).all())


class Sleeps:
    """The delivery loop's sleep: really sleeps, and remembers what it was asked (Retry-After honoured?)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.asked.append(seconds)
        time.sleep(seconds)


@contextmanager
def when(
    predicate: Callable[[], bool], action: Callable[[], object], *, timeout_s: float = 30.0, poll_s: float = 0.005
) -> Iterator[list[bool]]:
    """Run `action` once, in the background, as soon as `predicate` holds (bounded). Yields [fired]."""
    fired: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            if predicate():
                action()
                fired.append(True)
                return
            stop.wait(poll_s)

    thread = threading.Thread(target=watch, name="fault-trigger", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join(timeout=timeout_s)


def accepted_count(sandbox: Any, case: Case) -> int:
    return len(sandbox.providers[case.provider].snapshot()["accepted"])


# -- reading and checking the ledger -----------------------------------------------------------------------------
@dataclass(repr=False)
class Ledger:
    scenario: str
    eligible: set[str]  # event ids that must be delivered
    rows: list[dict[str, Any]]
    attempts: Counter[str]  # delivery_id -> attempt rows
    sends: list[dict[str, Any]]  # the sandbox's log of API requests (token requests left out)
    stored: list[dict[str, Any]]  # what the provider stored, one record per accepted request
    runs: int

    @property
    def status(self) -> Counter[str]:
        return Counter(r["status"] for r in self.rows)

    @property
    def duplicates(self) -> Counter[str]:
        """Requests the provider recognised as repeats of one it had already stored, by idempotency key."""
        return Counter(s["idempotency_key"] for s in self.sends if s["duplicate"])

    @property
    def lost_answers(self) -> Counter[str]:
        """Requests the provider stored whose answer never reached us intact, by idempotency key."""
        return Counter(s["idempotency_key"] for s in self.sends if (s["fault"] or "").endswith(LOST_ANSWER))

    def __repr__(self) -> str:
        return self.summary()

    def identity(self) -> str:
        s = self.status
        return (
            f"eligible={len(self.eligible)} = success {s['success']} + failed {s['failed']} + retrying {s['retrying']}"
        )

    def summary(self) -> str:
        s = self.status
        stored = Counter(r["event_id"] for r in self.stored)
        return (
            f"[{self.scenario}] {self.identity()}"
            + (f" (pending {s['pending']})" if s["pending"] else "")
            + f"; runs={self.runs}; sends={len(self.sends)}, stored once={sum(1 for n in stored.values() if n == 1)}"
            f", duplicate sends={sum(self.duplicates.values())} {sorted(self.duplicates)}"
            f", lost answers={sum(self.lost_answers.values())}"
            f", still claimed={sum(1 for r in self.rows if r['claimed_by'])}"
        )

    def problems(
        self, *, failed: Collection[str] = (), may_repeat: Collection[str] = (), unrecorded: Collection[str] = ()
    ) -> list[str]:
        """What breaks the guarantees. `failed`: event ids expected to end failed (a permanent refusal);
        `may_repeat`: delivery ids in flight at a crash (their request may go out once more);
        `unrecorded`: delivery ids whose attempts may be missing (in flight when the run died)."""
        found: list[str] = []
        by_event = Counter(r["event_id"] for r in self.rows)
        missing = sorted(self.eligible - set(by_event))
        extra = sorted(set(by_event) - self.eligible)
        doubled = sorted(ev for ev, n in by_event.items() if n > 1)
        if missing or extra or doubled:
            found.append(f"rows: missing {missing}, not eligible {extra}, more than one {doubled}")
        s = self.status
        if s["success"] + s["failed"] + s["retrying"] != len(self.eligible) or s["pending"]:
            found.append(f"identity broken: {self.identity()}, pending {s['pending']}")
        wrong = sorted(
            r["event_id"]
            for r in self.rows
            if (r["status"] != "failed" if r["event_id"] in failed else r["status"] != "success")
        )
        if wrong:
            found.append(f"not in the expected end state: {wrong}")
        stored = Counter(r["event_id"] for r in self.stored)
        successful = {r["event_id"] for r in self.rows if r["status"] == "success"}
        not_once = sorted(ev for ev in successful if stored[ev] != 1)
        if not_once:
            found.append(f"delivered but stored {[stored[ev] for ev in not_once]} times: {not_once}")
        unexpected = sorted(ev for ev in stored if ev not in successful)
        if unexpected:
            found.append(f"stored by the provider but not success in the ledger: {unexpected}")
        key_of = {r["event_id"]: r["delivery_id"] for r in self.rows}
        known_keys = set(key_of.values())
        wrong_keys = sorted(
            {
                str(s["idempotency_key"])
                for s in self.sends
                if s["idempotency_key"] not in known_keys
                or (s["event_id"] in key_of and s["idempotency_key"] != key_of[s["event_id"]])
            }
            | {str(r["idempotency_key"]) for r in self.stored if r["idempotency_key"] != key_of.get(r["event_id"])}
        )
        if wrong_keys:
            found.append(f"requests whose idempotency key is not their row's delivery_id: {wrong_keys}")
        lost, crash = self.lost_answers, set(may_repeat)
        unexplained = {key: n for key, n in self.duplicates.items() if n > lost[key] + (1 if key in crash else 0)}
        if unexplained:
            found.append(f"duplicate sends not explained by a lost answer or a crash: {unexplained}")
        sent = Counter(s["idempotency_key"] for s in self.sends)
        unrecorded_keys = set(unrecorded) | crash
        short = sorted(k for k, n in sent.items() if k not in unrecorded_keys and self.attempts[k] < n)
        if short:
            found.append(f"requests that went out without an attempt row: {short}")
        claimed = sorted(r["event_id"] for r in self.rows if r["claimed_by"])
        if claimed:
            found.append(f"still claimed after the runs: {claimed}")
        return found

    def check(self, **expected: Any) -> "Ledger":
        """Print the ledger (pytest -s shows it) and assert it balances; the message carries the ledger too."""
        print(f"\n{self.summary()}")
        found = self.problems(**expected)
        assert not found, self.summary() + "\n  - " + "\n  - ".join(found)
        return self


def read(engine: Engine, sandbox: Any, case: Case, scenario: str, *, runs: int) -> Ledger:
    eligible_stmt = (
        sa.select(e.c.event_id)
        .join(ci, ci.c.company_id == e.c.company_id)
        .where(ci.c.provider == case.provider, ci.c.enabled.is_(True))
    )
    with read_connection(engine) as conn:
        eligible = set(conn.execute(eligible_stmt).scalars())
        rows = [dict(r._mapping) for r in conn.execute(sa.select(d).where(d.c.provider == case.provider)).all()]
        attempts: Counter[str] = Counter(
            dict(conn.execute(sa.select(a.c.delivery_id, sa.func.count()).group_by(a.c.delivery_id)).all())
        )
    snap = sandbox.providers[case.provider].snapshot()
    sends = [s for s in snap["requests"] if case.is_send(s["path"])]
    return Ledger(f"{scenario} / {case.name}", eligible, rows, attempts, sends, snap["accepted"], runs)


# -- the common scenario ---------------------------------------------------------------------------------------
@dataclass(repr=False)
class Outcome:
    ledger: Ledger
    sleeps: Sleeps
    factory: ConnectorFactory


def deliver_with_fault(
    engine: Engine,
    sandbox: Any,
    case: Case,
    scenario: str,
    faults: Mapping[str, Any],
    *,
    n: int = 12,
    max_runs: int = 5,
    warm: bool = True,
    **settings: Any,
) -> Outcome:
    """Seed n events, script `faults` on the provider's sandbox, deliver in-process with plain re-runs until settled
    (bounded), and read the ledger. The caller checks it (with what it expects) and asserts the fault bit."""
    from tests.support import deliver

    seed(engine, case, n, sandbox=sandbox)
    factory = make_factory(engine, sandbox, case, warm=warm, **settings)
    sandbox.providers[case.provider].configure(copy.deepcopy(faults))  # the sandbox counts entries down in place
    sleeps = Sleeps()
    try:
        runs = settle(engine, lambda _: deliver(engine, factory, case.provider, sleep=sleeps), max_runs=max_runs)
    finally:
        factory.close()
    return Outcome(read(engine, sandbox, case, scenario, runs=runs), sleeps, factory)
