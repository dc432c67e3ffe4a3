"""Retry policy, and the one outcome of an attempt that ended without a result: retry, fail, wait or cancel
(no I/O). Inference attempts (the executor) and training claims (their expiry) both decide by ``outcome``."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.states import JobState


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_wait_s: float = 60.0

    def delay(self, attempt_number: int) -> float | None:
        """Seconds to wait before the next attempt after ``attempt_number`` failed transiently, or None
        when the attempts are used up. Deterministic failures never come here: they are not retried.
        ``attempt_number`` counts only the attempts that count (not those a dependency of ours ended)."""
        if attempt_number >= self.max_attempts:
            return None
        return min(self.base_delay_s * 2 ** (attempt_number - 1), self.max_delay_s)

    def wait_delay(self, waits: int) -> float:
        """Seconds before looking again after the ``waits``-th wait in a row for a dependency of ours that is
        down (the object store; a database error is left to crash recovery instead): grows from the base delay,
        capped at ``max_wait_s``, never gives up (such a wait spends no attempt)."""
        return min(max(self.base_delay_s, 0.1) * 2 ** min(max(waits, 1) - 1, 30), self.max_wait_s)


@dataclass(frozen=True)
class Outcome:
    """What becomes of a RUNNING job whose attempt ended without a result: QUEUED again, not dispatched
    before ``delay_s`` (then never None); FAILED, its attempts used up; or CANCELLED, as was requested."""

    state: JobState
    delay_s: float | None = None


def outcome(policy: RetryPolicy, *, cancel_requested: bool, spent: int = 0, waits: int | None = None) -> Outcome:
    """The outcome of an attempt that ended without a result (its server or trainer went away, or a dependency
    of ours was down). A requested cancel wins. ``spent``: the job's attempts that count, this one included:
    QUEUED with backoff while attempts are left, else FAILED. ``waits``: the attempt waited for a dependency of
    ours (spends no attempt), the ``waits``-th wait in a row: QUEUED with a growing, capped delay, never FAILED.
    The callers write their own reason texts."""
    if cancel_requested:
        return Outcome(JobState.CANCELLED)
    if waits is not None:
        return Outcome(JobState.QUEUED, policy.wait_delay(waits))
    delay = policy.delay(spent)
    return Outcome(JobState.FAILED) if delay is None else Outcome(JobState.QUEUED, delay)
