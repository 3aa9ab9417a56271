"""Every way of running deliveries is the same run: statistics follow deliveries from any run (the sensor's first
tick included), in-process runs refresh them themselves, and the rerun sensor watches the implicit asset job's
delivery runs (a backfill from an asset page) as it watches the delivery job's. Real instances, real runs."""

import subprocess
import sys

import dagster as dg

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.assets.stats import delivery_stats
from impactin_pipelines.defs.event_log import DAGSTER_EVENT_ENV
from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.orchestration.planning import PROVIDER_TAG, RANGE_END_TAG, RANGE_START_TAG, TRIGGER_TAG
from impactin_pipelines.defs.orchestration.runner import run_delivery_job
from impactin_pipelines.defs.rerun import ASSET_JOB, ATTEMPT_TAG, RERUN_OF_TAG, impact_rerun_sensor
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, RetryConfig, WarehouseResource
from impactin_pipelines.defs.sensors import stats_after_delivery_sensor
from tests.support import add_events, add_integration, events, statuses


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _resources(url: str, sandbox=None) -> dict[str, object]:
    return {
        "warehouse": WarehouseResource(url=url),
        "providers": ProvidersResource(**(sandbox.env() if sandbox else {})),
        "delivery": DeliveryResource(concurrency=2, lease_s=30, retry=RetryConfig(initial_delay_s=0.01)),
    }


def _stats_tick(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    with dg.build_sensor_context(instance=instance) as context:
        result = stats_after_delivery_sensor(context)
    assert isinstance(result, dg.RunRequest | dg.SkipReason)
    return result


def deliver(instance: dg.DagsterInstance, key: str, resources: dict[str, object]) -> bool:
    assets = [impact_outbox, impact_deliveries]
    return dg.materialize(assets, instance=instance, partition_key=key, resources=resources).success


def test_stats_sensor_catches_deliveries_made_before_its_first_tick(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 2))
    resources = _resources(_url(engine), sandbox)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme"])
        key = partition_key("acme", "benevity")
        assert isinstance(_stats_tick(instance), dg.SkipReason)  # nothing delivered yet
        # a run the daemon never saw (the demo, `impactin run` before this change, a UI run while it was down)
        assert deliver(instance, key, resources)
        first = _stats_tick(instance)  # the sensor's very first tick: no cursor, yet it asks for statistics
        assert isinstance(first, dg.RunRequest)
        assert first.run_key and first.run_key.startswith("stats-after-")
        assert dg.materialize([delivery_stats], instance=instance, resources=resources).success
        assert isinstance(_stats_tick(instance), dg.SkipReason)  # up to date
        add_events(engine, events("acme", 1, prefix="more"))
        assert deliver(instance, key, resources)
        again = _stats_tick(instance)
        assert isinstance(again, dg.RunRequest) and again.run_key != first.run_key


def test_impactin_run_refreshes_statistics_itself_with_the_same_tags(
    sqlite_engine, sandbox, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", _url(sqlite_engine))
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    add_integration(sqlite_engine, "acme", "benevity")
    add_integration(sqlite_engine, "globex", "benevity")
    add_events(sqlite_engine, events("acme", 2) + events("globex", 1))
    for name in DAGSTER_EVENT_ENV:  # unset here (and restored afterwards): loading the code location sets them
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    [outcome] = run_delivery_job(sqlite_engine, companies=["acme", "globex"], providers=["benevity"], trigger="cli")
    assert outcome.success
    assert statuses(sqlite_engine) == {"success": 3}
    with dg.DagsterInstance.get() as instance:
        # Dagster's batching switches are on: one planned event per asset for the range, not one per partition
        planned = instance.get_records_for_run(
            outcome.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        assert sorted(r.asset_key.to_user_string() for r in planned if r.asset_key) == [
            impact_deliveries.key.to_user_string(),
            impact_outbox.key.to_user_string(),
        ]
        runs = {r.job_name: r for r in instance.get_runs()}
        assert set(runs) == {impact_delivery_job.name, "delivery_stats_job"}
        delivery = runs[impact_delivery_job.name].tags
        assert delivery[PROVIDER_TAG] == "benevity" and delivery[TRIGGER_TAG] == "cli"
        assert (delivery[RANGE_START_TAG], delivery[RANGE_END_TAG]) == ("acme|benevity", "globex|benevity")
        assert runs["delivery_stats_job"].tags[TRIGGER_TAG] == "cli"
        [stats] = instance.fetch_materializations(delivery_stats.key, limit=1).records
        [deliveries] = instance.fetch_materializations(impact_deliveries.key, limit=1).records
        assert stats.storage_id > deliveries.storage_id
        assert isinstance(_stats_tick(instance), dg.SkipReason)  # nothing left for the daemon to do


def test_rerun_sensor_re_runs_a_failed_asset_job_run_from_the_ui(engine, tmp_path) -> None:
    """A backfill launched from an asset page runs as the implicit asset job, one partition per run."""
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "benevity")
    add_events(engine, events("acme", 2))
    broken = dg.Definitions(
        assets=[impact_outbox, impact_deliveries], resources=_resources(f"sqlite:///{tmp_path / 'no_tables.db'}")
    )
    asset_job = broken.resolve_implicit_global_asset_job_def()
    assert asset_job.name == ASSET_JOB
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme", "globex"])
        result = asset_job.execute_in_process(
            instance=instance,
            asset_selection=[impact_outbox.key, impact_deliveries.key],
            partition_key=partition_key("acme", "benevity"),
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.job_name == ASSET_JOB and run.tags["dagster/partition/provider"] == "benevity"
        delivery = DeliveryResource(retry=RetryConfig(rerun_base_delay_s=0))
        resources = {"warehouse": WarehouseResource(url=_url(engine)), "delivery": delivery}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            tick = impact_rerun_sensor(context)
        assert isinstance(tick, dg.SensorResult)
        [request] = tick.run_requests or []
        assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == "acme|benevity"
        assert request.tags[PROVIDER_TAG] == "benevity"
        assert (request.tags[ATTEMPT_TAG], request.tags[RERUN_OF_TAG]) == ("2", result.run_id)


def test_loading_the_code_location_warns_nothing() -> None:
    """No Beta/Preview/Supersession warning at load: `dagster dev` printed one per load (78 in 15 minutes)."""
    code = "import warnings; warnings.simplefilter('error'); import impactin_pipelines.definitions as d; d.build_defs()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr
