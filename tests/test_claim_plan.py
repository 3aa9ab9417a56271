"""Claiming, recording and finding work stay cheap with a large backlog: the queries the code actually sends are
explained on PostgreSQL (with statistics of a 50k-row outbox) and on SQLite, and must read an index in claim order
instead of scanning the outbox or sorting all of a company's rows."""

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import STATISTICS_CHECK_ROWS, extract
from impactin_pipelines.store.engine import make_engine
from impactin_pipelines.store.outbox import STALE_ROWS, ClaimBatch, Outbox
from impactin_pipelines.store.schema import company_integrations, impact_deliveries, impact_events
from impactin_pipelines.store.source import work_by_provider

ROWS = 60_000
BIG = "big"  # holds most of the backlog, as one busy company does
SMALL = [f"co{i:03d}" for i in range(50)]
SETTLED = 40_000  # delivered rows stay in the table, in front of the backlog
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _seed(engine: Engine) -> None:
    """ROWS outbox rows (most of them BIG's) and their events; the oldest SETTLED are delivered, the rest pending."""
    companies = [BIG if i % 5 else SMALL[i % len(SMALL)] for i in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(
            company_integrations.insert(),
            [{"company_id": c, "provider": "benevity", "enabled": True} for c in [BIG, *SMALL]],
        )
        conn.execute(
            impact_events.insert(),
            [{"event_id": f"e{i}", "company_id": c} for i, c in enumerate(companies)],
        )
        conn.execute(
            impact_deliveries.insert(),
            [
                _outbox_row(c, f"e{i}", "success" if i < SETTLED else "pending", T0 + timedelta(milliseconds=i))
                for i, c in enumerate(companies)
            ],
        )
    if engine.dialect.name == "postgresql":
        _analyze(engine)


def _outbox_row(company_id: str, event_id: str, status: str, created_at: datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "company_id": company_id,
        "provider": "benevity",
        "event_id": event_id,
        "delivery_id": str(uuid.uuid4()),
        "payload": "{}",
        "status": status,
        "created_at": created_at,
        "updated_at": T0,
    }


def _analyze(engine: Engine, table: str = "") -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(f"ANALYZE {table}")


@contextmanager
def _captured(engine: Engine, prefix: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements starting with `prefix` (and their parameters) as the driver received them."""
    seen: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(prefix):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


def _pg_plans(engine: Engine, prefix: str, run: Callable[[], object]) -> list[dict[str, Any]]:
    with _captured(engine, prefix) as seen:
        run()
    assert seen, f"no statement starting with {prefix} was sent"
    plans = []
    with engine.connect() as conn:
        for statement, parameters in seen:
            raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
            plans.append((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    return plans


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _assert_indexed(plan: dict[str, Any], *, index: str | None = None) -> None:
    nodes = list(_nodes(plan))
    shown = json.dumps(plan, indent=1)
    scans = [n for n in nodes if n.get("Relation Name") == "impact_deliveries"]
    assert scans, shown
    assert all(n["Node Type"] != "Seq Scan" for n in scans), shown
    # The backlog is read in index order and stops after the batch: no sort may sit on top of a scan of it with no
    # limit in between. Sorting the few candidates both branches of a claim returned (each stopped by its limit),
    # or the held rows found through the lease index, is bounded by the batch and the rows in flight.
    assert not list(_sorted_backlog(plan)), shown
    if index is not None:
        assert index in {n.get("Index Name") for n in scans}, shown


def _sorted_backlog(node: dict[str, Any], under_sort: bool = False) -> Iterator[dict[str, Any]]:
    """Scans of the outbox below a sort that no limit bounds (other than the held rows' lease index)."""
    if node["Node Type"] == "Limit":
        under_sort = False
    elif node["Node Type"] == "Sort":
        under_sort = True
    bounded = node.get("Index Name") == "ix_impact_deliveries_lease"
    if under_sort and node.get("Relation Name") == "impact_deliveries" and not bounded:
        yield node
    for child in node.get("Plans", []):
        yield from _sorted_backlog(child, under_sort)


def _claim(engine: Engine, company_ids: list[str] | None) -> Callable[[], ClaimBatch]:
    return lambda: Outbox(engine).claim(
        claimant="planner", provider="benevity", company_ids=company_ids, limit=200, lease_s=60
    )


def test_claims_read_the_claim_indexes_in_order_on_postgres(pg_engine) -> None:
    _seed(pg_engine)
    (busy_company,) = _pg_plans(pg_engine, "UPDATE", _claim(pg_engine, [BIG]))
    _assert_indexed(busy_company)
    (small_company,) = _pg_plans(pg_engine, "UPDATE", _claim(pg_engine, [SMALL[0]]))
    _assert_indexed(small_company, index="ix_impact_deliveries_claim_company")
    (every_company,) = _pg_plans(pg_engine, "UPDATE", _claim(pg_engine, None))
    _assert_indexed(every_company, index="ix_impact_deliveries_claim_order")
    (a_range,) = _pg_plans(pg_engine, "UPDATE", _claim(pg_engine, [BIG, *SMALL]))
    _assert_indexed(a_range)


def test_a_claim_of_many_companies_is_one_statement_planned_for_its_values_on_postgres(pg_engine) -> None:
    """A run's claims name its companies in one array parameter: the statement's text is the same for 2 companies or
    51 (the driver parses it once, not once per claim), and it is never prepared on the server, where a plan made
    for any array guesses its size, then reads and sorts every row of the run's companies."""
    _seed(pg_engine)
    with _captured(pg_engine, "UPDATE") as seen:
        for companies in (SMALL[:2], SMALL, [BIG, *SMALL]):
            assert _claim(pg_engine, companies)()
    assert len({statement for statement, _ in seen}) == 1, seen
    one = make_engine(pg_engine.url.render_as_string(hide_password=False), pool_size=1)  # every claim, one connection
    try:
        claimed = [len(_claim(one, [BIG, *SMALL])()) for _ in range(8)]  # psycopg prepares what it ran 5 times
        with one.connect() as conn:
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    finally:
        one.dispose()
    assert claimed == [200] * 8
    assert not [s for s in prepared if "impact_deliveries" in s], prepared


def test_claims_work_on_a_warehouse_url_naming_psycopg2(pg_engine) -> None:
    """psycopg2, which a URL may name, never prepares on the server and takes no `prepare` argument: a claim of one
    company, of many, and after a position, runs there as on psycopg 3."""
    _seed(pg_engine)
    url = pg_engine.url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    other = make_engine(url)
    try:
        assert other.dialect.driver == "psycopg2"
        first = _claim(other, [BIG, *SMALL])()
        after = Outbox(other).claim(
            claimant="planner", provider="benevity", company_ids=[BIG, *SMALL], limit=200, lease_s=60, after=first.end
        )
        alone = _claim(other, [SMALL[0]])()
    finally:
        other.dispose()
    assert len(first) == len(after) == 200 and not {r.id for r in first} & {r.id for r in after}
    assert alone and {r.company_id for r in alone} == {SMALL[0]}


def test_a_claim_after_a_position_seeks_to_it_in_the_claim_index_on_postgres(pg_engine) -> None:
    _seed(pg_engine)
    cases = [
        ([BIG], None),
        ([SMALL[0]], "ix_impact_deliveries_claim_company"),
        (None, "ix_impact_deliveries_claim_order"),
    ]
    for company_ids, index in cases:
        claim = partial(
            Outbox(pg_engine).claim,
            claimant="planner",
            provider="benevity",
            company_ids=company_ids,
            limit=20,
            lease_s=60,
        )
        first = claim()
        assert first.end is not None
        (plan,) = _pg_plans(pg_engine, "UPDATE", partial(claim, after=first.end))
        _assert_indexed(plan, index=index)
        # the rest of the position's priority is an index range that starts at the position, not a filter on a
        # scan from the top (which would read past every row claimed before it)
        seeks = [n for n in _nodes(plan) if "ROW(created_at, id) >" in n.get("Index Cond", "")]
        assert seeks, json.dumps(plan, indent=1)


def test_work_by_provider_probes_indexes_on_postgres(pg_engine) -> None:
    _seed(pg_engine)
    new_events, due_rows = _pg_plans(pg_engine, "SELECT", lambda: work_by_provider(pg_engine, datetime.now(UTC)))
    # Due rows: one index probe per integration, stopping at its first due row.
    _assert_indexed(due_rows)
    # New events: one anti-join pass, never a sort or de-duplication of every (event, integration) pair.
    nodes = list(_nodes(new_events))
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Unique", "Aggregate")], json.dumps(new_events)
    assert any(n.get("Join Type") in ("Anti", "Semi", "Right Anti") for n in nodes), json.dumps(new_events)


def test_claims_use_the_claim_index_on_sqlite(sqlite_engine) -> None:
    _seed(sqlite_engine)
    with _captured(sqlite_engine, "UPDATE") as seen:
        claimed = _claim(sqlite_engine, [BIG])()
    assert len(claimed) == 200
    statement, parameters = seen[0]
    with sqlite_engine.connect() as conn:
        plan = " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    assert "ix_impact_deliveries_claim_company" in plan, plan
    # No sort of the company's rows: the branch that reads them does so in index order (the lease branch and the
    # few candidates of both branches may be sorted).
    [backlog] = [part for part in plan.split("CO-ROUTINE") if "ix_impact_deliveries_claim_company" in part]
    assert "TEMP B-TREE" not in backlog, plan
    with sqlite_engine.connect() as conn:
        due = conn.execute(sa.text("SELECT count(*) FROM impact_deliveries WHERE claimed_by = 'planner'")).scalar()
    assert due == 200


def test_extraction_keeps_probing_the_outbox_per_event_while_it_grows_from_empty(pg_engine) -> None:
    """Extraction fills the outbox while it reads it. Planned as a join, or from the statistics of the empty table
    it started with, each page would read every row the company already has, and staging would grow with the square
    of its size. Every page after the first must reach the outbox only through one index look-up per event, as
    planned when it was read."""
    events = [f"e{i:06d}" for i in range(3 * STATISTICS_CHECK_ROWS)]
    with pg_engine.begin() as conn:
        conn.execute(company_integrations.insert().values(company_id=BIG, provider="benevity", enabled=True))
        conn.execute(impact_events.insert(), [{"event_id": ev, "company_id": BIG} for ev in events])
    _analyze(pg_engine)  # the statistics of an empty outbox, as on a deployment's first night
    plans: list[dict[str, Any]] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if "FROM impact_events" in statement:
            with conn.connection.dbapi_connection.cursor() as own:
                own.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
                raw = own.fetchone()[0]
            plans.append((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])

    event.listen(pg_engine, "before_cursor_execute", explain)
    try:
        report = extract(pg_engine, BIG, Provider.BENEVITY, batch_size=1000, workers=1)
    finally:
        event.remove(pg_engine, "before_cursor_execute", explain)
    assert report.new_rows == len(events), report
    assert len(plans) == len(events) // 1000 + 1, len(plans)  # the last read finds nothing left
    for plan in plans[1:]:
        shown = json.dumps(plan, indent=1)
        nodes = list(_nodes(plan))
        assert not [n for n in nodes if "Join" in n["Node Type"] or n["Node Type"] in ("Sort", "Hash")], shown
        outbox = [n for n in nodes if n.get("Relation Name") == "impact_deliveries"]
        assert outbox, shown
        for scan in outbox:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), shown
            assert "event_id = impact_events.event_id" in scan["Index Cond"], shown


def _known_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'impact_deliveries'::regclass"
        ).scalar_one()


def test_the_outbox_is_analyzed_once_it_holds_more_rows_than_its_statistics_know_of(pg_engine) -> None:
    _analyze(pg_engine, "impact_deliveries")
    outbox = Outbox(pg_engine)
    assert not outbox.refresh_statistics(changed=STALE_ROWS - 1)  # a few rows more than it knows of: close enough
    rows = 3 * STALE_ROWS
    with pg_engine.begin() as conn:
        conn.execute(impact_deliveries.insert(), [_outbox_row(BIG, f"e{i}", "pending", T0) for i in range(rows)])
    assert outbox.refresh_statistics(changed=rows)
    assert _known_rows(pg_engine) == rows
    assert not outbox.refresh_statistics(changed=rows)  # the same rows again: now known


def test_refreshing_statistics_is_a_no_op_on_sqlite(sqlite_engine) -> None:
    assert not Outbox(sqlite_engine).refresh_statistics(changed=10 * STALE_ROWS)


def test_a_batch_of_attempts_finds_its_rows_by_delivery_id_on_postgres(pg_engine) -> None:
    """The settlement writer's statement, in the generic plan psycopg's prepared statement ends up with, reaches its
    rows through the delivery id index. The planner guesses 100 rows for the JSON batch: joined to them alone, a
    small outbox (here 8,000 rows) was scanned whole for every batch."""
    from impactin_pipelines.domain.statuses import DeliveryStatus
    from impactin_pipelines.store.outbox import Recording, Settlement, utcnow

    with pg_engine.begin() as conn:
        conn.execute(
            impact_deliveries.insert(),
            [_outbox_row(BIG, f"e{i}", "pending", T0 + timedelta(milliseconds=i)) for i in range(8_000)],
        )
    _analyze(pg_engine)
    claimed = _claim(pg_engine, [BIG])()[:5]
    recordings = [
        Recording(
            "planner", row.claim_version, row.delivery_id, None, None, Settlement(DeliveryStatus.PENDING), utcnow()
        )
        for row in claimed
    ]
    with _captured(pg_engine, "WITH BATCH") as seen:
        Outbox(pg_engine).record_many(recordings)
    ((statement, parameters),) = seen
    with pg_engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    shown = json.dumps(plan, indent=1)
    nodes = list(_nodes(plan))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "impact_deliveries"], (
        shown
    )
    assert "uq_impact_deliveries_delivery_id" in {n.get("Index Name") for n in nodes}, shown
