"""Issue 2's first benchmark: 2,000 Benevity events to the sandbox with 20 ms of added latency.

Baseline: the same connector sending the same stored payloads one request at a time (no outbox, no threads).
Ceiling: those payloads posted by `--concurrency` threads of `requests.post` (no outbox, no records), this machine's
own reach of the in-flight bound (requests in flight / latency), which the goal of 0.8 of that bound does not adjust
for. Pipeline: DeliveryRun (claims, attempts, settlement in the warehouse, bounded concurrency), and the whole Dagster
job (`impact_delivery_job` in-process over a range of partitions: extract + deliver + materialisations) on a
fresh warehouse. All are measured in this run, against the same sandbox, and printed with their ratio.
"""

import argparse
import logging
import os
import time

import sqlalchemy as sa

from benchmarks.common import SandboxProcess, scratch_warehouse, seed, send_concurrently, send_sequentially
from benchmarks.pg import scratch_postgres
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.observability import install_stream_logging
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.schema import impact_deliveries


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the DeliveryRun part on a throwaway PostgreSQL warehouse (default: SQLite)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("impactin").setLevel(logging.WARNING)
    # A run writes every delivery line to stderr (its compute log); here they are written, at the same cost, to
    # nowhere, so that the benchmark prints its results and not 4,000 lines of them.
    install_stream_logging(stream=open(os.devnull, "w"))  # noqa: SIM115  # open for the life of the process

    companies = [f"bench{c:02d}" for c in range(10)]
    warehouse = scratch_postgres() if args.postgres else scratch_warehouse()
    with warehouse as (engine, _), SandboxProcess() as sandbox:
        seed(engine, "benevity", companies, args.events // len(companies))
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})
        env = ProviderEnv.from_env(sandbox.env)
        settings = DeliverySettings(concurrency=args.concurrency)
        factory = ConnectorFactory(engine, env=env, settings=settings)

        started = time.perf_counter()
        for company in companies:
            extract(engine, company, Provider.BENEVITY)
        extracted_s = time.perf_counter() - started

        # Baseline: one request at a time, same connector, same payloads, nothing recorded.
        with engine.connect() as conn:
            payloads = [dict(r._mapping) for r in conn.execute(sa.select(impact_deliveries)).all()]
        baseline_s = send_sequentially(factory.connector(companies[0], Provider.BENEVITY), payloads)
        bare_s = send_concurrently(factory.connector(companies[0], Provider.BENEVITY), payloads, args.concurrency)
        sandbox.reset()
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})

        started = time.perf_counter()
        report = DeliveryRun(engine, factory, provider=Provider.BENEVITY, company_ids=companies).run()
        pipeline_s = time.perf_counter() - started
        factory.close()
        delivered = report.totals.outcomes[RowOutcome.SUCCESS]
        assert delivered == len(payloads), report.totals.outcomes
        assert len(sandbox.requests_seen("benevity")["accepted"]) == delivered

    with scratch_warehouse() as (engine, home), SandboxProcess() as sandbox:
        seed(engine, "benevity", companies, args.events // len(companies))
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})
        job_s = _through_dagster(engine, home, sandbox.env, companies, args.concurrency, "INFO")
        assert len(sandbox.requests_seen("benevity")["accepted"]) == delivered
    with scratch_warehouse() as (engine, home), SandboxProcess() as sandbox:
        seed(engine, "benevity", companies, args.events // len(companies))
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})
        quiet_job_s = _through_dagster(engine, home, sandbox.env, companies, args.concurrency, "WARNING")
        assert len(sandbox.requests_seen("benevity")["accepted"]) == delivered

    baseline_rate = len(payloads) / baseline_s
    bare_rate = len(payloads) / bare_s
    pipeline_rate = delivered / pipeline_s
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"benevity_throughput: {delivered} events, {args.latency_ms:g} ms latency, concurrency {args.concurrency}, "
        f"DeliveryRun on {backend}"
    )
    print(f"  extract (outbox rows):      {len(payloads) / extracted_s:8.0f} events/s")
    print(f"  sequential baseline:        {baseline_rate:8.1f} events/s  ({baseline_s:.1f} s)")
    print(f"  pipeline (DeliveryRun):     {pipeline_rate:8.1f} events/s  ({pipeline_s:.1f} s)")
    print(f"  ratio pipeline / baseline:  {pipeline_rate / baseline_rate:8.2f}x")
    bound = args.concurrency / (args.latency_ms / 1000)  # requests in flight / latency
    print(f"  pipeline / in-flight bound: {pipeline_rate / bound:8.2f}  (bound {bound:.0f} events/s; goal >= 0.8)")
    print(f"  bare concurrent loop:       {bare_rate:8.1f} events/s  ({bare_rate / bound:.2f} of the bound)")
    print(f"  pipeline / bare loop:       {pipeline_rate / bare_rate:8.2f}")
    job_rate, quiet_rate = delivered / job_s, delivered / quiet_job_s
    print(f"  Dagster job, every delivery in the run log:  {job_rate:6.1f} events/s  ({job_s:.1f} s, incl. extract)")
    print(f"  Dagster job, run_log_level WARNING:          {quiet_rate:6.1f} events/s  ({quiet_job_s:.1f} s)")
    print(
        f"  ratio job / baseline:       {job_rate / baseline_rate:8.2f}x  (WARNING: {quiet_rate / baseline_rate:.2f}x)"
    )
    return {
        "baseline_eps": baseline_rate,
        "pipeline_eps": pipeline_rate,
        "job_eps": job_rate,
        "quiet_job_eps": quiet_rate,
        "bound_ratio": pipeline_rate / bound,
        "bare_bound_ratio": bare_rate / bound,
    }


def _through_dagster(
    engine, home, env: dict[str, str], companies: list[str], concurrency: int, log_level: str
) -> float:  # type: ignore[no-untyped-def]
    import dagster as dg

    from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
    from impactin_pipelines.defs.orchestration.planning import plan_ranges
    from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource

    job = dg.Definitions(
        assets=[impact_outbox, impact_deliveries],
        jobs=[dg.define_asset_job("job", selection=[impact_outbox, impact_deliveries])],
        resources={
            "warehouse": WarehouseResource(url=str(engine.url)),
            "providers": ProvidersResource(**{k: v for k, v in env.items() if k in ProvidersResource.model_fields}),
            "delivery": DeliveryResource(concurrency=concurrency, run_log_level=log_level),
        },
    ).resolve_job_def("job")
    (home / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("company", companies)
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


if __name__ == "__main__":
    main()
