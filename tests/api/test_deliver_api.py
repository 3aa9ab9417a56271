"""POST /deliver: the spec's event body goes to the warehouse and the outbox and is sent now; idempotent on
eventId (sends once, even for two identical requests at the same moment); a different body under a taken
eventId is a 409."""

import threading

import sqlalchemy as sa

from impactin_pipelines.domain.events import parse_event
from impactin_pipelines.domain.identity import delivery_id_for
from impactin_pipelines.store.schema import impact_events
from tests.api.conftest import BASE
from tests.api.test_deliveries import DETAIL_KEYS
from tests.support import add_events, add_integration, event, rows

DELIVER = f"{BASE}/deliver"


def body(event_id="evt_api_1", company="acme", provider="benevity", **changes):
    ev = {
        "eventId": event_id,
        "userId": "user_456",
        "eventType": "volunteer_hours",
        "timestamp": "2025-11-14T11:00:00+01:00",
        "value": 5.0,
        "unit": "hours",
        "outcomeScores": {"community_engagement": 0.85, "skill_development": 0.72},
        "metadata": {"program": "buddy_mentoring"},
        **changes,
    }
    return {"companyId": company, "provider": provider, "event": ev}


def stored_events(engine):
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(impact_events).order_by(impact_events.c.event_id))]


def test_deliver_stores_the_event_and_sends_it_now(api):
    """With a company key the event id lives in the company's namespace (tests/api/test_auth_and_tenancy.py)."""
    add_integration(api.engine, "acme", "benevity")
    response = api.post(DELIVER, body(), key="acme")
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert set(response.json()) == {"data"} and set(data) == DETAIL_KEYS
    expected_id = delivery_id_for("acme", "benevity", "api/acme/evt_api_1")
    assert (data["deliveryId"], data["companyId"], data["provider"]) == (expected_id, "acme", "benevity")
    assert (data["status"], data["attemptCount"]) == ("success", 1)
    assert data["payload"]["event"]["id"] == "api/acme/evt_api_1"
    assert data["payload"]["event"]["timestamp"] == "2025-11-14T10:00:00Z"  # normalised to UTC
    assert data["payload"]["event"]["impact"]["value"] == 5.0

    [stored] = stored_events(api.engine)
    assert parse_event(stored) == parse_event(event("api/acme/evt_api_1", "acme"))  # the spec's event, stored
    assert [(r["idempotency_key"], r["status"]) for r in api.sent()] == [(expected_id, 201)]
    assert api.get(f"{BASE}/deliveries/{data['id']}", key="acme").json()["data"] == data


def test_same_body_again_returns_the_existing_delivery_and_sends_nothing(api):
    add_integration(api.engine, "acme", "benevity")
    first = api.post(DELIVER, body())
    again = api.post(DELIVER, body())
    reordered = api.post(DELIVER, body(timestamp="2025-11-14T10:00:00Z", value=5))  # same event, other spelling
    assert first.status_code == 201
    assert again.status_code == reordered.status_code == 200
    assert again.json() == first.json() and reordered.json()["data"]["id"] == first.json()["data"]["id"]
    assert len(api.sent()) == 1 and len(rows(api.engine)) == 1 and len(stored_events(api.engine)) == 1


def test_a_different_body_under_a_taken_event_id_is_409(api):
    add_integration(api.engine, "acme", "benevity")
    add_integration(api.engine, "globex", "benevity")
    assert api.post(DELIVER, body()).status_code == 201
    for other in (body(value=6), body(metadata={"program": "other"}), body(company="globex")):
        response = api.post(DELIVER, other)
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "Conflict" and "evt_api_1" in response.json()["message"]
        assert "acme" not in response.text  # the other company's data is not shown
    assert len(api.sent()) == 1
    assert parse_event(stored_events(api.engine)[0]).value == 5


def test_an_event_already_in_the_warehouse_is_delivered_once_to_a_new_provider(api):
    """The platform wrote the event; the API asks for it to go to Benevity now: same content, so no conflict."""
    add_integration(api.engine, "acme", "benevity")
    add_events(api.engine, [event("evt_api_1", "acme", occurred_at="2025-11-14T10:00:00Z")])
    assert api.post(DELIVER, body()).status_code == 201
    assert api.post(DELIVER, body()).status_code == 200
    assert len(api.sent()) == 1 and len(stored_events(api.engine)) == 1


def test_two_identical_requests_at_once_send_once(api):
    add_integration(api.engine, "acme", "benevity")
    api.sandbox.providers["benevity"].configure({"latency_ms": 200})  # keep the first send in flight
    answers = []

    def post():
        answers.append(api.post(DELIVER, body()))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["data"]["id"] for a in answers}) == 1
    assert len(api.sent()) == 1 and rows(api.engine)[0]["status"] == "success"


def test_a_provider_rejection_is_reported_in_the_delivery(api):
    add_integration(api.engine, "acme", "benevity")
    api.sandbox.providers["benevity"].configure({"reject_events": ["evt_api_1"]})
    response = api.post(DELIVER, body())
    assert response.status_code == 201
    data = response.json()["data"]
    assert (data["status"], data["attemptCount"]) == ("failed", 1)
    assert data["providerResponse"] == {"error": "event_rejected", "event_id": "evt_api_1"}


def test_each_rejected_event_is_sent_exactly_once(api):
    """Regression: a targeted run re-claimed a row that settled before its next claim query and sent it again."""
    add_integration(api.engine, "acme", "benevity")
    ids = [f"evt_rej_{i}" for i in range(12)]
    api.sandbox.providers["benevity"].configure({"reject_events": ids})
    for event_id in ids:
        assert api.post(DELIVER, body(event_id)).json()["data"]["attemptCount"] == 1
    assert sorted(r["event_id"] for r in api.sent()) == sorted(ids)


def test_no_enabled_integration_is_400_and_stores_nothing(api):
    add_integration(api.engine, "acme", "benevity", enabled=False)
    for company in ("acme", "initech"):
        response = api.post(DELIVER, body(company=company))
        assert response.status_code == 400
        assert response.json()["details"][0]["field"] == "provider"
        assert "no enabled benevity integration" in response.json()["message"]
    assert stored_events(api.engine) == [] and rows(api.engine) == [] and api.sent() == []


def test_an_unknown_priority_is_a_400_naming_the_field_and_value(api):
    add_integration(api.engine, "acme", "benevity")
    response = api.post(DELIVER, body(metadata={"priority": "asap"}), key="acme")
    assert response.status_code == 400, response.text
    [detail] = response.json()["details"]
    assert detail["field"] == "event.metadata.priority" and detail["value"] == "asap", detail
    assert rows(api.engine) == [] and api.sent() == []


def test_an_urgent_event_posted_during_a_night_is_sent_once_within_seconds(api):
    """A night of 300 rows is being delivered when an urgent event arrives: whichever sender claims it (the night's
    next batch, or the request's own run), it goes out once, and the answer carries the settled delivery."""
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.services.extract import extract
    from tests.support import deliver, events, factory_for

    add_integration(api.engine, "acme", "benevity")
    add_events(api.engine, events("acme", 300))
    extract(api.engine, "acme", Provider.BENEVITY)
    fake = api.sandbox.providers["benevity"]
    fake.configure({"latency_ms": 10})
    night = threading.Thread(
        target=deliver,
        args=(api.engine, factory_for(api.engine, api.sandbox, claim_batch=20, concurrency=2), "benevity", ["acme"]),
    )
    night.start()
    try:
        while len(fake.snapshot()["accepted"]) < 20:
            threading.Event().wait(0.01)
        response = api.post(DELIVER, body("evt_urgent", metadata={"priority": "urgent"}))  # admin key: plain id
        sent_so_far = len(fake.snapshot()["accepted"])
    finally:
        night.join()
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert (data["status"], data["priority"], data["attemptCount"]) == ("success", "urgent", 1)
    assert sent_so_far < 300, "the night was still under way when the urgent event was answered"
    keys = [r["idempotency_key"] for r in api.sent()]
    assert keys.count(data["deliveryId"]) == 1 and len(keys) == 301
