"""Retry policy: which failures are worth another attempt, and when (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def delay(self, attempt_number: int) -> float | None:
        """Seconds to wait before the next attempt after ``attempt_number`` failed transiently, or None
        when the attempts are used up. Deterministic failures never come here: they are not retried."""
        if attempt_number >= self.max_attempts:
            return None
        return min(self.base_delay_s * 2 ** (attempt_number - 1), self.max_delay_s)
