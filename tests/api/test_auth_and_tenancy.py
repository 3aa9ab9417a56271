"""Authentication on every route but the health probes; a company key sees and acts only on its company."""

import sqlalchemy as sa

from impactin_pipelines.store.api_keys import ApiKeyStore, impact_api_keys
from tests.api.conftest import BASE, seed
from tests.support import add_integration, deliver, rows

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
