"""The code location: loads, materialises partitions and ranges, schedules the nightly work, adds companies."""

from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa

from impactin_pipelines.definitions import build_defs
from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.orchestration.partitions import company_partitions, partition_key
from impactin_pipelines.defs.orchestration.planning import (
    PROVIDER_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SLICE_TAG,
    covering_range,
    plan_ranges,
    segments,
    split_covering_range,
)
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.defs.schedules import nightly_delivery_schedule
from impactin_pipelines.defs.sensors import company_partitions_sensor
from impactin_pipelines.settings import ScheduleSettings
from tests.support import add_events, add_integration, events, rows, statuses


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(build_defs())


def test_provider_resource_carries_every_spec_variable() -> None:
    from impactin_pipelines.providers import all_variables

    assert set(all_variables()) == set(ProvidersResource.model_fields)
    assert len(ProvidersResource.model_fields) == 22  # the variable names are the contract (+3 webhook secrets)


def test_secrets_are_wired_as_env_vars_not_values(monkeypatch) -> None:
    monkeypatch.setenv("BENEVITY_API_KEY", "super-secret-key-value")
    resource = ProvidersResource.from_env()
    assert isinstance(getattr(resource, "BENEVITY_API_KEY", None), dg.EnvVar)  # a generated field, unknown to mypy
    assert "super-secret-key-value" not in repr(resource)


def _resources(engine, sandbox):
    env = sandbox.env()
    return {
        "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
        "providers": ProvidersResource(**env),
        "delivery": DeliveryResource(concurrency=4, lease_s=30),
    }


def _all_resources(engine):
    return {
        "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
        "providers": ProvidersResource(),
        "delivery": DeliveryResource(),
    }


def test_materialize_one_partition(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "benevity")
    add_events(engine, events("acme", 3) + events("globex", 2))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme", "globex"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries],
            instance=instance,
            partition_key=partition_key("acme", "benevity"),
            resources=_resources(engine, sandbox),
        )
        assert result.success
        mats = result.asset_materializations_for_node("impact_deliveries")
        assert [m.partition for m in mats] == ["acme|benevity"]
        assert mats[0].metadata["run_delivered"].value == 3
        assert mats[0].metadata["partitions_needing_attention"].value == 0
        outbox = result.asset_materializations_for_node("impact_outbox")[0]
        assert outbox.metadata["run_new_rows"].value == 3
    assert statuses(engine) == {"success": 3}
    assert {r["company_id"] for r in rows(engine)} == {"acme"}


def test_a_range_run_gives_the_partitions_that_need_attention_metadata_of_their_own(engine, sandbox) -> None:
    """Every partition of the range is materialised with the run's summary; the partitions with failed rows also
    carry their own counts, and the summary names them: what an operator reads in the UI, from the instance."""
    companies = ["a1", "a2", "a3", "a4", "a5"]
    for c in companies:
        add_integration(engine, c, "benevity")
    add_events(engine, events("a1", 1) + events("a2", 2) + events("a4", 4) + events("a5", 2))
    sandbox.providers["benevity"].configure({"reject_events": ["evt_a4_00000", "evt_a5_00000", "evt_a5_00001"]})
    defs = dg.Definitions(
        assets=[impact_outbox, impact_deliveries],
        resources=_resources(engine, sandbox),
        jobs=[dg.define_asset_job("j", selection=[impact_outbox, impact_deliveries])],
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", companies)
        result = defs.resolve_job_def("j").execute_in_process(
            instance=instance,
            tags={RANGE_START_TAG: "a1|benevity", RANGE_END_TAG: "a5|benevity"},
        )
        assert result.success

        def latest(partition: str) -> dict:
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=impact_deliveries.key, asset_partitions=[partition]), limit=1
            ).records
            assert record.asset_materialization is not None
            return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}

        healthy, worst, bad = latest("a2|benevity"), latest("a5|benevity"), latest("a4|benevity")
    assert "delivered" not in healthy and healthy["run_delivered"] == 6 and healthy["run_failed"] == 3
    assert healthy["partitions_needing_attention"] == 2 and healthy["run_partitions"] == 5
    listed = str(healthy["needing_attention"])
    assert listed.index("a5|benevity") < listed.index("a4|benevity"), "worst first"
    assert (bad["delivered"], bad["rejected"], bad["failed"]) == (3, 1, 1)
    assert (worst["delivered"], worst["failed"]) == (0, 2)


def test_partition_metadata_of_their_own_is_capped_per_run(engine, sandbox, monkeypatch) -> None:
    """Dagster checks each partition's metadata against the whole range, so only the worst few get their own."""
    from impactin_pipelines.defs.assets import delivery

    monkeypatch.setattr(delivery, "ATTENTION_PARTITIONS_MAX", 1)
    for c in ("b1", "b2"):
        add_integration(engine, c, "benevity")
    add_events(engine, events("b1", 1) + events("b2", 2))
    sandbox.providers["benevity"].configure({"reject_events": ["evt_b1_00000", "evt_b2_00000", "evt_b2_00001"]})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["b1", "b2"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries],
            instance=instance,
            tags={RANGE_START_TAG: "b1|benevity", RANGE_END_TAG: "b2|benevity"},
            resources=_resources(engine, sandbox),
        )
        mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("impact_deliveries")}
    assert mats["b2|benevity"]["failed"].value == 2
    assert "failed" not in mats["b1|benevity"] and mats["b1|benevity"]["partitions_needing_attention"].value == 2


def test_segments_and_ranges_cover_exactly_the_selection() -> None:
    order = ["a", "b", "c", "d", "e"]
    assert segments(order, {"a", "b", "d"}) == [("a", "b"), ("d", "d")]
    assert segments(order, set()) == []
    ranges = plan_ranges(order, ["a", "c"], ["benevity", "workday"])
    assert [(r.start, r.end) for r in ranges] == [
        ("a|benevity", "a|benevity"),
        ("a|workday", "a|workday"),
        ("c|benevity", "c|benevity"),
        ("c|workday", "c|workday"),
    ]
    everything = plan_ranges(order, order, ["benevity", "goodera", "workday"])
    assert [(r.start, r.end) for r in everything] == [("a|benevity", "e|workday")]
    span = covering_range(order, {"b", "d"}, "goodera")
    assert span is not None and span.tags("schedule")[PROVIDER_TAG] == "goodera"
    assert covering_range(order, set(), "goodera") is None


def _tick(engine, schedule, when: datetime, companies: list[str]):
    """One evaluation of the schedule against a real instance that knows these company partitions."""
    defs = dg.Definitions(
        assets=[impact_outbox, impact_deliveries],
        schedules=[schedule],
        jobs=[impact_delivery_job],
        resources=_all_resources(engine),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", companies)
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            repository_def=defs.get_repository_def(),
            resources=_all_resources(engine),
        ) as context:
            return schedule.evaluate_tick(context)


def test_nightly_schedule_requests_one_range_run_per_provider_with_work(engine) -> None:
    for c in ("acme", "globex", "initech"):
        add_integration(engine, c, "benevity")
    add_integration(engine, "globex", "goodera")
    add_integration(engine, "initech", "workday", enabled=False)
    add_events(engine, events("acme", 1) + events("globex", 1) + events("initech", 1))
    schedule = nightly_delivery_schedule(ScheduleSettings(cron="30 3 * * *", timezone="Europe/Paris"))
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * *", "Europe/Paris")
    result = _tick(engine, schedule, datetime(2026, 1, 2, 2, 30, tzinfo=UTC), ["acme", "globex", "initech"])
    requests = {r.tags[PROVIDER_TAG]: r for r in result.run_requests}
    assert set(requests) == {"benevity", "goodera"}
    assert (requests["benevity"].tags[RANGE_START_TAG], requests["benevity"].tags[RANGE_END_TAG]) == (
        "acme|benevity",
        "initech|benevity",
    )
    assert requests["goodera"].tags[RANGE_START_TAG] == requests["goodera"].tags[RANGE_END_TAG] == "globex|goodera"
    assert requests["benevity"].run_key == "nightly-benevity-2026-01-02T0230"


def test_schedule_skips_when_nothing_is_due(engine) -> None:
    add_integration(engine, "acme", "benevity")
    result = _tick(engine, nightly_delivery_schedule(), datetime(2026, 1, 2, 2, 0, tzinfo=UTC), ["acme"])
    assert not result.run_requests and result.skip_message


def test_company_sensor_adds_valid_companies_once(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "goodera", enabled=False)
    add_integration(engine, "bad|company", "benevity")
    resources = {"warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False))}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = company_partitions_sensor(context)
        assert isinstance(result, dg.SensorResult) and result.dynamic_partitions_requests is not None
        [request] = result.dynamic_partitions_requests
        assert request.partitions_def_name == company_partitions.name
        assert sorted(request.partition_keys) == ["acme", "globex"]
        instance.add_dynamic_partitions("company", list(request.partition_keys))
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            again = company_partitions_sensor(context)
        assert isinstance(again, dg.SkipReason)


@pytest.mark.parametrize("cron", ["0 2 * * *"])
def test_default_schedule_is_02_00_utc(cron: str) -> None:
    schedule = nightly_delivery_schedule(ScheduleSettings.from_env({}))
    assert (schedule.cron_schedule, schedule.execution_timezone) == (cron, "UTC")


def test_run_log_level_keeps_successes_out_of_the_run_log(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 2))
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503}})
    resources = {**_resources(engine, sandbox), "delivery": DeliveryResource(run_log_level="WARNING")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries],
            instance=instance,
            partition_key=partition_key("acme", "benevity"),
            resources=resources,
        )
        messages = [entry.message or "" for entry in instance.all_logs(result.run_id)]
    assert statuses(engine) == {"success": 2}
    assert any("attempt retry" in m for m in messages)  # the problem is in the run log
    assert not any("attempt succeed" in m for m in messages)  # the routine is only in the warehouse


def test_a_token_fetch_is_not_a_run_log_event(engine, sandbox) -> None:
    """A token is fetched once per credentials and lifetime (a night of 1,000 companies with credentials of their
    own: 1,000 fetches); with the `impactin` loggers managed at INFO, an INFO line would be an event-log write each.
    Refusals stay in the run log."""
    for company in ("acme", "globex"):
        add_integration(engine, company, "goodera")
        add_events(engine, events(company, 1))
    python_logs = {"managed_python_loggers": ["impactin"], "python_log_level": "INFO"}
    with dg.instance_for_test(overrides={"python_logs": python_logs}) as instance:
        instance.add_dynamic_partitions("company", ["acme", "globex"])
        [rng] = plan_ranges(["acme", "globex"], ["acme", "globex"], ["goodera"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries],
            instance=instance,
            tags=rng.tags("test"),
            resources=_resources(engine, sandbox),
        )
        messages = [entry.message or "" for entry in instance.all_logs(result.run_id)]
    assert statuses(engine, "goodera") == {"success": 2}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM impact_provider_tokens")).scalar_one() == 1  # one, shared
    assert any("goodera: 2 delivered" in m for m in messages)  # the run log is there, with its summary
    assert not any("access token" in m for m in messages)


# -- a night split over several run workers (IMPACTIN_RUNS_PER_PROVIDER) ----------------------------------------
def test_split_covering_range_gives_disjoint_balanced_ranges_in_partition_order() -> None:
    order = ["a", "b", "c", "d", "e", "f", "g", "h"]
    work = {"a", "b", "d", "e", "f", "h", "zz-not-a-partition"}
    ranges = split_covering_range(order, work, "benevity", 3)
    assert [(r.start, r.end) for r in ranges] == [
        ("a|benevity", "b|benevity"),
        ("d|benevity", "e|benevity"),
        ("f|benevity", "h|benevity"),
    ]
    covered = [c for r in ranges for c in order[order.index(r.first_company) : order.index(r.last_company) + 1]]
    assert len(covered) == len(set(covered)), "a partition is in two runs"
    assert work - {"zz-not-a-partition"} <= set(covered)
    # never more runs than companies with work; one run is the plain covering range
    assert [(r.start, r.end) for r in split_covering_range(order, {"c", "g"}, "workday", 5)] == [
        ("c|workday", "c|workday"),
        ("g|workday", "g|workday"),
    ]
    assert split_covering_range(order, work, "goodera", 1) == [covering_range(order, work, "goodera")]
    assert split_covering_range(order, set(), "goodera", 3) == []


def test_runs_per_provider_setting_defaults_to_one_and_refuses_nonsense() -> None:
    assert ScheduleSettings.from_env({}).runs_per_provider == 1
    assert ScheduleSettings.from_env({"IMPACTIN_RUNS_PER_PROVIDER": "4"}).runs_per_provider == 4
    for bad in ("0", "three"):
        with pytest.raises(ValueError, match=f"IMPACTIN_RUNS_PER_PROVIDER='{bad}'"):
            ScheduleSettings.from_env({"IMPACTIN_RUNS_PER_PROVIDER": bad})


def test_nightly_schedule_splits_each_provider_into_runs_per_provider(engine) -> None:
    companies = [f"c{i}" for i in range(1, 8)]
    for c in companies:
        add_integration(engine, c, "benevity")
    for c in ("c2", "c5"):
        add_integration(engine, c, "goodera")
    add_events(engine, [ev for c in companies for ev in events(c, 1)])
    schedule = nightly_delivery_schedule(ScheduleSettings.from_env({"IMPACTIN_RUNS_PER_PROVIDER": "3"}))
    result = _tick(engine, schedule, datetime(2026, 1, 2, 2, 0, tzinfo=UTC), companies)
    by_provider: dict[str, list[dg.RunRequest]] = {}
    for request in result.run_requests:
        by_provider.setdefault(request.tags[PROVIDER_TAG], []).append(request)
    assert sorted(by_provider) == ["benevity", "goodera"]
    spans = {
        p: [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG], r.tags[SLICE_TAG]) for r in rs]
        for p, rs in by_provider.items()
    }
    assert spans["benevity"] == [
        ("c1|benevity", "c3|benevity", "1/3"),
        ("c4|benevity", "c5|benevity", "2/3"),
        ("c6|benevity", "c7|benevity", "3/3"),
    ]
    assert spans["goodera"] == [("c2|goodera", "c2|goodera", "1/2"), ("c5|goodera", "c5|goodera", "2/2")]
    keys = [r.run_key for r in result.run_requests]
    assert len(set(keys)) == len(keys) == 5
    assert "nightly-benevity-2of3-2026-01-02T0200" in keys
