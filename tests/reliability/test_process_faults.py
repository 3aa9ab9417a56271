"""Process-level faults, for every provider on both backends, with real processes: `impactin run` killed with
SIGKILL mid-run and finished by a plain `impactin run`; two `impactin run` of the same partition at once (also with
one of them in a PID namespace of its own, as in a container); a replay racing a run. (The first two moved here from
tests/test_crash_and_concurrency.py, which proved them for Benevity.)"""

import json
import signal
import threading
import time
from collections import Counter
from typing import Any

from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.services.replay import BUSY, replay_many
from impactin_pipelines.store.claimants import Claimant
from tests.cli_support import cli_env, run_cli, start_cli
from tests.reliability.ledger import (
    BY_NAME,
    COMPANY,
    accepted_count,
    held_rows,
    make_due,
    make_factory,
    read,
    seed,
    when,
)
from tests.support import attempts, deliver, own_pid_namespace, rows

CONCURRENCY = 4


def _wait_for(predicate, timeout: float = 60.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(step)


def _run_args(case) -> list[str]:
    return ["run", "--company", COMPANY, "--provider", case.provider]


def test_sigkill_mid_run(engine, warehouse_url, sandbox, case, tmp_path) -> None:
    """The run is killed while requests are in flight. A plain `impactin run` finds the dead claimant (the lease is
    10 minutes: recovery must not wait it out), takes its rows back and delivers them in the same invocation; only
    the requests in flight or not yet written at the kill go out again, with their own idempotency key, absorbed by
    the provider."""
    n = 30
    seed(engine, case, n, extract_now=False)  # the run extracts, as the nightly run does
    sandbox.providers[case.provider].configure({"latency_ms": 150})
    env = cli_env(
        tmp_path, warehouse_url, sandbox, IMPACTIN_DELIVERY_CONCURRENCY=str(CONCURRENCY), IMPACTIN_LEASE_S="600"
    )
    env.update(case.env)

    victim = start_cli(_run_args(case), env)
    _wait_for(lambda: accepted_count(sandbox, case) >= 8)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    sandbox.providers[case.provider].configure({"latency_ms": 20})
    held = held_rows(engine)
    sent_before = len(read(engine, sandbox, case, "sigkill", runs=1).sends)
    print(f"\nkilled after {sent_before} sends; {len(held)} rows held by the dead run")
    assert 8 <= sent_before < n and held, "the kill must land mid-run, with rows claimed"

    rerun = run_cli([*_run_args(case), "--log-level", "WARNING", "--json"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "dead claimant" in rerun.stderr
    assert json.loads(rerun.stdout)["ok"] is True
    ledger = read(engine, sandbox, case, "SIGKILL mid-run", runs=2).check(may_repeat=held, unrecorded=held)
    repeats = ledger.duplicates
    # in flight at the kill, or sent and not yet written: at most twice the concurrency (docs/guarantees.md)
    assert sum(repeats.values()) <= 2 * CONCURRENCY and set(repeats.values()) <= {1}, f"more than unwritten: {ledger}"


def test_two_runs_of_the_same_partition_at_once(engine, warehouse_url, sandbox, case, tmp_path) -> None:
    """Two `impactin run` processes on the same partition at once: the claims share the rows out between them,
    nothing is sent twice, and every request is an attempt row."""
    n = 40
    seed(engine, case, n, extract_now=False)
    fake = sandbox.providers[case.provider]
    fake.configure({"latency_ms": 400})  # slow until both processes hold rows, however staggered their start
    env = cli_env(
        tmp_path,
        warehouse_url,
        sandbox,
        IMPACTIN_DELIVERY_CONCURRENCY=str(CONCURRENCY),
        IMPACTIN_LEASE_S="3",
        IMPACTIN_CLAIM_BATCH="4",  # small claims, so both runs get rows (one claim would otherwise take them all)
    )
    env.update(case.env)
    both_claim = lambda: len(set(held_rows(engine).values())) >= 2  # noqa: E731
    with when(both_claim, lambda: fake.configure({"latency_ms": 30}), timeout_s=60, poll_s=0.05) as overlapped:
        first, second = start_cli(_run_args(case), env), start_cli(_run_args(case), env)
        outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert overlapped, "the two runs never held rows at the same time"
    assert first.returncode == 0 and second.returncode == 0, "\n---\n".join(o[1][-4000:] for o in outputs)
    ledger = read(engine, sandbox, case, "two runs at once", runs=2).check()
    assert len(ledger.sends) == n and not ledger.duplicates
    by_run = Counter(a["run_id"] for a in attempts(engine))
    print(f"attempts per run: {sorted(by_run.values())}")
    assert sum(by_run.values()) == n and len(by_run) == 2, "both runs must have delivered part of the rows"


def test_two_runs_in_different_pid_namespaces(engine, warehouse_url, sandbox, tmp_path) -> None:
    """Two `impactin run` of one partition on one host, one of them in a PID namespace of its own with the same
    hostname (Docker with host networking, a Kubernetes pod with hostNetwork). Each sees the other's pid as one that
    does not exist or belongs to another process; neither may take the other's live claims for a dead run's. Every
    event is sent exactly once. Claims do not depend on the provider: Benevity stands for all of them."""
    case = BY_NAME["benevity"]
    n = 120
    seed(engine, case, n, extract_now=False)
    sandbox.providers[case.provider].configure({"latency_ms": 2000})
    env = cli_env(
        tmp_path,
        warehouse_url,
        sandbox,
        IMPACTIN_DELIVERY_CONCURRENCY="8",
        IMPACTIN_LEASE_S="10",
        IMPACTIN_CLAIM_BATCH="8",  # both runs hold rows at once, for most of the run
    )
    wrapper = own_pid_namespace()
    claimants: set[str] = set()

    def both_claim() -> bool:
        holders = set(held_rows(engine).values())
        claimants.update(holders)
        return len(holders) >= 2

    with when(both_claim, lambda: None, timeout_s=120, poll_s=0.05) as overlapped:
        plain = start_cli(_run_args(case), env)
        contained = start_cli(_run_args(case), env, wrapper=wrapper)
        outputs = [p.communicate(timeout=300) for p in (plain, contained)]
    assert plain.returncode == 0 and contained.returncode == 0, "\n---\n".join(o[1][-4000:] for o in outputs)
    ledger = read(engine, sandbox, case, "two runs, two PID namespaces", runs=2).check()
    assert len(ledger.sends) == n and not ledger.duplicates
    assert overlapped, "the two runs never held rows at the same time"
    assert not any("dead claimant" in err for _, err in outputs), "a live run was taken for a dead one"
    identities = [identity for identity in map(Claimant.parse, claimants) if identity is not None]
    assert len(identities) == len(claimants), claimants
    assert len({c.pid_ns for c in identities}) == 2, f"the runs did not run in two PID namespaces: {claimants}"
    assert len({c.host for c in identities}) == 1 and len({c.boot for c in identities}) == 1


def test_replay_racing_a_run(engine, sandbox, case, monkeypatch) -> None:
    """An operator replays every row (`impactin replay ID...`) while a run delivers the same rows: each row is sent
    by exactly one of them; the other is told it is busy or already delivered. Claims are taken two rows at a time
    so the two really interleave. The outage that parks the rows first would open the circuit breaker and hold them
    as pending instead (tests/reliability/test_circuit_breaker.py): it is off here."""
    monkeypatch.setenv("IMPACTIN_CIRCUIT_FAILURES", "0")
    n = 16
    seed(engine, case, n, sandbox=sandbox)
    factory = make_factory(engine, sandbox, case, claim_batch=2, concurrency=CONCURRENCY)
    fake = sandbox.providers[case.provider]
    try:
        fake.configure({"fail_next": {"status": 503, "count": 3 * n}})  # provider down: every row parked
        deliver(engine, factory, case.provider)
        assert {r["status"] for r in rows(engine)} == {"retrying"}
        assert fake.faults.fail_next == []  # the provider is back
        fake.configure({"latency_ms": 30})
        make_due(engine)
        ids = [r["id"] for r in rows(engine)]
        barrier = threading.Barrier(2)
        outcome: dict[str, Any] = {}  # the run totals and the replay results

        def run() -> None:
            barrier.wait(timeout=10)
            outcome["run"] = deliver(engine, factory, case.provider)

        def replay() -> None:
            barrier.wait(timeout=10)
            outcome["replay"] = replay_many(engine, factory, ids)

        threads = [threading.Thread(target=run), threading.Thread(target=replay)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads) and set(outcome) == {"run", "replay"}
    finally:
        factory.close()
    replayed = outcome["replay"]
    by_replay = sum(1 for r in replayed if r.success)
    by_run = outcome["run"].totals.outcomes[RowOutcome.SUCCESS]
    refusals = {r.error for r in replayed if not r.success}
    print(f"\ndelivered by the run: {by_run}, by the replay: {by_replay}; replay refusals: {refusals}")
    assert by_run + by_replay == n
    assert refusals <= {BUSY, "Cannot replay delivery with status: success"}
    ledger = read(engine, sandbox, case, "replay racing a run", runs=2).check()
    assert sum(1 for s in ledger.sends if s["status"] != 503) == n and not ledger.duplicates
