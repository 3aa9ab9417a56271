"""The send path's own values: typed per-company counts, one outcome per row, the attempt as the connector
reported it, and the retry decision's tally used by the delivery loop. On both backends."""

from collections import Counter
from datetime import timedelta

from impactin_pipelines.connectors.base import AttemptResult, OutboundDelivery
from impactin_pipelines.defs.assets.delivery import _partition_metadata
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome, DeliveryStatus, ErrorKind, RowOutcome
from impactin_pipelines.services.deliver import DeliveryCounts
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.outbox import RESPONSE_EXCERPT_CHARS, NewDelivery, Outbox, Settlement, utcnow
from tests.support import add_events, add_integration, attempts, deliver, events, factory_for, rows


def _setup(engine, company: str, n: int) -> None:
    add_integration(engine, company, "benevity")
    add_events(engine, events(company, n, prefix=f"evt-{company}"))
    extract(engine, company, Provider.BENEVITY)


def test_a_pass_counts_outcomes_and_error_kinds_per_company_as_enums(engine, sandbox) -> None:
    _setup(engine, "acme", 2)
    _setup(engine, "globex", 2)
    # one row is rejected, another answered 503 once and then accepted (which rows depends on the claim order)
    sandbox.providers["benevity"].configure({"fail_next": [{"status": 422, "count": 1}, {"status": 503, "count": 1}]})
    report = deliver(engine, factory_for(engine, sandbox, concurrency=1), "benevity")

    assert set(report.by_company) == {"acme", "globex"}
    for company, counts in report.by_company.items():
        stored = rows(engine, company_id=company)
        assert counts.outcomes == Counter(RowOutcome(r["status"]) for r in stored)
        assert counts.error_kinds == Counter(ErrorKind(r["error_kind"]) for r in stored if r["error_kind"])
        assert counts.attempts == sum(r["attempt_count"] for r in stored)
    totals = report.totals
    assert totals.outcomes == {RowOutcome.SUCCESS: 3, RowOutcome.FAILED: 1} and totals.rows == 4
    # memory stays flat: a run keeps counts for every row, a result only for the row that did not succeed
    [kept] = report.rows.values()
    assert kept.status is RowOutcome.FAILED and kept.row.payload == ""
    assert totals.error_kinds == {ErrorKind.REJECTED: 1} and totals.attempts == 5
    assert all(isinstance(k, RowOutcome) for k in totals.outcomes)

    rejected = next(r["company_id"] for r in rows(engine) if r["status"] == "failed")
    counts = report.by_company[rejected]
    assert _partition_metadata(counts) == {
        "delivered": 1,
        "retrying": 0,
        "failed": 1,
        "rejected": 1,
        "config_errors": 0,
        "exhausted": 0,
        "held": 0,
        "attempts": counts.attempts,
        "internal_errors": 0,
    }


def test_partition_metadata_reads_typed_counts_and_counts_unrecorded_rows_as_internal_errors() -> None:
    counts = DeliveryCounts()
    counts.outcomes.update({RowOutcome.SUCCESS: 3, RowOutcome.NOT_SENT: 2, RowOutcome.UNRECORDED: 1})
    counts.outcomes[RowOutcome.CLAIM_LOST] += 4
    counts.outcomes[RowOutcome.HELD] += 2  # held by an open circuit: neither an error nor an attempt
    counts.error_kinds[ErrorKind.EXHAUSTED] += 1
    counts.error_kinds[ErrorKind.CONFIG] += 2
    counts.attempts = 9
    metadata = _partition_metadata(counts)
    assert metadata["delivered"] == 3 and metadata["internal_errors"] == 3
    assert (metadata["exhausted"], metadata["config_errors"], metadata["rejected"]) == (1, 2, 0)
    assert metadata["attempts"] == 9 and metadata["held"] == 2 and counts.rows == 12


def test_a_transient_failure_burns_one_attempt_and_a_retry_sends_the_row_again(engine, sandbox) -> None:
    """Two 503s with max_attempts 3: the loop follows the decision's tally, so the third request succeeds."""
    _setup(engine, "acme", 1)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 2}})
    report = deliver(engine, factory_for(engine, sandbox), "benevity", keep_rows=True)
    [result] = report.rows.values()
    assert (result.status, result.error_kind, result.attempts) == (RowOutcome.SUCCESS, None, 3)


def test_a_reply_holding_a_nul_character_is_recorded_and_the_run_goes_on(engine, sandbox) -> None:
    """PostgreSQL's text cannot hold NUL: a provider reply with one is stored with U+FFFD in its place, so the
    attempt is recorded, the row settles, and the run delivers the rest instead of halting on a failed write."""
    _setup(engine, "acme", 3)
    sandbox.providers["benevity"].configure(
        {"fail_next": {"status": 422, "count": 1, "body": "bad\x00input", "content_type": "text/plain"}}
    )
    report = deliver(engine, factory_for(engine, sandbox, concurrency=1), "benevity")
    assert report.totals.outcomes == Counter({RowOutcome.SUCCESS: 2, RowOutcome.FAILED: 1}), report.errors
    [failed] = [r for r in rows(engine) if r["status"] == "failed"]
    assert "bad\ufffdinput" in failed["last_error"]
    [attempt] = attempts(engine, failed["delivery_id"])
    assert attempt["response_excerpt"] == "bad\ufffdinput" and "\x00" not in attempt["error"]


def test_record_stores_the_connectors_attempt_with_an_excerpt_and_its_duration(engine) -> None:
    _setup(engine, "acme", 1)
    outbox = Outbox(engine)
    (mine,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    started = utcnow()
    answer = "x" * (RESPONSE_EXCERPT_CHARS + 500)
    result = AttemptResult(
        AttemptOutcome.PERMANENT,
        started,
        started + timedelta(milliseconds=250),
        http_status=422,
        error="HTTP 422: no",
        response_body=answer,
    )
    count, settled = outbox.record(
        claimant="a",
        claim_version=mine.claim_version,
        delivery_id=mine.delivery_id,
        run_id="run-1",
        attempt=result,
        settlement=Settlement(DeliveryStatus.FAILED, ErrorKind.REJECTED, "HTTP 422: no"),
    )
    assert (count, settled) == (1, True)
    [attempt] = attempts(engine, mine.delivery_id)
    assert (attempt["outcome"], attempt["http_status"], attempt["duration_ms"]) == ("permanent", 422, 250)
    assert attempt["response_excerpt"] == answer[:RESPONSE_EXCERPT_CHARS] and attempt["run_id"] == "run-1"


def test_a_claimed_row_without_a_payload_is_settled_invalid_and_never_sent(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    Outbox(engine).add([NewDelivery("acme", "benevity", "evt-empty", "d-empty", payload=None, payload_hash=None)])
    report = deliver(engine, factory_for(engine, sandbox), "benevity")
    [result] = report.rows.values()
    assert (result.status, result.error_kind, result.attempts) == (RowOutcome.FAILED, ErrorKind.INVALID_EVENT, 0)
    assert result.row.payload == "" and result.row.delivery_id == "d-empty"
    [row] = rows(engine)
    assert (row["status"], row["error_kind"], row["claimed_by"]) == ("failed", "invalid_event", None)
    assert row["last_error"] == "no payload was built for this event"
    assert sandbox.providers["benevity"].snapshot()["requests"] == [] and attempts(engine) == []


def test_a_claim_hands_out_the_row_as_the_connector_takes_it(engine) -> None:
    """One type from the claim to the connector: the claimed row is the OutboundDelivery that is sent."""
    _setup(engine, "acme", 1)
    (mine,) = Outbox(engine).claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    [stored] = rows(engine)
    assert isinstance(mine, OutboundDelivery) and mine.status is DeliveryStatus.PENDING
    assert (mine.id, mine.delivery_id, mine.payload) == (stored["id"], stored["delivery_id"], stored["payload"])
    assert (mine.run_count, mine.claim_version, mine.attempt_count) == (1, stored["claim_version"], 0)


def test_only_settled_outcomes_name_a_delivery_status() -> None:
    """A replay reports the row's status; a row this run did not settle keeps the one stored."""
    assert {o: o.delivery_status for o in RowOutcome} == {
        RowOutcome.SUCCESS: DeliveryStatus.SUCCESS,
        RowOutcome.RETRYING: DeliveryStatus.RETRYING,
        RowOutcome.FAILED: DeliveryStatus.FAILED,
        RowOutcome.CLAIM_LOST: None,
        RowOutcome.NOT_SENT: None,
        RowOutcome.UNRECORDED: None,
        RowOutcome.HELD: None,
    }
    assert all(RowOutcome.settled(s).delivery_status is s for s in DeliveryStatus if s is not DeliveryStatus.PENDING)
