"""The scale goals in one run: B1 a night, B2 an empty night, B3 staging, B4 claims, B5 many quotas, and Benevity's
throughput against its in-flight bound. Each benchmark measures its own baseline in the same run; this prints
their output as it goes, then one Markdown table of every ratio against its goal (the README's Benchmarks table).

Defaults are the goals' sizes (a night of 1,000 companies, 1,000,000 pending rows): about an hour on 2 cores.
`--quick` runs every benchmark at a tenth of that size, for a look in a few minutes.
"""

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import benevity_throughput, claims, empty_night, many_quotas, night, staging


@dataclass
class Row:
    goal: str
    measure: str
    result: str
    met: bool


def _b1(companies: int) -> list[Row]:
    r = night.main(["--companies", str(companies)])
    deliveries = f"{companies:,} companies x 3 providers x 30 events"
    return [
        Row(
            "B1 night: wall", deliveries, f"{r['wall_ratio']:.2f}x the bare loop (goal <= 1.5x)", r["wall_ratio"] <= 1.5
        ),
        Row("B1 night: CPU per delivery", deliveries, f"{r['cpu_ratio']:.2f}x (goal <= 2x)", r["cpu_ratio"] <= 2),
        Row(
            "B1 night: runs, memory, once",
            deliveries,
            f"{r['runs']:.0f} runs (<= 10), peak RSS {r['rss_mb']:.0f} MB (<= 1,024), delivered once: "
            f"{bool(r['delivered_once'])}",
            r["runs"] <= 10 and r["rss_mb"] <= 1024 and bool(r["delivered_once"]),
        ),
    ]


def _b2(partitions: list[int]) -> list[Row]:
    r = empty_night.main(["--partitions", *map(str, partitions)])
    rows = []
    for n in partitions:
        goal = 5.0 if n <= 1000 else 30.0 * n / 10_000
        seconds = r[f"product_{n}_s"]
        rows.append(
            Row(
                "B2 empty night",
                f"{n:,} partitions, nothing due",
                f"{seconds:.1f} s (goal <= {goal:g} s); Dagster alone {r[f'floor_{n}_s']:.1f} s",
                seconds <= goal,
            )
        )
    return rows


def _b3(sizes: list[int]) -> list[Row]:
    r = staging.main(["--sizes", *map(str, sizes)])
    big, small = max(sizes), min(sizes)
    ratio = r[f"extract_{big}_s"] / r[f"baseline_{big}_s"]
    flat = r[f"peak_rss_{big}_mb"] <= 1.25 * r[f"peak_rss_{small}_mb"]
    return [
        Row(
            "B3 staging",
            f"{big:,} events into the outbox",
            f"{r[f'extract_{big}_s']:.0f} s (goal <= 60 s), {ratio:.2f}x one INSERT ... SELECT (goal <= 2x); peak "
            f"RSS {r[f'peak_rss_{small}_mb']:.0f} MB at {small:,}, {r[f'peak_rss_{big}_mb']:.0f} MB at {big:,}",
            r[f"extract_{big}_s"] <= 60 and ratio <= 2 and flat,
        )
    ]


def _b4(pending: int) -> list[Row]:
    nights = [pending // 10, pending // 5]
    r = claims.main(["--pending", str(pending), "--night", *map(str, nights)])
    growth = r[f"night_{nights[1]}_s"] / r[f"night_{nights[0]}_s"]
    worst = max(r["claim_one_company_ms"], r["claim_every_company_ms"])
    return [
        Row(
            "B4 claims",
            f"a batch of 200 with {pending:,} pending",
            f"{r['claim_one_company_ms']:.1f} ms one company, {r['claim_every_company_ms']:.1f} ms every company "
            f"(goal <= 20 ms); a night's claims {growth:.2f}x for 2x the rows",
            worst <= 20 and growth <= 2.3,
        )
    ]


def _b5(companies: int) -> list[Row]:
    r = many_quotas.main(["--companies", str(companies)])
    return [
        Row(
            "B5 many quotas",
            f"{companies} companies, own Goodera credentials at 100/minute, 20 events each",
            f"{r['ratio']:.2f} of the sum of their quotas (goal >= 0.9), {r['rate_limited']:.0f} x 429 (goal 0)",
            r["ratio"] >= 0.9 and r["rate_limited"] == 0,
        )
    ]


def _throughput(events: int) -> list[Row]:
    r = benevity_throughput.main(["--events", str(events), "--postgres"])
    return [
        Row(
            "Benevity throughput",
            f"{events:,} events, 20 ms latency, 16 in flight, PostgreSQL",
            f"{r['bound_ratio']:.2f} of the in-flight bound (goal >= 0.8); a bare loop of requests.post at the same "
            f"concurrency: {r['bare_bound_ratio']:.2f}",
            r["bound_ratio"] >= 0.8,
        )
    ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the goals' sizes")
    parser.add_argument(
        "--only", nargs="+", choices=["throughput", "B1", "B2", "B3", "B4", "B5"], help="run only these goals"
    )
    args = parser.parse_args(argv)
    tenth = 10 if args.quick else 1
    goals: dict[str, Callable[[], list[Row]]] = {
        "throughput": lambda: _throughput(2000),
        "B5": lambda: _b5(50),
        "B2": lambda: _b2([1000 // tenth, 10_000 // tenth]),
        "B4": lambda: _b4(1_000_000 // tenth),
        "B3": lambda: _b3([100_000 // tenth, 1_000_000 // tenth]),
        "B1": lambda: _b1(1000 // tenth),
    }
    steps = [step for name, step in goals.items() if not args.only or name in args.only]
    load, started = os.getloadavg(), time.perf_counter()
    rows: list[Row] = []
    for step in steps:
        rows.extend(step())
        print(flush=True)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"scale: {minutes:.0f} min, load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| Goal | Measured on | Result | Met |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row.goal} | {row.measure} | {row.result} | {'yes' if row.met else '**no**'} |")
    return {"goals": float(len(rows)), "met": float(sum(r.met for r in rows))}


if __name__ == "__main__":
    main()
