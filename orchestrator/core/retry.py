"""Retry policy: which failures are worth another attempt, and when (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


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
