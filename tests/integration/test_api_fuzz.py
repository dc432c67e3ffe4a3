"""A property test over the whole OpenAPI document (schemathesis + hypothesis) with a valid admin key, against
the real app on a real ComfyUI: no 5xx, every status, content type and body as documented.

Bounded in time: a few examples per operation (MEDIALAB_FUZZ_EXAMPLES, default 20), the same ones every run
unless MEDIALAB_FUZZ_RANDOM=1 (hypothesis' derandomize: CI stays stable; run it randomised to look further).
Registering servers is left out: it probes the URL it is given, and test traffic may only go to this
machine's own services.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.app import keys as key_app
from orchestrator.settings import Settings
from tests.integration.conftest import make_api

EXAMPLES = int(os.environ.get("MEDIALAB_FUZZ_EXAMPLES", "20"))
RANDOM = os.environ.get("MEDIALAB_FUZZ_RANDOM") == "1"  # new examples each run
NETWORK = {("POST", "/v1/servers"), ("POST", "/v1/servers/{ref}/refresh")}  # they probe the URL given


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, comfy_url: str) -> Iterator[tuple[object, str]]:
    from tests.conftest import PROJECT_ROOT

    home = tmp_path_factory.mktemp("fuzz")
    st = Settings(home=home / "home", templates_dir=PROJECT_ROOT / "comfy_workflows", event_timeout_s=5.0,
                  comfy_servers=[comfy_url])
    with make_api(st, dispatch=False) as api, api.client.app.state.ctx.db.session() as s:
        _row, key = key_app.create_key(s, "fuzz", ["admin"])
        yield api.client.app, key


def test_no_5xx_and_every_answer_as_documented(fuzz_target: tuple[object, str]) -> None:
    """Each operation in turn, ``EXAMPLES`` generated requests each; every failure is collected and shown."""
    app, key = fuzz_target
    api_schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NETWORK:
            continue
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=not RANDOM)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"X-API-Key": key}, checks=checks)

        try:
            check()
        except Exception as exc:  # noqa: BLE001  (every operation runs; all failures are reported together)
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert operations > 40
    assert not failures, "\n\n".join(failures)
