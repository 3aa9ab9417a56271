"""Per-run overhead: one Dagster run per (company, provider) partition versus one range run over all of them.

The design asks that thousands of partitions not cost thousands of process starts; this measures the in-process
part of that cost (the daemon adds a process start per run on top) to justify range runs.
"""

import argparse
import logging
import tempfile
import time
import warnings

import dagster as dg

from benchmarks.common import SandboxProcess, scratch_warehouse, seed
from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.orchestration.planning import RANGE_END_TAG, RANGE_START_TAG
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--companies", type=int, default=40)
    parser.add_argument("--events-per-company", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("impactin").setLevel(logging.ERROR)

    results = {}
    with SandboxProcess() as sandbox:
        for mode in ("per_partition", "range"):
            sandbox.reset()
            with scratch_warehouse() as (engine, _), tempfile.TemporaryDirectory() as home:
                companies = [f"co{i:04d}" for i in range(args.companies)]
                total = seed(engine, "benevity", companies, args.events_per_company)
                job = dg.Definitions(
                    assets=[impact_outbox, impact_deliveries],
                    jobs=[dg.define_asset_job("job", selection=[impact_outbox, impact_deliveries])],
                    resources={
                        "warehouse": WarehouseResource(url=str(engine.url)),
                        "providers": ProvidersResource(**sandbox.env),
                        "delivery": DeliveryResource(),
                    },
                ).resolve_job_def("job")
                quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
                with dg.DagsterInstance.local_temp(home) as instance:
                    instance.add_dynamic_partitions("company", companies)
                    started = time.perf_counter()
                    if mode == "per_partition":
                        for company in companies:
                            job.execute_in_process(
                                instance=instance, partition_key=partition_key(company, "benevity"), run_config=quiet
                            )
                    else:
                        job.execute_in_process(
                            instance=instance,
                            tags={
                                RANGE_START_TAG: partition_key(companies[0], "benevity"),
                                RANGE_END_TAG: partition_key(companies[-1], "benevity"),
                            },
                            run_config=quiet,
                        )
                    results[mode] = time.perf_counter() - started
                delivered = len(sandbox.requests_seen("benevity")["accepted"])
                assert delivered == total, (mode, delivered, total)

    n = args.companies
    print(f"partition_fanout: {n} partitions x {args.events_per_company} events, in-process runs")
    for label, key in (("one run per partition:", "per_partition"), ("one range run:", "range")):
        print(f"  {label:<24}{results[key]:6.1f} s  ({results[key] / n * 1000:5.0f} ms per partition)")
    print(f"  ratio per-partition / range: {results['per_partition'] / results['range']:.1f}x")
    return {"per_partition_s": results["per_partition"], "range_s": results["range"]}


if __name__ == "__main__":
    main()
