"""Bounded inputs: the checks every request body, query and upload passes before any work is done.

Pure functions (no I/O) over values and the limits of ``Settings`` (``max_*``). Each refusal names the limit
(the setting, or the fixed bound) and its value, in the message and in the problem's ``limit``/``value``
fields: counts and lengths are 422 (InvalidInput), sizes of payloads 413 (TooLarge, see ``media.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

# The one control-character rule (C0, DEL, C1) is custom_nodes/urls.py's; re-exported for the API's checks.
from custom_nodes.urls import CONTROL as CONTROL
from custom_nodes.urls import CONTROL_CHARS as CONTROL_CHARS
from orchestrator.core.errors import InvalidInput


class Settings(Protocol):
    """The limits this module reads of ``orchestrator.settings.Settings`` (``Limit.setting`` reads any ``max_*``)."""

    max_name_length: int
    max_params: int
    max_tags: int
    max_timeout_s: float

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the database stores in an integer column
MAX_OFFSET = 10**9  # offset= of every listing (jobs, artifacts, the audit trail)
PRIORITY_RANGE = (-100, 100)  # a job's priority: every path that queues one, and the API's schemas
MAX_QUERY_LENGTH = 256  # a free-text filter of a listing (ids, names, tags)
MAX_PATH_LENGTH = 1024  # a model or checkpoint file name with its subfolders
MAX_DEPTH = 32  # nesting of a JSON value (params, options, errors) below the body's own structure


class Limit(NamedTuple):
    """A bound and the limit it comes from, as a refusal names it: a setting (``max_params``) or a fixed
    bound (``limits.MAX_QUERY_LENGTH``)."""

    name: str
    value: int

    @classmethod
    def setting(cls, settings: Settings, name: str) -> Limit:
        return cls(name, getattr(settings, name))


def refuse(message: str, limit: str, value: int | float, **extra: Any) -> InvalidInput:
    """The 422 error of a count or length over its limit."""
    return InvalidInput(message, limit=limit, value=value, **extra)


def check_name(value: str, what: str, max_length: int, limit: str = "max_name_length", *,
               pattern: re.Pattern[str] | None = None, rule: str = "") -> str:
    """The one rule for names (template, server, key, dataset, trigger, tag, LoRA): at most ``max_length``
    characters (the limit ``limit``), no control characters and, where a kind of name has a ``pattern`` (key
    names, registry names), matching it (``rule``: the pattern in words, for the refusal); returns it unchanged."""
    if len(value) > max_length:
        raise refuse(f"{what} is {len(value)} characters long, over the limit {limit}={max_length}", limit,
                     max_length)
    if CONTROL.search(value):
        raise InvalidInput(f"{what} {_show(value)} holds a control character (names are printable text)")
    if pattern is not None and not pattern.match(value):
        raise InvalidInput(f"{what} {_show(value)}: {rule or f'it must match {pattern.pattern}'}")
    return value


def check_count(count: int, what: str, limit: str, max_count: int) -> None:
    if count > max_count:
        raise refuse(f"{count} {what}, over the limit {limit}={max_count}", limit, max_count)


def check_tags(tags: Iterable[str], settings: Settings) -> list[str]:
    """Tags of an upload: stripped, empty ones dropped, at most ``max_tags``, each a name."""
    clean = sorted({t.strip() for t in tags if t.strip()})
    check_count(len(clean), "tags", "max_tags", settings.max_tags)
    for tag in clean:
        check_name(tag, f"tag {_show(tag)}", settings.max_name_length)
    return clean


def check_timeout(timeout_s: float | None, settings: Settings) -> None:
    """``timeout_s`` of a job: finite, positive, at most ``max_timeout_s``."""
    if timeout_s is None:
        return
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise InvalidInput(f"timeout_s must be a finite number of seconds above 0, not {timeout_s!r}")
    if timeout_s > settings.max_timeout_s:
        raise refuse(f"timeout_s={timeout_s:g} is over the limit max_timeout_s={settings.max_timeout_s:g}",
                     "max_timeout_s", settings.max_timeout_s)


def check_json(value: Any, where: str, *, max_string: Limit | None = None, max_items: Limit | None = None,
               max_key: Limit | None = None, depth: int = 0) -> None:
    """A JSON value from a request: finite numbers, integers within 64 bits, strings without NUL, nested at
    most ``MAX_DEPTH`` deep; with the optional bounds, strings of at most ``max_string`` characters, objects
    and lists of at most ``max_items`` entries, keys of at most ``max_key`` characters, each refused naming
    its own limit (``check_values``: the settings). What the database and a JSON answer cannot hold (NaN,
    infinity, 2^64, NUL) never gets stored."""
    if depth > MAX_DEPTH:
        raise refuse(f"{where} is nested over {MAX_DEPTH} levels deep", "max_depth", MAX_DEPTH)
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise refuse(f"{where}: the integer {_digits(value)} is outside the 64-bit range "
                         f"[{INT64_MIN}, {INT64_MAX}]", "int64", INT64_MAX)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {value!r} is not a finite number", limit="finite_numbers", value=0)
    elif isinstance(value, str):
        if max_string is not None and len(value) > max_string.value:
            raise refuse(f"{where} is {len(value)} characters long, over the limit {max_string.name}="
                         f"{max_string.value}", max_string.name, max_string.value)
        if "\x00" in value:
            raise InvalidInput(f"{where} holds a NUL character")
    elif isinstance(value, dict | list | tuple):
        if max_items is not None:
            check_count(len(value), f"entries in {where}", max_items.name, max_items.value)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        bounds = {"max_string": max_string, "max_items": max_items, "max_key": max_key}
        for k, v in items:
            if isinstance(value, dict):
                if max_key is not None:
                    check_name(str(k), f"a key of {where}", max_key.value, max_key.name)
                elif "\x00" in str(k):
                    raise InvalidInput(f"a key of {where} holds a NUL character")
            check_json(v, f"{where}.{k}" if isinstance(value, dict) else f"{where}[{k}]", **bounds, depth=depth + 1)


def check_values(value: Any, where: str, settings: Settings) -> None:
    """A request's values (parameters, training options, a trainer's events or error) within every limit:
    ``check_json`` with ``max_string_length``, ``max_params`` and ``max_name_length``."""
    check_json(value, where, max_string=Limit.setting(settings, "max_string_length"),
               max_items=Limit.setting(settings, "max_params"), max_key=Limit.setting(settings, "max_name_length"))


def check_params(params: dict[str, Any], settings: Settings, what: str = "parameters") -> None:
    """The parameters of a job (or options of a training): at most ``max_params``, each value bounded."""
    check_count(len(params), what, "max_params", settings.max_params)
    check_values(params, what, settings)


def _show(value: str, n: int = 40) -> str:
    """A value for a message: repr, cut to ``n`` characters (a refused value may be megabytes long)."""
    return repr(value[:n]) + ("..." if len(value) > n else "")


def _digits(value: int) -> str:
    """An integer for a message: its digits, or its size when it has too many to print."""
    return str(value) if value.bit_length() <= 100 else f"of {value.bit_length()} bits"
