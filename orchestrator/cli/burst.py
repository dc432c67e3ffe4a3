"""``medialab burst``: the burst policy, the budgets and what was spent, and the burst servers, as the running
service sees them (GET /v1/burst: the policy and caps are the service's settings, not the CLI's)."""

from __future__ import annotations

import typer
from rich.table import Table

from orchestrator.cli.batch import ProfileOption
from orchestrator.cli.common import JsonOption, console, fail, print_json
from orchestrator.cli.remote import Remote
from orchestrator.core.errors import MediaLabError
from orchestrator.settings import get_settings


def _money(value: float | None) -> str:
    return "no cap" if value is None else f"{value:.4f}"


def burst(as_json: JsonOption = False, profile: ProfileOption = None) -> None:
    """Which templates may burst to a provider and when, the budgets (cap, spent, left for the UTC day and
    month, and this key's day; running burst attempts count at their estimate) and each burst server's load and
    spend, from the running service."""
    try:
        with Remote.connect(get_settings(), profile) as remote:
            out = remote.request("GET", "/v1/burst").json()
    except MediaLabError as exc:
        fail(exc)
    if as_json:
        print_json(out)
        return
    policy = out["policy"]
    templates = ", ".join(policy["templates"]) or "none (MEDIALAB_BURST_TEMPLATES is empty: nothing bursts)"
    console.print(f"templates that may burst: {templates}")
    waits = ", ".join(f"{t} {w:g}s" for t, w in sorted(policy["template_wait_s"].items()))
    console.print(f"bursts after a local wait of {policy['wait_s']:g}s" + (f" ({waits})" if waits else "")
                  + f"; priority {policy['urgent_priority']}+ after {policy['urgent_wait_s']:g}s")
    budgets = Table("budget", "cap", "spent", "left")
    for window, label in (("day", f"day (from {out['day_start'][:10]} UTC)"),
                          ("month", f"month (from {out['month_start'][:10]})"), ("key_day", "this API key, day")):
        b = out["budgets"][window]
        budgets.add_row(label, _money(b["cap"]), _money(b["spent"]), _money(b["left"]))
    console.print(budgets)
    if not out["servers"]:
        console.print("no burst servers (tier 1 and up): `medialab servers add URL --kind comfy_api_v2 --tier 1 ...`")
        return
    table = Table("server", "kind", "tier", "state", "health", "inflight", "cost/GPU-s", "cold start", "spent day",
                  "spent month", "jobs today")
    for srv in out["servers"]:
        table.add_row(srv["name"], srv["kind"], str(srv["tier"]), srv["state"],
                      "[green]healthy[/]" if srv["healthy"] else "[red]down[/]",
                      f"{srv['inflight']}/{srv['max_inflight']}", f"{srv['cost_per_gpu_s']:g}",
                      f"{srv['cold_start_s']:g}s", _money(srv["spent_day"]), _money(srv["spent_month"]),
                      str(srv["jobs_day"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("burst")(burst)
