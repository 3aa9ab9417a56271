"""GET /stats: the spec's shape from the shared stats service, filtered by company and period."""

from datetime import timedelta

import sqlalchemy as sa

from impactin_pipelines.store.schema import impact_deliveries as d
from tests.api.conftest import BASE, T0, seed


def test_stats_have_the_spec_shape_and_honour_company_and_period(api):
    seed(api.engine, "acme", 4)  # Nov 1
    seed(api.engine, "acme", 2, provider="goodera", start=T0 + timedelta(days=5))  # Nov 6
    seed(api.engine, "globex", 3, start=T0 + timedelta(days=20))  # Nov 21
    with api.engine.begin() as conn:
        conn.execute(
            sa.update(d)
            .where(d.c.company_id == "acme", d.c.provider == "benevity", d.c.event_id < "evt_acme_benevity_002")
            .values(status="success", attempt_count=1)
        )
        conn.execute(
            sa.update(d)
            .where(d.c.company_id == "acme", d.c.provider == "benevity", d.c.event_id >= "evt_acme_benevity_002")
            .values(status="failed", error_kind="rejected", attempt_count=2)
        )
        conn.execute(sa.update(d).where(d.c.company_id == "globex").values(status="retrying", attempt_count=3))

    response = api.get(f"{BASE}/stats", companyId="acme", startDate="2025-11-01", endDate="2025-11-30")
    assert response.status_code == 200
    assert response.json() == {
        "data": {
            "overall": {"total": 6, "successful": 2, "failed": 2, "pending": 2, "retrying": 0},
            "byProvider": [
                {"provider": "benevity", "status": "failed", "count": 2, "avgAttempts": 2.0},
                {"provider": "benevity", "status": "success", "count": 2, "avgAttempts": 1.0},
                {"provider": "goodera", "status": "pending", "count": 2, "avgAttempts": 0.0},
            ],
        }
    }

    def overall(**params):
        return api.get(f"{BASE}/stats", **params).json()["data"]["overall"]

    assert overall()["total"] == 9 and overall()["retrying"] == 3
    assert overall(endDate="2025-11-01")["total"] == 4
    assert overall(startDate="2025-11-06T12:30:00Z")["total"] == 4  # one goodera row (13:00) + globex
    assert overall(startDate="2025-12-01") == {"total": 0, "successful": 0, "failed": 0, "pending": 0, "retrying": 0}
    assert overall(companyId="globex") == {"total": 3, "successful": 0, "failed": 0, "pending": 0, "retrying": 3}
