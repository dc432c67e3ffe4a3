"""The one outcome of an attempt that ended without a result (inference attempts and training claims)."""

from __future__ import annotations

import pytest

from orchestrator.core.retry import Outcome, RetryPolicy, outcome
from orchestrator.core.states import JobState

POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=30.0, max_wait_s=60.0)


@pytest.mark.parametrize(("spent", "expected"), [
    (1, Outcome(JobState.QUEUED, 1.0)), (2, Outcome(JobState.QUEUED, 2.0)),
    (3, Outcome(JobState.FAILED)), (7, Outcome(JobState.FAILED))])
def test_a_counted_attempt_is_retried_with_backoff_until_the_attempts_are_used_up(spent: int,
                                                                                  expected: Outcome) -> None:
    assert outcome(POLICY, cancel_requested=False, spent=spent) == expected


def test_the_retry_delay_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=3.0)
    assert [outcome(policy, cancel_requested=False, spent=n).delay_s for n in (1, 2, 3, 4, 9)] == [1, 2, 3, 3, 3]
    assert outcome(policy, cancel_requested=False, spent=10) == Outcome(JobState.FAILED)


@pytest.mark.parametrize(("waits", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (10_000, 60.0)])
def test_a_wait_for_a_dependency_backs_off_and_never_fails(waits: int, delay: float) -> None:
    assert outcome(POLICY, cancel_requested=False, waits=waits) == Outcome(JobState.QUEUED, delay)
    # the attempts that count do not matter: a wait spends none
    assert outcome(POLICY, cancel_requested=False, spent=99, waits=waits) == Outcome(JobState.QUEUED, delay)


@pytest.mark.parametrize(("spent", "waits"), [(1, None), (3, None), (99, None), (0, 1), (5, 100)])
def test_a_requested_cancel_wins(spent: int, waits: int | None) -> None:
    assert outcome(POLICY, cancel_requested=True, spent=spent, waits=waits) == Outcome(JobState.CANCELLED, None)


def test_a_single_attempt_policy_never_retries() -> None:
    assert outcome(RetryPolicy(max_attempts=1), cancel_requested=False, spent=1) == Outcome(JobState.FAILED)
