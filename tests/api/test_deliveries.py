"""GET /deliveries and /deliveries/{id}: the spec's shapes, pagination arithmetic, every filter."""

from datetime import timedelta

import sqlalchemy as sa

from impactin_pipelines.domain.identity import delivery_id_for
from impactin_pipelines.store.schema import impact_deliveries
from tests.api.conftest import BASE, T0, seed
from tests.support import add_integration, deliver, rows

SUMMARY_KEYS = {
    "id",
    "companyId",
    "provider",
    "deliveryId",
    "status",
    "attemptCount",
    "deliveredAt",
    "createdAt",
    "confirmation",
    "confirmedAt",
}
DETAIL_KEYS = SUMMARY_KEYS | {"payload", "priority", "providerResponse", "updatedAt"}
PAGINATION_KEYS = {"page", "limit", "total", "totalPages", "hasNext", "hasPrev"}


def test_pagination_arithmetic_and_newest_first(api):
    seed(api.engine, "acme", 25)  # created T0, T0+1h, ... T0+24h

    first = api.get(f"{BASE}/deliveries", limit=10)
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"data", "pagination"}
    assert body["pagination"] == {
        "page": 1,
        "limit": 10,
        "total": 25,
        "totalPages": 3,
        "hasNext": True,
        "hasPrev": False,
    }
    created = [d["createdAt"] for d in body["data"]]
    assert created == sorted(created, reverse=True)
    assert created[0] == "2025-11-02T12:00:00Z"  # T0 + 24 h: the newest

    middle = api.get(f"{BASE}/deliveries", limit=10, page=2).json()
    assert middle["pagination"] == {**body["pagination"], "page": 2, "hasPrev": True}
    last = api.get(f"{BASE}/deliveries", limit=10, page=3).json()
    assert len(last["data"]) == 5
    assert (last["pagination"]["hasNext"], last["pagination"]["hasPrev"]) == (False, True)
    beyond = api.get(f"{BASE}/deliveries", limit=10, page=4).json()
    assert beyond["data"] == [] and beyond["pagination"]["hasNext"] is False and beyond["pagination"]["total"] == 25

    seen = [d["id"] for page in (body, middle, last) for d in page["data"]]
    assert len(seen) == len(set(seen)) == 25  # pages neither overlap nor skip

    default = api.get(f"{BASE}/deliveries").json()
    assert default["pagination"]["limit"] == 20 and len(default["data"]) == 20
    assert default["pagination"]["totalPages"] == 2


def test_empty_result_has_zero_pages(api):
    body = api.get(f"{BASE}/deliveries").json()
    assert body == {
        "data": [],
        "pagination": {"page": 1, "limit": 20, "total": 0, "totalPages": 0, "hasNext": False, "hasPrev": False},
    }


def test_each_filter(api):
    seed(api.engine, "acme", 3, provider="benevity")
    seed(api.engine, "acme", 2, provider="goodera", start=T0 + timedelta(days=3))
    seed(api.engine, "globex", 4, provider="benevity", start=T0 + timedelta(days=10))
    with api.engine.begin() as conn:  # one failed row to filter by status
        conn.execute(
            sa.update(impact_deliveries)
            .where(impact_deliveries.c.event_id == "evt_acme_benevity_000")
            .values(status="failed", error_kind="rejected")
        )

    def total(**params):
        response = api.get(f"{BASE}/deliveries", **params)
        assert response.status_code == 200, response.text
        return response.json()["pagination"]["total"]

    assert total() == 9
    assert total(companyId="acme") == 5
    assert total(companyId="globex") == 4
    assert total(companyId="nobody") == 0
    assert total(provider="goodera") == 2
    assert total(provider="benevity", companyId="acme") == 3
    assert total(status="failed") == 1
    assert total(status="pending") == 8
    assert total(status="success") == 0
    # Dates: a date is a whole UTC day (endDate inclusive); a datetime is that instant (endDate exclusive).
    assert total(startDate="2025-11-04") == 6  # goodera rows (Nov 4, 12:00, 13:00) + globex
    assert total(endDate="2025-11-01") == 3  # acme benevity, all on Nov 1
    assert total(startDate="2025-11-01", endDate="2025-11-04") == 5
    assert total(startDate="2025-11-01T13:00:00Z", endDate="2025-11-01T14:00:00Z") == 1
    assert total(startDate="2025-11-01T14:00:00+01:00") == 8  # 13:00 UTC
    assert total(startDate="2025-11-11T12:00:00Z", companyId="globex", provider="benevity", status="pending") == 4


def test_list_items_have_exactly_the_spec_shape(api):
    add_integration(api.engine, "acme", "benevity")
    seed(api.engine, "acme", 1)
    deliver(api.engine, api.factory, "benevity", ["acme"])
    item = api.get(f"{BASE}/deliveries").json()["data"][0]
    row = rows(api.engine)[0]
    assert set(item) == SUMMARY_KEYS
    assert item["id"] == row["id"]
    assert item["deliveryId"] == delivery_id_for("acme", "benevity", row["event_id"])
    assert (item["companyId"], item["provider"], item["status"], item["attemptCount"]) == (
        "acme",
        "benevity",
        "success",
        1,
    )
    assert item["createdAt"] == "2025-11-01T12:00:00Z"
    assert item["deliveredAt"].endswith("Z")


def test_single_delivery_by_id_or_delivery_id_with_json_payload_and_response(api):
    add_integration(api.engine, "acme", "benevity")
    seed(api.engine, "acme", 1)
    deliver(api.engine, api.factory, "benevity", ["acme"])
    row = rows(api.engine)[0]

    by_id = api.get(f"{BASE}/deliveries/{row['id']}")
    assert by_id.status_code == 200
    data = by_id.json()["data"]
    assert set(by_id.json()) == {"data"} and set(data) == DETAIL_KEYS
    assert data["payload"]["schema_version"] == "v1.0"  # parsed JSON, not a string
    assert data["payload"]["event"]["id"] == row["event_id"]
    assert isinstance(data["providerResponse"], dict)  # the sandbox answers JSON
    assert data["updatedAt"].endswith("Z") and data["status"] == "success"

    by_delivery_id = api.get(f"{BASE}/deliveries/{row['delivery_id'].upper()}")
    assert by_delivery_id.json() == by_id.json()


def test_text_payloads_and_responses_come_back_as_strings(api):
    seed(api.engine, "acme", 1)
    with api.engine.begin() as conn:
        conn.execute(sa.update(impact_deliveries).values(payload="<soap:Envelope/>", provider_response="Accepted"))
    data = api.get(f"{BASE}/deliveries/{rows(api.engine)[0]['id']}").json()["data"]
    assert data["payload"] == "<soap:Envelope/>" and data["providerResponse"] == "Accepted"
    assert data["deliveredAt"] is None


def test_unknown_delivery_is_404(api):
    missing = "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10"
    response = api.get(f"{BASE}/deliveries/{missing}")
    assert response.status_code == 404
    assert response.json() == {"error": "Delivery not found", "message": f"delivery {missing} not found", "id": missing}
