"""How Dagster writes a night's per-partition events: two of Dagster's own switches, on by default here.

A range run over N company x provider partitions would otherwise cost Dagster one "materialization planned" event
per partition and asset when the run is created, and one write per materialization when it ends, each over a new
PostgreSQL connection: ~55 s of a 1,000-partition run with nothing to deliver (`benchmarks/empty_night.py`). With
one planned event per asset for the whole range, and the range's materializations written in batches, the same
run costs Dagster ~4 s.

Both are environment variables read wherever events are written: in the process that creates a run (the daemon for
schedules, sensors and backfills; the webserver for launches from the UI; `impactin run`) and in the run's own
process. Importing the code location sets them for the processes that load it; the deployment files set them for
the webserver and the daemon. A value already in the environment wins.

Dagster's trade-off: with one planned event per asset, a range run that fails does not mark its partitions
"failed" on the asset's partition bar (they keep their last state). Such a run shows as failed on the Runs page,
the rerun sensor re-runs it, and the partitions that need attention are named in the run's own metadata.
"""

import os
from collections.abc import MutableMapping

DAGSTER_EVENT_ENV = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}


def use_batched_dagster_events(env: MutableMapping[str, str] = os.environ) -> None:
    """Turn both switches on in `env` unless they are set already."""
    for name, value in DAGSTER_EVENT_ENV.items():
        env.setdefault(name, value)
