"""The operators' filters on GET /deliveries and `impactin deliveries list` (errorKind, eventId, userId, search in
last_error, metadata.KEY=VALUE) and keyset pagination with a cursor, on SQLite and PostgreSQL."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.identity import scoped_event_id
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import outbox_row
from impactin_pipelines.store.delivery_log import DeliveryFilter, list_deliveries
from impactin_pipelines.store.outbox import Outbox
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_events
from tests.api.conftest import BASE, T0
from tests.support import event
from tests.test_claim_plan import _nodes, _pg_plans

# event id -> (company, user, metadata as stored: JSON text, or malformed text)
EVENTS: dict[str, tuple[str, str, Any]] = {
    "e1": ("acme", "u1", {"program": "buddy_mentoring", "cohort": 2025}),
    "e2": ("acme", "u1", {"program": "language_cafe"}),
    "e3": ("acme", "u2", {"program": "buddy_mentoring", "remote": True}),
    "e4": ("globex", "u3", {"program": "buddy_mentoring", "cohort": "2025"}),
    "e5": ("globex", "u2", "{not json"),
    "e6": ("globex", "u4", None),
}
# event id -> (status, error_kind, last_error)
OUTCOMES = {
    "e1": ("failed", "rejected", "HTTP 422: field 'hours' must be positive"),
    "e2": ("retrying", "transient", "HTTP 503 Service Unavailable"),
    "e3": ("failed", "config", "Missing BENEVITY_API_KEY for company acme"),
    "e4": ("failed", "rejected", "HTTP 400: value 100%_done is invalid"),
    "e5": ("success", None, None),
    "e6": ("failed", "exhausted", "timeout after 30 s (HTTP 503 earlier)"),
}


def seed_filters(engine: Engine) -> None:
    """The six events above, one benevity delivery each, an hour apart (e1 oldest)."""
    with engine.begin() as conn:
        for event_id, (company, user, metadata) in EVENTS.items():
            stored = metadata if metadata is None or isinstance(metadata, str) else json.dumps(metadata)
            raw = event(event_id, company, user_id=user)
            conn.execute(impact_events.insert().values({**raw, "metadata": stored}))
    for n, (event_id, (company, _, _)) in enumerate(EVENTS.items()):
        Outbox(engine).add([outbox_row(event(event_id, company), Provider.BENEVITY)], now=T0 + timedelta(hours=n))
    with engine.begin() as conn:
        for event_id, (status, kind, error) in OUTCOMES.items():
            conn.execute(
                sa.update(d).where(d.c.event_id == event_id).values(status=status, error_kind=kind, last_error=error)
            )


def event_ids(api, key: str = "admin", **params: Any) -> list[str]:
    response = api.get(f"{BASE}/deliveries", key=key, **params)
    assert response.status_code == 200, response.text
    ids = [item["id"] for item in response.json()["data"]]
    with api.engine.connect() as conn:
        by_id = dict(conn.execute(sa.select(d.c.id, d.c.event_id)).all())
    return [by_id[i] for i in ids]


def test_each_filter(api):
    seed_filters(api.engine)
    assert event_ids(api) == ["e6", "e5", "e4", "e3", "e2", "e1"]  # newest first
    assert event_ids(api, errorKind="rejected") == ["e4", "e1"]
    assert event_ids(api, errorKind="transient") == ["e2"]
    assert event_ids(api, errorKind="invalid_event") == []
    assert event_ids(api, eventId="e3") == ["e3"]
    assert event_ids(api, eventId="nope") == []
    assert event_ids(api, userId="u1") == ["e2", "e1"]
    assert event_ids(api, userId="u2") == ["e5", "e3"]
    # search: case-insensitive, inside the text; % and _ are plain characters, not wildcards
    assert event_ids(api, search="http 503") == ["e6", "e2"]
    assert event_ids(api, search="benevity_api") == ["e3"]
    assert event_ids(api, search="100%_d") == ["e4"]
    assert event_ids(api, search="0%_") == ["e4"]
    assert event_ids(api, search="H_TP") == []
    # metadata: text values, and numbers and booleans as they are spelled; malformed metadata matches nothing
    assert event_ids(api, **{"metadata.program": "buddy_mentoring"}) == ["e4", "e3", "e1"]
    assert event_ids(api, **{"metadata.cohort": "2025"}) == ["e4", "e1"]  # the number 2025 and the text "2025"
    assert event_ids(api, **{"metadata.remote": "true"}) == ["e3"]
    assert event_ids(api, **{"metadata.program": "buddy_mentoring", "metadata.cohort": "2025"}) == ["e4", "e1"]
    assert event_ids(api, **{"metadata.program": "nothing"}) == []
    assert event_ids(api, **{"metadata.not": "json"}) == []
    assert event_ids(api, **{"metadata.cohort": "NaN"}) == [] and event_ids(api, **{"metadata.cohort": "1e999"}) == []
    # together, and with the guide's filters
    assert event_ids(api, errorKind="rejected", companyId="acme") == ["e1"]
    assert event_ids(api, userId="u2", status="success") == ["e5"]
    assert event_ids(api, search="http", **{"metadata.program": "buddy_mentoring"}, status="failed") == ["e4", "e1"]
    assert event_ids(api, userId="u1", startDate="2025-11-01T12:30:00Z") == ["e2"]


def test_filters_stay_inside_a_company_keys_scope(api):
    seed_filters(api.engine)
    assert event_ids(api, key="acme", errorKind="rejected") == ["e1"]
    assert event_ids(api, key="acme", eventId="e4") == []  # globex's event
    assert event_ids(api, key="globex", userId="u2") == ["e5"]
    assert event_ids(api, key="acme", **{"metadata.program": "buddy_mentoring"}) == ["e3", "e1"]
    # a company key's own submissions are stored under a scoped id; it finds them by the id it sent
    scoped = scoped_event_id("acme", "mine")
    Outbox(api.engine).add([outbox_row(event(scoped, "acme"), Provider.BENEVITY)], now=T0)
    assert event_ids(api, key="acme", eventId="mine") == [scoped]
    assert event_ids(api, key="globex", eventId="mine") == []


def test_cursor_pages_walk_everything_once_even_with_equal_timestamps(api):
    seed_filters(api.engine)
    for n in range(7):  # seven more rows created at the very same instant: only the id orders them
        Outbox(api.engine).add([outbox_row(event(f"same{n}", "acme"), Provider.GOODERA)], now=T0 + timedelta(hours=9))
    by_page = []
    for page in (1, 2, 3, 4, 5):
        body = api.get(f"{BASE}/deliveries", limit=3, page=page).json()
        by_page += [item["id"] for item in body["data"]]
    assert len(by_page) == 13

    first = api.get(f"{BASE}/deliveries", limit=3, cursor="")
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body["pagination"]) == {"limit", "hasNext", "hasPrev", "nextCursor"}
    assert body["pagination"]["hasPrev"] is False and body["pagination"]["hasNext"] is True
    by_cursor = [item["id"] for item in body["data"]]
    pages = 1
    while body["pagination"]["nextCursor"]:
        body = api.get(f"{BASE}/deliveries", limit=3, cursor=body["pagination"]["nextCursor"]).json()
        assert body["pagination"]["hasPrev"] is True
        by_cursor += [item["id"] for item in body["data"]]
        pages += 1
    assert by_cursor == by_page  # the same order, nothing skipped, nothing twice
    assert pages == 5 and body["pagination"]["hasNext"] is False and len(body["data"]) == 1


def test_cursor_with_filters_and_rows_added_meanwhile(api):
    seed_filters(api.engine)
    body = api.get(f"{BASE}/deliveries", limit=1, cursor="", errorKind="rejected").json()
    assert [item["id"] for item in body["data"]] == [_id(api.engine, "e4")]
    # a newer rejected row arrives: the next page still continues after e4 (no row repeated, none skipped)
    Outbox(api.engine).add([outbox_row(event("late", "acme"), Provider.BENEVITY)], now=T0 + timedelta(days=2))
    with api.engine.begin() as conn:
        conn.execute(sa.update(d).where(d.c.event_id == "late").values(status="failed", error_kind="rejected"))
    cursor = body["pagination"]["nextCursor"]
    following = api.get(f"{BASE}/deliveries", limit=1, cursor=cursor, errorKind="rejected").json()
    assert [item["id"] for item in following["data"]] == [_id(api.engine, "e1")]
    assert following["pagination"] == {"limit": 1, "hasNext": False, "hasPrev": True, "nextCursor": None}


def _id(engine: Engine, event_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(d.c.id).where(d.c.event_id == event_id)).scalar_one()


def test_the_guides_pagination_is_unchanged(api):
    seed_filters(api.engine)
    body = api.get(f"{BASE}/deliveries", limit=4, errorKind="rejected").json()
    assert body["pagination"] == {
        "page": 1,
        "limit": 4,
        "total": 2,
        "totalPages": 1,
        "hasNext": False,
        "hasPrev": False,
    }


def test_bad_filter_values_are_400_naming_parameter_and_value(api):
    seed_filters(api.engine)

    def problem(**params: Any) -> dict[str, Any]:
        response = api.get(f"{BASE}/deliveries", **params)
        assert response.status_code == 400, response.text
        [detail] = response.json()["details"]
        return detail

    assert problem(errorKind="boom")["field"] == "errorKind"
    assert problem(errorKind="boom")["value"] == "boom"
    assert problem(search="ab") == {"field": "search", "message": problem(search="ab")["message"], "value": "ab"}
    assert problem(search="x" * 201)["field"] == "search"
    bad_key = problem(**{"metadata.bad key": "v"})
    assert bad_key["field"] == "metadata.bad key" and bad_key["value"] == "bad key"
    empty = problem(**{"metadata.program": ""})
    assert empty["field"] == "metadata.program"
    assert problem(metadata="program=x")["field"] == "metadata"
    garbage = problem(cursor="not-a-cursor")
    assert garbage["field"] == "cursor" and garbage["value"] == "not-a-cursor"
    assert "cursor" in garbage["message"]
    both = problem(cursor="", page=2)
    assert both["field"] == "cursor" and "page" in both["message"]
    assert problem(userId="u" * 257)["field"] == "userId"
    assert problem(sort="created_at")["field"] == "sort"  # an unknown parameter is not ignored


def test_openapi_documents_the_filters_and_the_cursor(api):
    spec = api.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"][f"{BASE}/deliveries"]["get"]["parameters"]}
    assert {"errorKind", "eventId", "userId", "search", "metadata", "page", "cursor", "limit"} <= set(params)
    assert params["errorKind"]["schema"]["enum"] == ["invalid_event", "rejected", "exhausted", "config", "transient"]
    assert params["metadata"]["style"] == "deepObject"
    pagination = spec["components"]["schemas"]["DeliveryList"]["properties"]["pagination"]["oneOf"]
    assert {"$ref": "#/components/schemas/CursorPagination"} in pagination


def test_store_filter_rejects_what_the_api_would(engine):
    for bad in ({"search": "ab"}, {"metadata": {"a.b": "x"}}, {"metadata": {"k": ""}}):
        try:
            DeliveryFilter(**bad)
        except ValueError as exc:
            assert repr(next(iter(bad.values()))).strip("{}").split(":")[0] in str(exc) or "metadata" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
    assert list_deliveries(engine, DeliveryFilter(search="none"), cursor="").rows == []


def test_postgres_has_the_filter_indexes(pg_engine):
    with pg_engine.connect() as conn:
        names = set(
            conn.execute(sa.text("select indexname from pg_indexes where schemaname = current_schema()")).scalars()
        )
    assert {
        "ix_impact_deliveries_created_id",
        "ix_impact_deliveries_company_created",
        "ix_impact_deliveries_status_created",
        "ix_impact_deliveries_error_kind",
        "ix_impact_deliveries_event",
        "ix_impact_events_user",
        "ix_impact_events_metadata_doc",
        "ix_impact_deliveries_last_error_trgm",  # this server has pg_trgm
    } <= names


def _cli(args: list[str], url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMPACTIN_WAREHOUSE_URL": url}
    impactin = str(Path(sys.executable).parent / "impactin")
    return subprocess.run([impactin, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_filters_and_cursor(engine):
    seed_filters(engine)
    url = engine.url.render_as_string(hide_password=False)

    def listed(*args: str) -> dict[str, Any]:
        result = _cli(["deliveries", "list", "--json", *args], url)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def events_of(body: dict[str, Any]) -> list[str]:
        return [r["event_id"] for r in body["data"]]

    assert events_of(listed("--error-kind", "rejected", "--error-kind", "config")) == ["e4", "e3", "e1"]
    assert events_of(listed("--event", "e2")) == ["e2"]
    assert events_of(listed("--user", "u1")) == ["e2", "e1"]
    assert events_of(listed("--search", "HTTP 503")) == ["e6", "e2"]
    assert events_of(listed("--metadata", "program=buddy_mentoring", "--metadata", "cohort=2025")) == ["e4", "e1"]
    first = listed("--limit", "4", "--cursor", "")
    assert events_of(first) == ["e6", "e5", "e4", "e3"] and "total" not in first["pagination"]
    rest = listed("--limit", "4", "--cursor", first["pagination"]["nextCursor"])
    assert events_of(rest) == ["e2", "e1"] and rest["pagination"]["nextCursor"] is None
    text = _cli(["deliveries", "list", "--limit", "2"], url)
    assert "page 1 of 3 (6 deliveries)" in text.stdout and "next page: --cursor " in text.stdout

    for args, hint in (
        (["--metadata", "program"], "--metadata"),
        (["--search", "ab"], "ab"),
        (["--cursor", "zzz"], "--cursor"),
        (["--cursor", "", "--page", "2"], "--cursor"),
        (["--error-kind", "boom"], "boom"),
    ):
        bad = _cli(["deliveries", "list", *args], url)
        assert bad.returncode == 2 and hint in bad.stderr, (args, bad.stderr)


def test_metadata_filter_runs_in_a_parallel_plan(pg_engine):
    """Over a million events PostgreSQL plans the metadata match in parallel: the jsonb function must allow it."""
    seed_filters(pg_engine)
    where = DeliveryFilter(metadata={"program": "buddy_mentoring"}).where("postgresql")
    with pg_engine.connect() as conn:
        for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0"):
            conn.exec_driver_sql(f"SET {setting}")
        version = conn.exec_driver_sql("SHOW server_version_num").scalar_one()
        conn.exec_driver_sql(f"SET {'debug_parallel_query' if int(version) >= 160000 else 'force_parallel_mode'} = on")
        count = conn.execute(sa.select(sa.func.count()).select_from(d).where(*where)).scalar_one()
    assert count == 3


def test_metadata_filter_reads_the_stored_jsonb_through_its_gin_index(pg_engine):
    """The metadata match is containment on the stored `metadata_doc` (sql/0012), found through its GIN index and
    rechecked against the stored value: the plan never calls the plpgsql safe cast per row. Filled on insert and on
    update of `metadata` by every writer (a generated column), NULL for malformed text."""
    seed_filters(pg_engine)
    rare = [{"event_id": f"x{i}", "company_id": "acme", "metadata": json.dumps({"n": i})} for i in range(20_000)]
    with pg_engine.begin() as conn:
        conn.execute(impact_events.insert(), rare)
        conn.execute(sa.update(impact_events).where(impact_events.c.event_id == "x7").values(metadata='{"n": "seven"}'))
    with pg_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE impact_events")
        docs = dict(
            conn.execute(
                sa.select(impact_events.c.event_id, impact_events.c.metadata_doc).where(
                    impact_events.c.event_id.in_(["e1", "e5", "e6", "x7"])
                )
            ).all()
        )
    parsed = {k: json.loads(v) if v is not None else None for k, v in docs.items()}  # selected as text
    assert parsed == {
        "e1": {"program": "buddy_mentoring", "cohort": 2025},
        "e5": None,
        "e6": None,
        "x7": {"n": "seven"},
    }

    flt = DeliveryFilter(metadata={"program": "buddy_mentoring"})
    for kwargs in ({"cursor": ""}, {"page": 1}):  # a cursor page; a numbered page with its total
        plans = _pg_plans(pg_engine, "SELECT", lambda kw=kwargs: list_deliveries(pg_engine, flt, limit=20, **kw))
        shown = json.dumps(plans)
        nodes = [n for p in plans for n in _nodes(p)]
        events = [n for n in nodes if n.get("Relation Name") == "impact_events"]
        assert events and not [n for n in events if n["Node Type"] == "Seq Scan"], shown
        assert any(n.get("Index Name") == "ix_impact_events_metadata_doc" for n in nodes), shown
        assert "impactin_jsonb_or_null" not in shown, shown
    assert [r["event_id"] for r in list_deliveries(pg_engine, flt, cursor="").rows] == ["e4", "e3", "e1"]
