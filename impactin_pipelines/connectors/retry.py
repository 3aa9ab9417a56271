"""The retry policy, in the shape of stripe-python's request layer: one function decides whether to retry
(from the outcome, the headers and the attempt count), one computes the sleep (exponential, jittered,
capped, overridden by Retry-After). The idempotency key never changes between attempts: it is the row's."""

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from impactin_pipelines.domain.statuses import AttemptOutcome, ErrorKind
from impactin_pipelines.settings import RetrySettings

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_AUTH_REFRESHES = 5  # free token refreshes per row and run; past it the row waits for a later run


def outcome_for_status(status: int, *, oauth: bool = False) -> AttemptOutcome:
    if 200 <= status < 300:
        return AttemptOutcome.SUCCESS
    if status == 429:
        return AttemptOutcome.RATE_LIMITED
    if status in RETRYABLE_STATUSES:
        return AttemptOutcome.RETRYABLE
    if status == 401 and oauth:
        return AttemptOutcome.AUTH_EXPIRED
    return AttemptOutcome.PERMANENT


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date. None if absent or garbage."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # NaN, inf
        return None
    return max(0.0, seconds)


class Step(StrEnum):
    SUCCEED = "succeed"  # delivered
    RETRY = "retry"  # try again in this run after `delay_s`
    PARK = "park"  # transient trouble outlived this run's attempts: retry in a later run
    FAIL = "fail"  # permanent: never retried automatically


@dataclass(frozen=True)
class Spent:
    """What one row has used up in this run: attempts that count against the limit (`burned`), free waits on a
    rate limit, and free token refreshes after a 401."""

    burned: int = 0
    free_waits: int = 0
    auth_refreshes: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do after one attempt, and what the row has spent once this attempt is counted (`spent`): the caller
    passes `spent` to the next decision and keeps no tally of its own."""

    step: Step
    spent: Spent
    delay_s: float = 0.0
    error_kind: ErrorKind | None = None


@dataclass(frozen=True)
class RetryPolicy:
    settings: RetrySettings = field(default_factory=RetrySettings)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep after the `attempt`-th failed attempt: initial x multiplier^(n-1), capped, +-jitter."""
        s = self.settings
        try:
            grown = s.initial_delay_s * s.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a long attempt chain (IMPACTIN_RETRY_MAX_ATTEMPTS is unbounded) is far past the cap
            grown = s.max_delay_s if s.initial_delay_s > 0 else 0.0
        base = min(s.max_delay_s, grown)
        spread = (rng or random).uniform(-s.jitter, s.jitter)
        return max(0.0, min(s.max_delay_s * (1 + s.jitter), base * (1 + spread)))

    def sleep_for(self, attempt: int, retry_after_s: float | None, rng: random.Random | None = None) -> float:
        """Retry-After wins over our own backoff (the provider knows its reset)."""
        if retry_after_s is not None:
            return retry_after_s
        return self.backoff(attempt, rng)

    def decide(
        self,
        outcome: AttemptOutcome,
        spent: Spent = Spent(),
        *,
        token_stale: bool = False,
        retry_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> Decision:
        """`spent`: what the row used up before this attempt. Only a retryable failure burns an attempt; a rate
        limit wait and a token refresh are free, up to their own bounds.

        A 401 costs no attempt and fetches a new token, unless the token it refused was itself fetched after
        this row's previous 401 and was still current (`token_stale` false): then the credentials are refused."""
        s = self.settings
        match outcome:
            case AttemptOutcome.SUCCESS:
                return Decision(Step.SUCCEED, spent)
            case AttemptOutcome.PERMANENT:
                return Decision(Step.FAIL, spent, error_kind=ErrorKind.REJECTED)
            case AttemptOutcome.CONFIG:
                return Decision(Step.FAIL, spent, error_kind=ErrorKind.CONFIG)
            case AttemptOutcome.AUTH_EXPIRED:
                if spent.auth_refreshes and not token_stale:
                    return Decision(Step.FAIL, spent, error_kind=ErrorKind.CONFIG)
                if spent.auth_refreshes >= MAX_AUTH_REFRESHES:
                    return Decision(Step.PARK, spent, error_kind=ErrorKind.TRANSIENT)
                return Decision(Step.RETRY, replace(spent, auth_refreshes=spent.auth_refreshes + 1))
            case AttemptOutcome.RATE_LIMITED:
                delay = self.sleep_for(spent.free_waits + 1, retry_after_s, rng)
                if spent.free_waits >= s.max_rate_limit_waits or delay > s.max_retry_after_s:
                    return Decision(Step.PARK, spent, delay, ErrorKind.TRANSIENT)
                return Decision(Step.RETRY, replace(spent, free_waits=spent.free_waits + 1), delay)
            case _:  # RETRYABLE
                burned = replace(spent, burned=spent.burned + 1)
                delay = self.sleep_for(burned.burned, retry_after_s, rng)
                if burned.burned >= s.max_attempts or delay > s.max_retry_after_s:
                    return Decision(Step.PARK, burned, delay, ErrorKind.TRANSIENT)
                return Decision(Step.RETRY, burned, delay)

    def next_run_delay(self, run_count: int, retry_after_s: float | None = None) -> float:
        """Spacing before a parked row is due again: grows with each run that tried it."""
        s = self.settings
        spacing = min(s.rerun_max_delay_s, s.rerun_base_delay_s * 2 ** max(0, run_count - 1))
        return max(spacing, retry_after_s or 0.0)
