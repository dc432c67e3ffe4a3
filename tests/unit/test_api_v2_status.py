"""``ApiV2Provider.status`` believes "expired" only when a second read says so: comfy-api-proxy 0.1.6 answers
"expired" for an instant when a job moves from ComfyUI's queue to its history (CI saw it once). A fake API v2
behind the client's transport stands in for the proxy here; tests/integration/test_remote_adapters.py runs the
real one."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.comfy import api_v2
from orchestrator.comfy.api_v2 import ApiV2Provider
from orchestrator.comfy.provider import RemoteState


def provider(answers: list[str]) -> tuple[ApiV2Provider, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        return httpx.Response(200, json={"id": "j1", "status": status, "outputs": []})

    return ApiV2Provider("http://v2.test", token="v2-secret-token", transport=httpx.MockTransport(handler)), seen


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_v2, "EXPIRED_RECHECK_S", 0.0)


def test_a_passing_expired_is_read_again() -> None:
    v2, seen = provider(["expired", "succeeded"])
    assert v2.status("j1").state is RemoteState.succeeded
    assert seen == ["/api/v2/jobs/j1", "/api/v2/jobs/j1"]


def test_an_expired_read_twice_is_the_end() -> None:
    v2, seen = provider(["expired"])
    status = v2.status("j1")
    assert status.state is RemoteState.failed
    assert status.error is not None and status.error.startswith("expired before it ran")
    assert len(seen) == 2


def test_other_states_are_read_once() -> None:
    v2, seen = provider(["running"])
    assert v2.status("j1").state is RemoteState.running
    assert len(seen) == 1
