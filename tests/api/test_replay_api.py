"""Replay one, bulk, and all failed through the API: real sends to the sandbox, the spec's response shapes."""

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from tests.api.conftest import BASE
from tests.support import add_events, add_integration, deliver, events, rows

UNKNOWN = "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10"


def seed_failed(api, company="acme", n=3):
    """n rows of the company that Benevity rejected (422); then Benevity accepts again."""
    add_integration(api.engine, company, "benevity")
    add_events(api.engine, events(company, n))
    extract(api.engine, company, Provider.BENEVITY)
    bnv = api.sandbox.providers["benevity"]
    bnv.configure({"reject_events": [f"evt_{company}_{i:05d}" for i in range(n)]})
    deliver(api.engine, api.factory, "benevity", [company])
    bnv.reset()
    failed = rows(api.engine, status="failed", company_id=company)
    assert len(failed) == n
    return failed


def test_replay_one_sends_with_the_original_delivery_id(api):
    row = seed_failed(api, n=1)[0]
    response = api.post(f"{BASE}/deliveries/{row['id']}/replay", key="acme")
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Delivery replayed successfully", "newStatus": "success"}
    sent = api.sent()
    assert [(r["idempotency_key"], r["status"]) for r in sent] == [(row["delivery_id"], 201)]
    after = rows(api.engine, id=row["id"])[0]
    assert after["status"] == "success" and after["attempt_count"] == 2

    again = api.post(f"{BASE}/deliveries/{row['delivery_id']}/replay", key="acme")
    assert again.status_code == 400
    assert again.json()["error"] == "Replay refused"
    assert again.json()["message"] == "Cannot replay delivery with status: success"
    assert len(api.sent()) == 1


def test_replay_that_fails_again_reports_the_new_status(api):
    row = seed_failed(api, n=1)[0]
    api.sandbox.providers["benevity"].configure({"reject_events": [row["event_id"]]})
    response = api.post(f"{BASE}/deliveries/{row['id']}/replay")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and body["newStatus"] == "failed"
    assert body["message"].startswith("Delivery replay failed: ") and "422" in body["message"]


def test_replay_unknown_is_404(api):
    response = api.post(f"{BASE}/deliveries/{UNKNOWN}/replay")
    assert response.status_code == 404 and response.json()["error"] == "Delivery not found"
    assert api.sent() == []


def test_bulk_replay_mixes_results_in_order(api):
    ok, rejected, done = seed_failed(api, n=3)
    assert api.post(f"{BASE}/deliveries/{done['id']}/replay").json()["newStatus"] == "success"
    api.sandbox.providers["benevity"].configure({"reject_events": [rejected["event_id"]]})

    ids = [ok["id"], rejected["delivery_id"], done["id"], UNKNOWN]
    response = api.post(f"{BASE}/deliveries/bulk-replay", {"ids": ids}, key="acme")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"summary", "results"}
    assert body["summary"] == {"total": 4, "successful": 1, "failed": 3}
    results = body["results"]
    assert [r["id"] for r in results] == ids
    assert results[0] == {"id": ok["id"], "success": True, "newStatus": "success"}
    assert results[1]["success"] is False and results[1]["newStatus"] == "failed" and "422" in results[1]["error"]
    assert results[2] == {
        "id": done["id"],
        "success": False,
        "newStatus": "success",
        "error": "Cannot replay delivery with status: success",
    }
    assert results[3]["success"] is False and "not found" in results[3]["error"] and "newStatus" not in results[3]
    sent_keys = [r["idempotency_key"] for r in api.sent()]
    assert sent_keys.count(ok["delivery_id"]) == 1 and sent_keys.count(done["delivery_id"]) == 1


def test_bulk_replay_accepts_exactly_100_ids(api):
    response = api.post(f"{BASE}/deliveries/bulk-replay", {"ids": [UNKNOWN] * 100})
    assert response.status_code == 200 and response.json()["summary"]["total"] == 100
    assert api.post(f"{BASE}/deliveries/bulk-replay", {"ids": [UNKNOWN] * 101}).status_code == 400


def test_retry_all_failed_replays_every_failed_row_of_the_company_only(api):
    acme = seed_failed(api, "acme", n=3)
    globex = seed_failed(api, "globex", n=2)

    nothing = api.post(f"{BASE}/deliveries/retry-all-failed", {"companyId": "acme", "provider": "goodera"})
    assert nothing.json() == {"summary": {"total": 0, "successful": 0, "failed": 0}, "results": []}

    retry = {"companyId": "acme", "provider": "benevity"}
    response = api.post(f"{BASE}/deliveries/retry-all-failed", retry, key="acme")
    assert response.status_code == 200
    body = response.json()
    assert body["summary"] == {"total": 3, "successful": 3, "failed": 0}
    assert sorted(r["id"] for r in body["results"]) == sorted(r["id"] for r in acme)
    assert all(r == {"id": r["id"], "success": True, "newStatus": "success"} for r in body["results"])
    assert {r["status"] for r in rows(api.engine, company_id="globex")} == {"failed"}
    assert sorted(r["idempotency_key"] for r in api.sent()) == sorted(r["delivery_id"] for r in acme)

    admin = api.post(f"{BASE}/deliveries/retry-all-failed", {"companyId": "globex"}, key="admin")
    assert admin.json()["summary"] == {"total": 2, "successful": 2, "failed": 0}
    assert {r["status"] for r in rows(api.engine)} == {"success"}
    assert len(api.sent()) == len(acme) + len(globex)
