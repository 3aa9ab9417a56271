"""The shipped instance configs load, and the production one really stores runs in PostgreSQL."""

import shutil
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.planning import PROVIDER_TAG
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.partitions import partition_key
from tests.conftest import fresh_postgres_url
from tests.support import add_events, add_integration, events, statuses

ROOT = Path(__file__).resolve().parents[1]


def _home_with(config: Path, tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(config, home / "dagster.yaml")
    return home


def test_embedded_instance_config_loads_with_provider_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = _home_with(ROOT / "dagster.yaml", tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": PROVIDER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_production_config_runs_the_job_on_postgres_storage(
    tmp_path, postgres_database, sqlite_engine, sandbox, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    storage_url = fresh_postgres_url(postgres_database)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    home = _home_with(ROOT / "deploy" / "dagster.yaml", tmp_path)
    add_integration(sqlite_engine, "acme", "benevity")
    add_events(sqlite_engine, events("acme", 2))
    job = dg.Definitions(
        assets=[impact_outbox, impact_deliveries],
        jobs=[dg.define_asset_job("j", selection=[impact_outbox, impact_deliveries])],
        resources={
            "warehouse": WarehouseResource(url=str(sqlite_engine.url)),
            "providers": ProvidersResource(**sandbox.env()),
            "delivery": DeliveryResource(),
        },
    ).resolve_job_def("j")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("company", ["acme"])
        result = job.execute_in_process(instance=instance, partition_key=partition_key("acme", "benevity"))
        assert result.success
    assert statuses(sqlite_engine) == {"success": 2}
    with sa.create_engine(storage_url).connect() as conn:
        assert conn.execute(sa.text("select count(*) from runs")).scalar_one() == 1
