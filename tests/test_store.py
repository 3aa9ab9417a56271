"""Migrations and the outbox on both backends: uniqueness, claims, leases, dead claimants."""

import subprocess
import sys
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa

from impactin_pipelines.domain.identity import delivery_id_for
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store import migrations
from impactin_pipelines.store.outbox import Outbox, utcnow
from impactin_pipelines.store.schema import metadata
from tests.support import add_events, add_integration, events, rows


def test_upgrade_is_idempotent_and_records_the_version(engine) -> None:
    latest = max(m.version for m in migrations.available())
    assert migrations.current_version(engine) == latest
    assert migrations.upgrade(engine) == []
    with engine.connect() as conn:
        versions = conn.execute(sa.text("select version from impactin_schema_migrations order by version")).scalars()
        assert list(versions) == [m.version for m in migrations.available()]


def test_a_gap_in_the_applied_migrations_reads_as_the_version_before_it(engine) -> None:
    """A branch's later migration applied without its sibling's earlier one must not pass the schema check."""
    versions = [m.version for m in migrations.available()]
    gap = versions[-2]
    with engine.begin() as conn:
        conn.execute(sa.text("delete from impactin_schema_migrations where version = :v"), {"v": gap})
    assert migrations.current_version(engine) == versions[-3]
    assert migrations.current_version(engine) < migrations.latest_version()
    with engine.begin() as conn:
        conn.execute(
            sa.text("insert into impactin_schema_migrations (version, name, applied_at) values (99999, 'x', :t)"),
            {"t": "2026-01-01 00:00:00"},
        )
    assert migrations.current_version(engine) == versions[-3]  # newer ones do not paper over the gap


def test_core_tables_match_the_migrated_schema(engine) -> None:
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        in_db = {c["name"] for c in inspector.get_columns(table.name)}
        assert {c.name for c in table.columns} <= in_db, table.name


def test_extract_creates_one_row_per_event_and_enabled_provider(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "goodera", enabled=False)
    add_events(engine, events("acme", 5) + events("other", 2))
    first = extract(engine, "acme", Provider.BENEVITY)
    again = extract(engine, "acme", Provider.BENEVITY)
    disabled = extract(engine, "acme", Provider.GOODERA)
    assert (first.new_rows, again.new_rows) == (5, 0)
    assert not disabled.enabled and disabled.new_rows == 0
    created = rows(engine)
    assert {r["provider"] for r in created} == {"benevity"}
    assert all(r["status"] == "pending" and r["payload_hash"] for r in created)
    assert {r["delivery_id"] for r in created} == {delivery_id_for("acme", "benevity", r["event_id"]) for r in created}


def test_delivery_ids_are_stable_uuid5() -> None:
    a = delivery_id_for("acme", "benevity", "evt_1")
    assert a == delivery_id_for("acme", "benevity", "evt_1")
    assert a != delivery_id_for("acme", "goodera", "evt_1") != delivery_id_for("acme2", "benevity", "evt_1")
    assert a[14] == "5"  # version nibble


def _seed_pending(engine, n: int) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", n))
    extract(engine, "acme", Provider.BENEVITY)


def test_concurrent_claims_never_hand_a_row_to_two_claimants(engine) -> None:
    _seed_pending(engine, 300)
    outbox = Outbox(engine)
    taken: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        mine: list[str] = []
        try:
            while batch := outbox.claim(claimant=name, provider="benevity", company_ids=["acme"], limit=7, lease_s=60):
                mine.extend(r.id for r in batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        taken[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    claimed = [i for ids in taken.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == 300
    assert sum(1 for ids in taken.values() if ids) > 1  # they really competed


def test_expired_lease_comes_back_and_live_lease_does_not(engine) -> None:
    _seed_pending(engine, 4)
    outbox = Outbox(engine)
    now = utcnow()
    held = outbox.claim(claimant="a", provider="benevity", company_ids=["acme"], limit=2, lease_s=30, now=now)
    assert len(held) == 2
    others = outbox.claim(claimant="b", provider="benevity", company_ids=["acme"], limit=10, lease_s=30, now=now)
    assert {r.id for r in others}.isdisjoint({r.id for r in held}) and len(others) == 2
    later = now + timedelta(seconds=31)
    reclaimed = outbox.claim(claimant="c", provider="benevity", company_ids=["acme"], limit=10, lease_s=30, now=later)
    assert len(reclaimed) == 4
    assert all(r.run_count == 2 for r in reclaimed)


def test_renewed_lease_is_not_reclaimed(engine) -> None:
    _seed_pending(engine, 1)
    outbox = Outbox(engine)
    outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=1)
    assert outbox.renew("a", 300) == 1
    later = utcnow() + timedelta(seconds=5)
    assert outbox.claim(claimant="b", provider="benevity", company_ids=None, limit=1, lease_s=1, now=later) == []
    assert outbox.release_all("a") == 1
    assert len(outbox.claim(claimant="b", provider="benevity", company_ids=None, limit=1, lease_s=1)) == 1


def test_rows_of_a_dead_process_are_reclaimed_at_once(engine) -> None:
    _seed_pending(engine, 3)
    outbox = Outbox(engine)
    child = subprocess.run(
        [sys.executable, "-c", "from impactin_pipelines.store.claimants import Claimant; print(Claimant.new())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = child.stdout.strip()
    outbox.claim(claimant=dead, provider="benevity", company_ids=["acme"], limit=3, lease_s=3600)
    assert outbox.claim(claimant="me", provider="benevity", company_ids=["acme"], limit=3, lease_s=60) == []
    assert outbox.dead_claimants("benevity", ["acme"]) == [dead]
    back = outbox.claim(claimant="me", provider="benevity", company_ids=["acme"], limit=3, lease_s=60, dead=[dead])
    assert len(back) == 3


def test_a_live_claimant_is_not_dead() -> None:
    from impactin_pipelines.store.claimants import Claimant, is_provably_dead

    assert not is_provably_dead(str(Claimant.new()))
    assert not is_provably_dead("otherhost/1/123/abc")  # cannot tell for another host: the lease decides
    assert not is_provably_dead("garbage")


def test_0014_keeps_the_token_that_expires_last_of_each_credentials(warehouse_url: str, tmp_path) -> None:
    """Tokens move from one row per (company, provider) to one per (provider, credentials): of the companies that
    shared credentials, the token that lives longest is kept; other credentials keep theirs."""
    from impactin_pipelines.store.engine import make_engine

    before = tmp_path / "sql"
    before.mkdir()
    for migration in migrations.available():
        if migration.version < 14:
            (before / migration.path.name).write_text(migration.path.read_text())
    engine = make_engine(warehouse_url)
    migrations.upgrade(engine, before)
    columns = "company_id, provider, credential_key, access_token_encrypted, expires_at, created_at, updated_at"
    with engine.begin() as conn:
        for company, cred, token, expires in [
            ("acme", "shared", "enc-acme", "2026-12-01 10:00:00+00:00"),
            ("globex", "shared", "enc-globex", "2026-12-01 11:00:00+00:00"),
            ("initech", "shared", "enc-initech", "2026-12-01 09:00:00+00:00"),
            ("umbrella", "own", "enc-umbrella", "2026-12-01 08:00:00+00:00"),
            ("umbrella-wd", "shared", "enc-workday", "2026-12-01 07:00:00+00:00"),
        ]:
            provider = "workday" if company == "umbrella-wd" else "goodera"
            conn.execute(
                sa.text(f"INSERT INTO impact_provider_tokens ({columns}) VALUES (:c, :p, :k, :t, :e, :e, :e)"),
                {"c": company, "p": provider, "k": cred, "t": token, "e": datetime.fromisoformat(expires)},
            )
    assert [m.version for m in migrations.upgrade(engine)] == [14]
    with engine.connect() as conn:
        kept = conn.execute(
            sa.text("SELECT provider, credential_key, access_token_encrypted FROM impact_provider_tokens")
        ).all()
    engine.dispose()
    assert sorted(kept) == [
        ("goodera", "own", "enc-umbrella"),
        ("goodera", "shared", "enc-globex"),
        ("workday", "shared", "enc-workday"),
    ]
