"""Live progress out of sd-scripts' stdout/stderr: tqdm bars redrawn with \\r, epoch and checkpoint lines, errors.

Pure: ``ProgressParser.feed`` takes text chunks as they arrive (cut anywhere) and returns the events they
complete; the last lines and tracebacks are kept for the failure message (``runner.failure_text``).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["progress", "epoch", "checkpoint", "sample", "log"]

# The training bar: "steps:  50%|█████     | 1/2 [00:01<00:01,  1.21s/it, avr_loss=1.09]"
STEPS_BAR = re.compile(
    r"steps:\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?),\s*(?P<rate>[\d.]+|\?)(?P<unit>s/it|it/s)"
    r"(?:,\s*avr_loss=(?P<loss>[-+\d.eE]+|nan|inf))?\]")
# Any tqdm bar (latent caching, sampling, loading...), removed before a line is read as a log line.
ANY_BAR = re.compile(r"(?:[\w .]+:\s*)?\d+%\|[^|]*\|\s*\d+/\d+\s*\[[^\]]*\]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EPOCH = re.compile(r"^epoch (?P<n>\d+)/(?P<total>\d+)$")
CHECKPOINT = re.compile(r"^saving checkpoint: (?P<path>.+\.(?:safetensors|ckpt|pt))$")
SAMPLE = re.compile(r"^generating sample images at step\b.*?:\s*(?P<step>\d+)$")
# Rich console format: "2026-11-24 11:18:14 INFO     message    file.py:26" (the date only when it changes).
RICH = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)?\s*(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+"
                  r"(?P<msg>.*?)(?:\s+[\w.]+\.py:\d+)?$")
PROBLEM = re.compile(r"^(Traceback \(most recent call last\)|\w*(Error|Exception)\b|No data found|"
                     r"RuntimeError|AssertionError|Killed|.*out of memory)", re.IGNORECASE)
CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass(frozen=True)
class TrainingEvent:
    """One thing that happened in a run; which fields are set depends on ``kind``."""

    kind: EventKind
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    rate: float | None = None  # steps per second
    path: str | None = None
    message: str | None = None


def clock_s(text: str) -> float | None:
    """tqdm's "01:02" or "1:02:03" in seconds; None for "?"."""
    if not text or text == "?":
        return None
    secs = 0.0
    for part in text.split(":"):
        secs = secs * 60 + int(part)
    return secs


def progress_event(m: re.Match[str]) -> TrainingEvent:
    rate = None
    if m["rate"] != "?":
        value = float(m["rate"])
        rate = value if m["unit"] == "it/s" else (1 / value if value else None)
    loss = float(m["loss"]) if m["loss"] else None
    return TrainingEvent("progress", step=int(m["step"]), total=int(m["total"]), loss=loss,
                         eta_s=clock_s(m["eta"]), rate=rate)


class ProgressParser:
    """Feed it the text of one or both streams; it returns events and keeps the last lines."""

    def __init__(self, tail_lines: int = 60) -> None:
        self._pending = ""
        self._pending_emitted = ""  # a complete bar at the end of the pending text, already reported
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._tracebacks: list[list[str]] = []
        self._in_traceback = False
        self._message_lines = 0  # tab-indented lines still taken as the exception's message
        self.last_progress: TrainingEvent | None = None
        self.checkpoints: list[str] = []

    def feed(self, chunk: str) -> list[TrainingEvent]:
        """Events completed by this chunk. A bar still being drawn is reported as soon as it is complete."""
        text = self._pending + ANSI.sub("", chunk)
        events: list[TrainingEvent] = []
        start = 0
        for m in re.finditer(r"[\r\n]", text):
            segment = text[start:m.start()]
            already = self._pending_emitted if start == 0 else ""
            events += self._segment(segment, already, line_end=m.group() == "\n")
            start = m.end()
            self._pending_emitted = ""
        self._pending = text[start:]
        if len(self._pending) > 65536:  # no line end for a long while: read what is there
            events += self._segment(self._pending, self._pending_emitted, line_end=True)
            self._pending = self._pending_emitted = ""
        bar = STEPS_BAR.search(self._pending)
        if bar and self._pending.rstrip().endswith("]") and self._pending != self._pending_emitted:
            events += self._bars(self._pending, self._pending_emitted)
            self._pending_emitted = self._pending
        return events

    def close(self) -> list[TrainingEvent]:
        """Read whatever is left when the streams end."""
        events = self._segment(self._pending, self._pending_emitted, line_end=True) if self._pending else []
        self._pending = self._pending_emitted = ""
        return events

    @property
    def tail(self) -> list[str]:
        """The last log lines (tqdm bars left out)."""
        return list(self._tail)

    @property
    def traceback(self) -> list[str]:
        """The last traceback, passing over the accelerate launcher's own CalledProcessError; [] if none."""
        for tb in reversed(self._tracebacks):
            if not tb[-1].startswith("subprocess.CalledProcessError"):
                return tb
        return self._tracebacks[-1] if self._tracebacks else []

    def _bars(self, segment: str, already: str) -> list[TrainingEvent]:
        if segment == already:
            return []
        events = []
        for m in STEPS_BAR.finditer(segment):
            event = progress_event(m)
            if event != self.last_progress:
                events.append(event)
                self.last_progress = event
        return events

    def _segment(self, segment: str, already: str, *, line_end: bool) -> list[TrainingEvent]:
        events = self._bars(segment, already)
        rest = ANY_BAR.sub("\n", segment)
        for raw in rest.split("\n"):
            line = raw.rstrip()
            if line.strip():
                events += self._line(line)
        return events

    def _line(self, line: str) -> list[TrainingEvent]:
        rich = RICH.match(line)
        level = rich["level"] if rich else None
        text = (rich["msg"] if rich else line).strip()
        self._tail.append(line.strip() if not rich else f"{level} {text}")
        self._follow_traceback(line)
        if m := EPOCH.match(text):
            return [TrainingEvent("epoch", step=int(m["n"]), total=int(m["total"]), message=text)]
        if m := CHECKPOINT.match(text):
            self.checkpoints.append(m["path"])
            return [TrainingEvent("checkpoint", path=m["path"], message=text)]
        if m := SAMPLE.match(text):
            return [TrainingEvent("sample", step=int(m["step"]), message=text)]
        if level in ("WARNING", "ERROR", "CRITICAL") or PROBLEM.match(text):
            return [TrainingEvent("log", message=f"{level}: {text}" if level else text)]
        return []

    def _follow_traceback(self, line: str) -> None:
        """Collect tracebacks: indented frames up to the unindented exception line; chained ones stay together."""
        chained = bool(self._tracebacks) and self._tracebacks[-1][-1].startswith(CHAIN)
        if line.startswith("Traceback (most recent call last)"):
            if chained:
                self._tracebacks[-1].append(line)
            else:
                self._tracebacks.append([line])
            self._in_traceback = True
        elif self._in_traceback:
            self._tracebacks[-1].append(line)
            self._in_traceback = line.startswith((" ", "\t"))
            self._message_lines = 0 if self._in_traceback else 10
        elif self._message_lines and line.startswith("\t"):  # the exception's message goes on (tab-indented)
            self._tracebacks[-1].append(line)
            self._message_lines -= 1
        elif self._tracebacks and line.startswith(CHAIN) and not chained:
            self._tracebacks[-1].append(line)
        if not line.startswith("\t") and not self._in_traceback and self._tracebacks \
                and self._tracebacks[-1][-1] != line:
            self._message_lines = 0
