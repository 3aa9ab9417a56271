"""Turn 'these companies x these providers' into as few range runs as possible.

A multi-partition range is a rectangle, each dimension in its own order (companies: the order they were added;
providers: static). Selections are split into contiguous segments so a run never covers a partition that was
not asked for.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.domain.providers import PROVIDERS

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PROVIDER_TAG = "impactin/provider"
TRIGGER_TAG = "impactin/trigger"
SLICE_TAG = "impactin/slice"  # "2/3": the second of three runs a provider's night was split into


@dataclass(frozen=True)
class PartitionRange:
    first_company: str
    last_company: str
    first_provider: str
    last_provider: str

    @property
    def start(self) -> str:
        return partition_key(self.first_company, self.first_provider)

    @property
    def end(self) -> str:
        return partition_key(self.last_company, self.last_provider)

    def tags(self, trigger: str) -> dict[str, str]:
        tags = {RANGE_START_TAG: self.start, RANGE_END_TAG: self.end, TRIGGER_TAG: trigger}
        if self.first_provider == self.last_provider:
            tags[PROVIDER_TAG] = self.first_provider
        return tags


def segments(ordered: Sequence[str], selected: Iterable[str]) -> list[tuple[str, str]]:
    """Maximal runs of consecutive `ordered` items that are all selected, as (first, last)."""
    chosen = set(selected)
    found: list[tuple[str, str]] = []
    start: str | None = None
    previous: str | None = None
    for item in ordered:
        if item in chosen:
            start = start if start is not None else item
            previous = item
        elif start is not None:
            found.append((start, previous or start))
            start = None
    if start is not None:
        found.append((start, previous or start))
    return found


def plan_ranges(
    known_companies: Sequence[str], companies: Iterable[str], providers: Iterable[str]
) -> list[PartitionRange]:
    """Exact cover of companies x providers by rectangles (companies not yet partitions are left out)."""
    return [
        PartitionRange(c0, c1, p0, p1)
        for c0, c1 in segments(known_companies, companies)
        for p0, p1 in segments(PROVIDERS, providers)
    ]


def covering_range(known_companies: Sequence[str], companies: Iterable[str], provider: str) -> PartitionRange | None:
    """One range from the first to the last company with work: partitions in between without work cost a no-op,
    far less than another run."""
    chosen = set(companies)
    members = [c for c in known_companies if c in chosen]
    if not members:
        return None
    return PartitionRange(members[0], members[-1], provider, provider)


def split_covering_range(
    known_companies: Sequence[str], companies: Iterable[str], provider: str, parts: int
) -> list[PartitionRange]:
    """The covering range cut into at most `parts` disjoint ranges, in partition order, each with as many
    companies with work as the others (give or take one), so a night too big for one process goes to several
    run workers at once. One company's rows always go to one of them."""
    chosen = set(companies)
    members = [c for c in known_companies if c in chosen]
    count = min(max(1, parts), len(members))
    ranges: list[PartitionRange] = []
    start = 0
    for index in range(count):
        size = len(members) // count + (1 if index < len(members) % count else 0)
        chunk = members[start : start + size]
        ranges.append(PartitionRange(chunk[0], chunk[-1], provider, provider))
        start += size
    return ranges


def run_request(
    rng: PartitionRange, *, trigger: str, run_key: str | None = None, tags: Mapping[str, str] | None = None
) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, tags={**rng.tags(trigger), **(tags or {})})
