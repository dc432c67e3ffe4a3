"""The database layer never ends a transaction: no function in ``orchestrator/db`` or ``orchestrator/training/db``
calls ``.commit()`` or ``.rollback()``. Whoever owns the transaction (a use case in ``orchestrator/app``, a
runtime loop, the composition root) commits it, or rolls it back. The faces (API routes, CLI commands) do not
either: they call a use case."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB_FOLDERS = (ROOT / "orchestrator" / "db", ROOT / "orchestrator" / "training" / "db")
FACES = (ROOT / "orchestrator" / "api", ROOT / "orchestrator" / "cli")  # thin: they call the use cases
ENDS = frozenset({"commit", "rollback"})


def transaction_ends(source: str) -> list[tuple[str, int, str]]:
    """(function, line, method) for each ``x.commit(...)`` / ``x.rollback(...)`` call in ``source``."""
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else where
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in ENDS):
                found.append((where, child.lineno, child.func.attr))
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def test_the_check_finds_a_commit_and_a_rollback() -> None:
    source = ("def f(session):\n    session.commit()\n\n"
              "class C:\n    def g(self, s):\n        if s:\n            s.rollback()\n")
    assert transaction_ends(source) == [("f", 2, "commit"), ("g", 7, "rollback")]
    assert transaction_ends("def f(session):\n    session.add(1)\n    session.flush()\n") == []


def test_no_database_function_commits_or_rolls_back() -> None:
    files = sorted(p for folder in DB_FOLDERS for p in folder.rglob("*.py"))
    assert any(p.name == "jobs.py" for p in files) and any(p.name == "leases.py" for p in files)
    offenders = [f"{p.relative_to(ROOT)}:{line} {where}() calls .{method}()"
                 for p in files for where, line, method in transaction_ends(p.read_text(encoding="utf-8"))]
    assert offenders == [], "the database layer never commits; the caller owns the transaction:\n" + "\n".join(
        offenders)


def test_faces_leave_transactions_to_the_use_cases() -> None:
    """Routes and CLI commands call a use case (``orchestrator/app``) that owns the commit; none commits."""
    files = sorted(p for folder in FACES for p in folder.rglob("*.py"))
    assert any(p.name == "servers.py" and p.parent.name == "routes" for p in files)
    offenders = [f"{p.relative_to(ROOT)}:{line} {where}() calls .{method}()"
                 for p in files for where, line, method in transaction_ends(p.read_text(encoding="utf-8"))]
    assert offenders == [], "a face calls a use case, which owns the transaction:\n" + "\n".join(offenders)
