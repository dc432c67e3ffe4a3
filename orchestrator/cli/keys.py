"""``medialab keys``: create, list, revoke and rotate API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from orchestrator.api.routes.keys import key_out
from orchestrator.app import keys as key_app
from orchestrator.cli.common import JsonOption, console, print_json, session, utc
from orchestrator.core import keys
from orchestrator.db import keys as key_db
from orchestrator.db.tables import now
from orchestrator.settings import get_settings

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)

EXPIRES_HELP = "Expiry: 30d, 12h, 90m, 2w, an ISO date or date-time (UTC), or never."


@keys_app.command("create")
def keys_create(role: Annotated[list[str], typer.Option("--role", "-r", help="admin, run, publish, export, train")],
                name: str = "cli",
                expires: Annotated[str | None, typer.Option(help=EXPIRES_HELP)] = None) -> None:
    """Create an API key with the given roles; the key is printed once."""
    with session() as s:
        row, plain = key_app.create_key(s, name, role, expires, max_name_length=get_settings().max_name_length)
    until = f" expires {utc(row.expires_at)} UTC" if row.expires_at else ""
    console.print(f"key '{row.name}' ({row.id}) roles {','.join(row.roles)}{until}: [bold]{plain}[/bold]",
                  soft_wrap=True)


@keys_app.command("list")
def keys_list(all_: Annotated[bool, typer.Option("--all", help="Also revoked keys.")] = False,
              as_json: JsonOption = False) -> None:
    """Every key with its roles, state, expiry and last use (never a secret nor a hash); ``--json``: as
    GET /v1/keys."""
    with session() as s:
        rows = key_db.list_keys(s, include_revoked=all_)
    if as_json:
        print_json([key_out(r) for r in rows])
        return
    table = Table("id", "name", "roles", "state", "created", "expires", "last used", "revoked")
    for r in rows:
        table.add_row(r.id, r.name, ",".join(r.roles), keys.key_state(r, now()), utc(r.created_at),
                      utc(r.expires_at) or "never", utc(r.last_used_at) or "never", utc(r.revoked_at))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's name, id or id prefix (4+ characters).")]) -> None:
    """Revoke a key now (the last admin key cannot be revoked)."""
    with session() as s:
        row = key_app.revoke_key(s, key)
    console.print(f"key '{row.name}' ({row.id}) revoked")


@keys_app.command("rotate")
def keys_rotate(key: Annotated[str, typer.Argument(help="The key's name, id or id prefix (4+ characters).")],
                grace: Annotated[str | None, typer.Option(help="Keep the old key usable this long (e.g. 1h, at "
                                                               "most 7d); default: revoked at once.")] = None,
                expires: Annotated[str | None, typer.Option(help=EXPIRES_HELP + " Default: the old key's.")] = None,
                ) -> None:
    """A new secret for a key: same name, roles and expiry; the old one is revoked (after --grace)."""
    with session() as s:
        new, plain, old = key_app.rotate_key(s, key, grace, keys.KEEP if expires is None else expires)
    when = "now" if old.revoked_at and old.revoked_at <= now() else f"at {utc(old.revoked_at)} UTC"
    console.print(f"key '{old.name}' ({old.id}) revoked {when}; new key ({new.id}) roles {','.join(new.roles)}: "
                  f"[bold]{plain}[/bold]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
