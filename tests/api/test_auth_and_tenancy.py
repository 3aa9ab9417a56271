"""Authentication on every route but the health probes; a company key sees and acts only on its company."""

import sqlalchemy as sa

from impactin_pipelines.store.api_keys import ApiKeyStore, impact_api_keys
from tests.api.conftest import BASE, seed
from tests.support import add_events, add_integration, deliver, event, rows

ANY_UUID = "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10"
PROTECTED = [
    ("GET", f"{BASE}/deliveries"),
    ("GET", f"{BASE}/deliveries/{ANY_UUID}"),
    ("GET", f"{BASE}/stats"),
    ("POST", f"{BASE}/deliveries/{ANY_UUID}/replay"),
    ("POST", f"{BASE}/deliveries/bulk-replay"),
    ("POST", f"{BASE}/deliveries/retry-all-failed"),
    ("POST", f"{BASE}/deliver"),
    ("GET", "/openapi.json"),
]


def test_every_route_but_health_needs_a_valid_key(api):
    revoked = ApiKeyStore(api.engine).create(company_id="acme")
    assert ApiKeyStore(api.engine).revoke(revoked.key.key_id)
    valid_shape_wrong_secret = api.keys["acme"][:-4] + "AAAA"
    bad_headers = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Basic {api.keys['admin']}"},
        {"Authorization": f"Bearer {valid_shape_wrong_secret}"},
        {"Authorization": f"Bearer {revoked.token}"},
        {"Authorization": "Bearer " + "x" * 10_000},
        {"Authorization": "Bearer ' OR '1'='1"},
    ]
    for method, path in PROTECTED:
        for headers in bad_headers:
            response = api.call(method, path, key=None, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"] == "Unauthorized"
            assert api.keys["admin"] not in response.text
    for path in ("/health", "/health/liveness", "/health/readiness"):
        assert api.get(path, key=None).status_code == 200
    assert api.sent() == []  # nothing reached a provider


def test_keys_are_stored_hashed_and_last_use_is_recorded(api):
    assert api.get(f"{BASE}/deliveries", key="acme").status_code == 200
    with api.engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.select(impact_api_keys))]
    dump = repr(stored)
    for token in api.keys.values():
        assert token not in dump
        assert token.split("_", 2)[2] not in dump  # nor the secret part alone
    acme_id = api.keys["acme"].split("_")[1]
    by_id = {r["key_id"]: r for r in stored}
    assert by_id[acme_id]["company_id"] == "acme" and not by_id[acme_id]["is_admin"]
    assert by_id[acme_id]["last_used_at"] is not None
    assert len(by_id[acme_id]["key_hash"]) == 64


def test_a_revoked_key_stops_working_at_once(api):
    assert api.get(f"{BASE}/deliveries", key="globex").status_code == 200
    assert ApiKeyStore(api.engine).revoke(api.keys["globex"].split("_")[1])
    assert api.get(f"{BASE}/deliveries", key="globex").status_code == 401


def test_company_key_lists_and_counts_only_its_company(api):
    seed(api.engine, "acme", 3)
    seed(api.engine, "globex", 5)
    acme = api.get(f"{BASE}/deliveries", key="acme").json()
    assert acme["pagination"]["total"] == 3 and {d["companyId"] for d in acme["data"]} == {"acme"}
    assert api.get(f"{BASE}/deliveries", key="acme", companyId="acme").json()["pagination"]["total"] == 3
    assert api.get(f"{BASE}/deliveries", key="admin").json()["pagination"]["total"] == 8

    stats = api.get(f"{BASE}/stats", key="globex").json()["data"]
    assert stats["overall"]["total"] == 5
    assert api.get(f"{BASE}/stats", key="admin").json()["data"]["overall"]["total"] == 8
    assert api.get(f"{BASE}/stats", key="admin", companyId="acme").json()["data"]["overall"]["total"] == 3


def test_naming_another_company_is_403_and_reveals_nothing(api):
    seed(api.engine, "globex", 2)
    for path in (f"{BASE}/deliveries", f"{BASE}/stats"):
        for company in ("globex", "no-such-company"):  # same answer whether the company exists or not
            response = api.get(path, key="acme", companyId=company)
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "Forbidden"
            assert "globex" not in response.text.replace(f"'{company}'", "")


def test_another_companys_row_is_404_like_a_missing_one(api):
    add_integration(api.engine, "globex", "benevity")
    seed(api.engine, "globex", 1)
    deliver(api.engine, api.factory, "benevity", ["globex"])
    with api.engine.begin() as conn:  # make it replayable, to prove a refusal is not just "already delivered"
        conn.execute(sa.text("update impact_deliveries set status = 'failed', error_kind = 'rejected'"))
    row = rows(api.engine)[0]
    sent_before = len(api.sent())

    for ident in (row["id"], row["delivery_id"]):
        foreign = api.get(f"{BASE}/deliveries/{ident}", key="acme")
        missing = api.get(f"{BASE}/deliveries/{ANY_UUID}", key="acme")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error"] == missing.json()["error"] == "Delivery not found"
        assert "globex" not in foreign.text
        replay = api.post(f"{BASE}/deliveries/{ident}/replay", key="acme")
        assert replay.status_code == 404 and "globex" not in replay.text

    bulk = api.post(f"{BASE}/deliveries/bulk-replay", {"ids": [row["id"]]}, key="acme")
    assert bulk.status_code == 200
    assert bulk.json()["summary"] == {"total": 1, "successful": 0, "failed": 1}
    assert "not found" in bulk.json()["results"][0]["error"]

    retry_all = api.post(f"{BASE}/deliveries/retry-all-failed", {"companyId": "globex"}, key="acme")
    assert retry_all.status_code == 403

    assert len(api.sent()) == sent_before  # nothing was sent for acme's attempts
    assert rows(api.engine)[0]["status"] == "failed"
    assert api.get(f"{BASE}/deliveries/{row['id']}", key="globex").status_code == 200
    assert api.get(f"{BASE}/deliveries/{row['id']}", key="admin").status_code == 200


def test_company_key_cannot_deliver_for_another_company(api):
    add_integration(api.engine, "globex", "benevity")
    body = {
        "companyId": "globex",
        "provider": "benevity",
        "event": {
            "eventId": "evt_x",
            "userId": "u1",
            "eventType": "volunteer_hours",
            "timestamp": "2025-11-14T10:00:00Z",
            "value": 1,
            "unit": "hours",
        },
    }
    response = api.post(f"{BASE}/deliver", body, key="acme")
    assert response.status_code == 403
    with api.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from impact_events")).scalar_one() == 0
    assert rows(api.engine) == [] and api.sent() == []
    assert api.post(f"{BASE}/deliver", body, key="globex").status_code == 201


# -- POST /deliver: event ids of a company key live in that company's own namespace ------------------------------
def _sent_ids(api) -> list[str]:
    return [r["event_id"] for r in api.sent()]


def _event_row(engine, event_id: str) -> dict | None:
    from impactin_pipelines.store.schema import impact_events

    with engine.connect() as conn:
        found = conn.execute(sa.select(impact_events).where(impact_events.c.event_id == event_id)).first()
    return dict(found._mapping) if found else None


def test_a_company_key_learns_nothing_about_another_companys_event_ids(api):
    """globex's platform wrote evt_globex_1: acme naming that id gets the same answer as for an id that exists
    nowhere (201, delivered under its own namespace), never a 409 that would tell it the id is taken."""
    from tests.api.test_deliver_api import body

    add_integration(api.engine, "acme", "benevity")
    add_integration(api.engine, "globex", "benevity")
    add_events(api.engine, [event("evt_globex_1", "globex", value="9", user_id="globex_user")])
    taken = api.post(f"{BASE}/deliver", body("evt_globex_1"), key="acme")
    unused = api.post(f"{BASE}/deliver", body("evt_nowhere"), key="acme")
    for answer in (taken, unused):
        assert answer.status_code == 201, answer.text
        assert answer.json()["data"]["status"] == "success" and "globex_user" not in answer.text
    assert taken.json()["data"]["payload"]["event"]["id"] == "api/acme/evt_globex_1"
    assert _sent_ids(api) == ["api/acme/evt_globex_1", "api/acme/evt_nowhere"]
    theirs = _event_row(api.engine, "evt_globex_1")
    assert theirs is not None and (theirs["company_id"], theirs["user_id"]) == ("globex", "globex_user")


def test_a_company_key_cannot_take_an_id_another_companys_platform_will_use(api):
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.services.extract import extract
    from tests.api.test_deliver_api import body

    add_integration(api.engine, "acme", "benevity")
    add_integration(api.engine, "globex", "benevity")
    assert api.post(f"{BASE}/deliver", body("evt_future"), key="acme").status_code == 201
    add_events(api.engine, [event("evt_future", "globex")])  # globex's platform writes the id later: it is free
    extract(api.engine, "globex", Provider.BENEVITY)
    deliver(api.engine, api.factory, "benevity", ["globex"])
    assert [(r["company_id"], r["event_id"], r["status"]) for r in rows(api.engine, company_id="globex")] == [
        ("globex", "evt_future", "success")
    ]
    assert _sent_ids(api) == ["api/acme/evt_future", "evt_future"]
    # and globex's key has the id to itself as well: no conflict with acme's event of the same name
    other = api.post(f"{BASE}/deliver", body("evt_future", company="globex", value=7), key="globex")
    assert other.status_code == 201 and other.json()["data"]["payload"]["event"]["id"] == "api/globex/evt_future"


def test_a_company_key_conflicts_only_with_its_own_events(api):
    from tests.api.test_deliver_api import body

    add_integration(api.engine, "acme", "benevity")
    add_integration(api.engine, "globex", "benevity")
    first = api.post(f"{BASE}/deliver", body("evt_1"), key="acme")
    assert first.status_code == 201
    again = api.post(f"{BASE}/deliver", body("evt_1"), key="acme")
    assert again.status_code == 200 and again.json()["data"]["id"] == first.json()["data"]["id"]
    changed = api.post(f"{BASE}/deliver", body("evt_1", value=6), key="acme")
    assert changed.status_code == 409
    assert changed.json()["message"] == "eventId 'evt_1' already exists with different content"
    assert api.post(f"{BASE}/deliver", body("evt_1", company="globex", value=6), key="globex").status_code == 201
    # an admin key (the platform, an operator) speaks in the warehouse's own ids
    admin = api.post(f"{BASE}/deliver", body("evt_1"), key="admin")
    assert admin.status_code == 201 and admin.json()["data"]["payload"]["event"]["id"] == "evt_1"
    assert _sent_ids(api) == ["api/acme/evt_1", "api/globex/evt_1", "evt_1"]


def test_a_company_keys_event_id_leaves_room_for_its_namespace(api):
    from tests.api.test_deliver_api import body

    add_integration(api.engine, "acme", "benevity")
    room = 256 - len("api/acme/")
    too_long = api.post(f"{BASE}/deliver", body("e" * (room + 1)), key="acme")
    assert too_long.status_code == 400
    [detail] = too_long.json()["details"]
    assert detail["field"] == "event.eventId" and detail["message"].startswith(f"is longer than {room} characters")
    assert "'api/acme/<eventId>'" in detail["message"]
    assert rows(api.engine) == [] and api.sent() == []
    assert api.post(f"{BASE}/deliver", body("e" * room), key="acme").status_code == 201
