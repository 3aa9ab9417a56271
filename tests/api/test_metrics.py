"""GET /metrics: the guide's metrics and ours, scraped over HTTP and parsed with prometheus-client's own parser;
figures come from the warehouse, so deliveries made outside the API process count too."""

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from impactin_pipelines.services.metrics import DurationTally
from impactin_pipelines.store.circuits import CircuitStore
from impactin_pipelines.store.engine import read_connection
from tests.api.conftest import T0, seed
from tests.support import add_integration, deliver


def _scrape(api, key: str = "admin") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.get("/metrics", key=key)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_are_read_from_the_warehouse_and_parse(api) -> None:
    add_integration(api.engine, "acme", "benevity")
    seed(api.engine, "acme", 4)
    seed(api.engine, "globex", 3, provider="goodera")
    api.sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 1}})
    report = deliver(api.engine, api.factory, "benevity")  # in this process, not through the API
    assert report.totals.outcomes["success"] == 4 and report.totals.attempts == 5
    CircuitStore(api.engine).pause("goodera", None, reason="maintenance")

    samples = _scrape(api)
    assert _value(samples, "impact_in_deliveries_total", provider="benevity", status="success") == 4
    assert _value(samples, "impact_in_deliveries_total", provider="benevity", status="pending") == 0
    assert _value(samples, "impact_in_deliveries_total", provider="goodera", status="pending") == 3
    assert _value(samples, "impact_in_retry_count", provider="benevity") == 1
    assert _value(samples, "impact_in_delivery_duration_seconds_count", provider="benevity") == 5
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "impact_in_delivery_duration_seconds_bucket" and dict(labels)["provider"] == "benevity"
    )
    assert buckets[-1] == (float("inf"), 5) and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert 0 < _value(samples, "impact_in_delivery_duration_seconds_sum", provider="benevity") < 30
    assert _value(samples, "impact_in_queue_depth", provider="benevity") == 0
    assert _value(samples, "impact_in_queue_depth", provider="goodera") == 3
    oldest = (datetime.now(UTC) - T0).total_seconds()  # the seeded rows are created from T0 on
    assert abs(_value(samples, "impact_in_oldest_pending_age_seconds", provider="goodera") - oldest) < 60
    assert _value(samples, "impact_in_oldest_pending_age_seconds", provider="benevity") == 0
    assert _value(samples, "impact_in_circuit_state", provider="goodera") == 3  # paused
    assert _value(samples, "impact_in_circuit_state", provider="benevity") == 0
    assert _value(samples, "impact_in_circuit_breaker_state", provider="goodera", scope="*") == 3
    assert _value(samples, "impact_in_delivery_duration_seconds_count", provider="workday") == 0  # every provider


def test_metrics_need_an_admin_key(api) -> None:
    assert api.get("/metrics", key=None).status_code == 401
    refused = api.get("/metrics", key="acme")
    assert refused.status_code == 403 and "admin" in refused.json()["message"], refused.text


def test_the_duration_tally_counts_each_request_once_as_it_reads_on(api) -> None:
    seed(api.engine, "acme", 3)
    deliver(api.engine, api.factory, "benevity")
    tally = DurationTally()
    now = datetime.now(UTC)
    totals = []
    for later in (0, 1, 6, 30):  # minutes: fresh, still fresh, settled and kept, long kept
        with read_connection(api.engine) as conn:
            found = tally.read(conn, now + timedelta(minutes=later))["benevity"]
        totals.append((found.requests, found.buckets[-1]))
    assert totals == [(3, 3)] * 4
    seed(api.engine, "acme", 2, prefix="more")
    deliver(api.engine, api.factory, "benevity")
    with read_connection(api.engine) as conn:
        assert DurationTally().read(conn, now + timedelta(minutes=31))["benevity"].requests == 5  # a first read
