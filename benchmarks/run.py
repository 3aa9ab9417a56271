"""Run every benchmark in turn (each measures its own baseline)."""

from benchmarks import benevity_throughput, partition_fanout

BENCHMARKS = [benevity_throughput, partition_fanout]


def main() -> None:
    try:
        from benchmarks import goodera_quota

        BENCHMARKS.append(goodera_quota)
    except ImportError:
        pass
    for bench in BENCHMARKS:
        bench.main([])
        print()


if __name__ == "__main__":
    main()
