"""``medialab audit``: the audit trail, newest first."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.api.schemas import AuditEventOut
from orchestrator.cli.common import JsonOption, console, print_json, session, utc
from orchestrator.core import keys
from orchestrator.db import audit
from orchestrator.db.tables import now


def audit_list(action: Annotated[str | None, typer.Option(help="e.g. job.cancel, or job for every job.*")] = None,
               key: Annotated[str | None, typer.Option(help="A key id or name; @cli: this CLI.")] = None,
               target: Annotated[str | None, typer.Option(help="The id or name acted on.")] = None,
               since: Annotated[str | None, typer.Option(help="ISO date-time, or back from now: 1h, 7d.")] = None,
               limit: int = 50, offset: int = 0,
               as_json: JsonOption = False) -> None:
    """The audit trail, newest first: which key did what (``--json``: as GET /v1/audit)."""
    with session() as s:
        rows = audit.query(s, action=action, key=key, target=target, since=keys.parse_since(since, now()),
                           limit=limit, offset=offset)
    if as_json:
        print_json([AuditEventOut.model_validate(r) for r in rows])
        return
    table = Table("at", "key", "action", "target", "data")
    for r in rows:
        who = f"{r.key_name} ({r.api_key_id[:8]})" if r.api_key_id else audit.CLI
        table.add_row(utc(r.at), who, r.action, escape(r.target), escape(json.dumps(r.data)) if r.data else "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_list)
