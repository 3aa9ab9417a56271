"""One place decides whether to retry, one computes the sleep: the seed's policy, to the letter."""

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from impactin_pipelines.connectors.retry import (
    MAX_AUTH_REFRESHES,
    RetryPolicy,
    Spent,
    Step,
    outcome_for_status,
    parse_retry_after,
)
from impactin_pipelines.domain.statuses import AttemptOutcome, ErrorKind
from impactin_pipelines.settings import RetrySettings


@pytest.mark.parametrize("status", [429])
def test_429_is_a_rate_limit(status: int) -> None:
    assert outcome_for_status(status) is AttemptOutcome.RATE_LIMITED


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_these_5xx_are_retryable(status: int) -> None:
    assert outcome_for_status(status) is AttemptOutcome.RETRYABLE


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501, 505, 301])
def test_other_statuses_are_permanent(status: int) -> None:
    assert outcome_for_status(status) is AttemptOutcome.PERMANENT


def test_401_on_an_oauth_provider_means_refresh() -> None:
    assert outcome_for_status(401, oauth=True) is AttemptOutcome.AUTH_EXPIRED
    assert outcome_for_status(200) is AttemptOutcome.SUCCESS and outcome_for_status(201) is AttemptOutcome.SUCCESS


def test_backoff_schedule_is_1_2_4_capped_at_30_with_10_percent_jitter() -> None:
    policy = RetryPolicy(RetrySettings())
    rng = random.Random(1)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (9, 30)]:
        samples = [policy.backoff(attempt, rng) for _ in range(300)]
        assert min(samples) >= base * 0.9 - 1e-9
        assert max(samples) <= base * 1.1 + 1e-9
        assert max(samples) - min(samples) > base * 0.1  # jitter is really applied


def test_backoff_without_jitter_is_exact() -> None:
    policy = RetryPolicy(RetrySettings(jitter=0))
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 30]


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2025, 11, 14, 10, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now) == 42
    assert parse_retry_after(format_datetime(now - timedelta(seconds=42), usegmt=True), now) == 0
    for garbage in (None, "", "soon", "NaN", "inf"):
        assert parse_retry_after(garbage, now) is None


def test_retry_after_overrides_backoff() -> None:
    policy = RetryPolicy(RetrySettings())
    decision = policy.decide(AttemptOutcome.RETRYABLE, retry_after_s=9)
    assert decision.step is Step.RETRY and decision.delay_s == 9


def test_three_transient_failures_park_the_row() -> None:
    policy = RetryPolicy(RetrySettings())
    spent, steps = Spent(), []
    for _ in range(3):
        decision = policy.decide(AttemptOutcome.RETRYABLE, spent)
        steps.append(decision.step)
        spent = decision.spent
    assert steps == [Step.RETRY, Step.RETRY, Step.PARK]
    assert spent == Spent(burned=3), "each retryable failure burns one attempt, the parking one included"


def test_permanent_and_config_fail_at_once() -> None:
    policy = RetryPolicy()
    rejected = policy.decide(AttemptOutcome.PERMANENT)
    config = policy.decide(AttemptOutcome.CONFIG)
    assert (rejected.step, rejected.error_kind) == (Step.FAIL, ErrorKind.REJECTED)
    assert (config.step, config.error_kind) == (Step.FAIL, ErrorKind.CONFIG)


def test_rate_limit_waits_do_not_burn_attempts_but_are_bounded() -> None:
    policy = RetryPolicy(RetrySettings(max_rate_limit_waits=3))
    free = [
        policy.decide(AttemptOutcome.RATE_LIMITED, Spent(burned=1, free_waits=n), retry_after_s=2) for n in range(4)
    ]
    assert [d.step for d in free] == [Step.RETRY, Step.RETRY, Step.RETRY, Step.PARK]
    assert [d.spent for d in free] == [Spent(1, 1), Spent(1, 2), Spent(1, 3), Spent(1, 3)]  # a wait burns nothing
    assert free[0].delay_s == 2


def test_retry_after_beyond_the_cap_parks_instead_of_sleeping() -> None:
    policy = RetryPolicy(RetrySettings(max_retry_after_s=60))
    decision = policy.decide(AttemptOutcome.RATE_LIMITED, retry_after_s=3600)
    assert decision.step is Step.PARK and decision.delay_s == 3600


def test_a_401_refreshes_for_free_and_only_a_current_token_refused_after_a_refresh_is_config() -> None:
    policy = RetryPolicy()

    def decide(refreshes: int, stale: bool):
        return policy.decide(AttemptOutcome.AUTH_EXPIRED, Spent(auth_refreshes=refreshes), token_stale=stale)

    first = decide(0, False)  # a revoked token: fetch a new one
    assert first.step is Step.RETRY and first.spent == Spent(auth_refreshes=1)
    stale = [decide(n, True) for n in range(1, MAX_AUTH_REFRESHES)]  # expired or replaced before the answer
    assert all(d.step is Step.RETRY and d.spent == Spent(auth_refreshes=n + 1) for n, d in enumerate(stale, 1))
    refused = decide(1, False)  # the token fetched after the last 401 was current and was refused too
    assert (refused.step, refused.error_kind) == (Step.FAIL, ErrorKind.CONFIG)
    endless = decide(MAX_AUTH_REFRESHES, True)  # bounded: a later run tries again
    assert (endless.step, endless.error_kind, endless.spent.burned) == (Step.PARK, ErrorKind.TRANSIENT, 0)


def test_run_spacing_grows_and_is_capped() -> None:
    policy = RetryPolicy(RetrySettings(rerun_base_delay_s=60, rerun_max_delay_s=600))
    assert [policy.next_run_delay(n) for n in (1, 2, 3, 4, 5)] == [60, 120, 240, 480, 600]
    assert policy.next_run_delay(1, retry_after_s=900) == 900


def test_retry_settings_come_from_the_environment() -> None:
    settings = RetrySettings.from_env(
        {
            "IMPACTIN_RETRY_MAX_ATTEMPTS": "5",
            "IMPACTIN_RETRY_INITIAL_DELAY_S": "0.5",
            "IMPACTIN_RETRY_MAX_DELAY_S": "10",
        }
    )
    assert (settings.max_attempts, settings.initial_delay_s, settings.max_delay_s) == (5, 0.5, 10)
    with pytest.raises(ValueError, match="IMPACTIN_RETRY_MAX_ATTEMPTS='many'"):
        RetrySettings.from_env({"IMPACTIN_RETRY_MAX_ATTEMPTS": "many"})
