"""The OpenAPI document the TypeScript client is generated from: one operation id per operation, named
``<tag>_<function>`` (openapi-ts makes them ``jobsSubmit``, ...), every operation tagged, every error response a
problem+json, and nothing of the machine (paths) in it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.app import create_app
from orchestrator.api.routing import api_routes
from orchestrator.settings import PROJECT_ROOT, Settings

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return create_app(Settings(home=tmp_path_factory.mktemp("home")), dispatch=False).openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in schema["paths"].items()
            for method, op in item.items() if method in METHODS]


def test_operation_ids_are_unique_and_named_by_tag_and_function(schema: dict[str, Any],
                                                               tmp_path: Path) -> None:
    ops = operations(schema)
    assert len(ops) > 40
    ids = Counter(op["operationId"] for _path, _method, op in ops)
    assert [i for i, n in ids.items() if n > 1] == []
    routes = {(path, m.lower()): r for path, methods, r in api_routes(create_app(Settings(home=tmp_path),
                                                                                   dispatch=False).routes)
              if r.include_in_schema for m in methods}
    for path, method, op in ops:
        route = routes[(path, method)]
        assert op["operationId"] == f"{route.tags[0]}_{route.name}", (path, method)
    found = {(p, m): op["operationId"] for p, m, op in ops}
    assert found[("/v1/jobs", "post")] == "jobs_submit"
    assert found[("/v1/jobs/{job_id}/events", "get")] == "jobs_events"
    assert found[("/v1/artifacts", "post")] == "artifacts_upload"
    assert found[("/v1/batches", "post")] == "batches_create"


def test_every_operation_is_tagged(schema: dict[str, Any]) -> None:
    untagged = [(path, method) for path, method, op in operations(schema) if not op.get("tags")]
    assert untagged == []


def test_every_error_response_is_problem_json(schema: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    wrong = []
    for path, method, op in operations(schema):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert "422" in errors and "500" in errors, (path, method)
        for code, response in errors.items():
            if response.get("content") != {"application/problem+json": {"schema": problem}}:
                wrong.append((path, method, code))
    assert wrong == []
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert {"status", "title", "detail"} <= set(schema["components"]["schemas"]["Problem"]["required"])


def test_the_exported_document_is_stable_and_names_no_machine_path(schema: dict[str, Any]) -> None:
    """scripts/openapi.py: sorted keys, the same text twice, no home or checkout path in it."""
    import runpy

    export = runpy.run_path(str(PROJECT_ROOT / "scripts" / "openapi.py"))["export"]
    text = export()
    assert text == export()
    assert json.loads(text) == json.loads(json.dumps(schema))
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    for machine in (str(PROJECT_ROOT), str(Path.home()), "/tmp/"):
        assert machine not in text
