"""Run every benchmark in turn (each measures its own baseline): the others first, then the scale goals (B1-B5 and
Benevity's throughput, `benchmarks/scale.py`), which end with one table of every goal."""

from benchmarks import (
    deep_pages,
    goodera_quota,
    metrics_scrape,
    partition_fanout,
    priority,
    replay_and_stats,
    scale,
)

BENCHMARKS = [
    partition_fanout,
    goodera_quota,
    replay_and_stats,
    metrics_scrape,
    deep_pages,
    priority,
    scale,
]


def main() -> None:
    for bench in BENCHMARKS:
        bench.main([])
        print()


if __name__ == "__main__":
    main()
