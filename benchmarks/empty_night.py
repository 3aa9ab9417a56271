"""B2, an empty night: one range run of the delivery job over N (company, provider) partitions with nothing due
(goal: 1,000 partitions <= 5 s, 10,000 <= 30 s), on PostgreSQL (warehouse and Dagster storage).

Baseline, in the same run and instance: the same range run of a job whose two partitioned assets do nothing,
i.e. what Dagster itself costs per partition of a range run (planning, one materialization event per partition
and asset). The difference is ours (per-partition extraction, claims, metadata).
"""

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg

from benchmarks.night import _instance_yaml, scratch_database
from benchmarks.pg import run_sql, scratch_postgres
from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.event_log import DAGSTER_EVENT_ENV, use_batched_dagster_events
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS, delivery_partitions
from impactin_pipelines.defs.orchestration.planning import plan_ranges
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource

SEED_INTEGRATIONS = """
INSERT INTO company_integrations (company_id, provider, enabled, settings)
SELECT 'co' || lpad(c::text, 6, '0'), 'benevity', true, NULL FROM generate_series(1, %(companies)s) AS c
"""


@dg.asset(partitions_def=delivery_partitions, backfill_policy=dg.BackfillPolicy.single_run(), name="noop_outbox")
def _noop_outbox() -> dg.MaterializeResult:
    return dg.MaterializeResult()


@dg.asset(
    partitions_def=delivery_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[_noop_outbox],
    name="noop_deliveries",
)
def _noop_deliveries() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def _range_run(job: dg.JobDefinition, instance: dg.DagsterInstance, companies: list[str]) -> float:
    [rng] = plan_ranges(companies, companies, ["benevity"])
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        tags=rng.tags("benchmark"),
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    elapsed = time.perf_counter() - started
    assert result.success
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1000])
    args = parser.parse_args(argv)
    use_batched_dagster_events()  # as the code location does, for the product and for the floor alike
    warnings.filterwarnings("ignore")
    logging.getLogger("impactin").setLevel(logging.ERROR)
    load = os.getloadavg()
    results: dict[str, float] = {}
    print(
        f"empty_night: a range run over N partitions with nothing due, PostgreSQL, Dagster's event switches "
        f"{DAGSTER_EVENT_ENV} (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    for n in args.partitions:
        companies = [f"co{c:06d}" for c in range(1, n + 1)]
        with (
            scratch_postgres() as (engine, url),
            scratch_database() as dagster_url,
            tempfile.TemporaryDirectory(prefix="impactin-empty-") as tmp,
        ):
            run_sql(engine, SEED_INTEGRATIONS, companies=n)
            (Path(tmp) / "dagster.yaml").write_text(_instance_yaml(dagster_url))
            os.environ["IMPACTIN_STATE_DIR"] = tmp
            defs = dg.Definitions(
                assets=[impact_outbox, impact_deliveries, _noop_outbox, _noop_deliveries],
                jobs=[
                    dg.define_asset_job("product", selection=[impact_outbox, impact_deliveries]),
                    dg.define_asset_job("floor", selection=[_noop_outbox, _noop_deliveries]),
                ],
                resources={
                    "warehouse": WarehouseResource(url=url),
                    "providers": ProvidersResource(),
                    "delivery": DeliveryResource(),
                },
            )
            with dg.DagsterInstance.from_config(tmp) as instance:
                instance.add_dynamic_partitions(COMPANY_PARTITIONS, companies)
                floor_s = _range_run(defs.resolve_job_def("floor"), instance, companies)
                product_s = _range_run(defs.resolve_job_def("product"), instance, companies)
        goal = 5.0 if n <= 1000 else 30.0 * n / 10_000
        print(
            f"  {n:>6} partitions: delivery job {product_s:6.1f} s (goal <= {goal:g} s); Dagster alone (no-op "
            f"assets) {floor_s:6.1f} s = {floor_s / n * 1000:.1f} ms per partition; ratio {product_s / floor_s:.2f}x"
        )
        results[f"product_{n}_s"] = product_s
        results[f"floor_{n}_s"] = floor_s
    return results


if __name__ == "__main__":
    main()
