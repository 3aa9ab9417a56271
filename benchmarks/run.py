"""Run every benchmark in turn (each measures its own baseline)."""

from benchmarks import (
    benevity_throughput,
    claims,
    deep_pages,
    empty_night,
    goodera_quota,
    many_quotas,
    metrics_scrape,
    night,
    partition_fanout,
    priority,
    replay_and_stats,
    staging,
)

BENCHMARKS = [
    benevity_throughput,
    partition_fanout,
    empty_night,
    goodera_quota,
    many_quotas,
    replay_and_stats,
    staging,
    claims,
    metrics_scrape,
    deep_pages,
    priority,
    night,
]


def main() -> None:
    for bench in BENCHMARKS:
        bench.main([])
        print()


if __name__ == "__main__":
    main()
