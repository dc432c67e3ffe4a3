"""The editor panel's server side (custom_nodes/editor.py): which orchestrator may be signed in to, the paths sent
on, the same-origin rule, the key blanked out, a sign-in per browser and its end (no ComfyUI needed: pure rules
and the Link)."""

from __future__ import annotations

import asyncio

import pytest

from custom_nodes import editor


def test_only_the_listed_orchestrators_and_only_as_origins() -> None:
    allowed = editor.allowed_orchestrators({editor.ENV: "http://10.0.0.5:8000/, https://ML.example.com"})
    assert allowed == ["http://10.0.0.5:8000", "https://ml.example.com:443"]
    assert editor.orchestrator_origin("http://10.0.0.5:8000", allowed) == "http://10.0.0.5:8000"
    assert editor.orchestrator_origin("https://ml.example.com/", allowed) == "https://ml.example.com:443"
    for url, status, says in (("http://10.0.0.5:8001", 403, "is not an orchestrator this ComfyUI server"),
                              ("http://169.254.169.254", 403, "is not an orchestrator"),
                              ("http://10.0.0.5:8000/v1/keys", 422, "not an orchestrator URL"),
                              ("http://user:pw@10.0.0.5:8000", 422, "not an orchestrator URL"),
                              ("file:///etc/passwd", 422, "not an orchestrator URL"),
                              ("http://10.0.0.5:8000?x=1", 422, "not an orchestrator URL")):
        with pytest.raises(editor.EditorError) as caught:
            editor.orchestrator_origin(url, allowed)
        assert (caught.value.status, says in caught.value.message) == (status, True), (url, caught.value.message)
    with pytest.raises(editor.EditorError) as caught:
        editor.orchestrator_origin("http://10.0.0.5:8000", editor.allowed_orchestrators({}))
    assert caught.value.status == 403 and editor.ENV in caught.value.message
    with pytest.raises(editor.EditorError) as caught:
        editor.allowed_orchestrators({editor.ENV: "http://a:1/path"})
    assert caught.value.status == 500 and editor.ENV in caught.value.message


def test_template_paths_are_built_from_checked_parts_only() -> None:
    assert editor.template_path("upscale-esrgan") == "/v1/templates/upscale-esrgan"
    assert editor.template_path("a1", "007") == "/v1/templates/a1/versions/7"
    for name, version in (("../keys", None), ("A", None), ("a/b", None), ("a", "0"), ("a", "-1"), ("a", "1e3"),
                          ("a", "²"), ("a", "99999999999"), ("a%2f", None)):
        with pytest.raises(editor.EditorError) as caught:
            editor.template_path(name, version)
        assert caught.value.status == 422


def test_same_origin_and_blanking() -> None:
    assert editor.same_origin(None, "127.0.0.1:8188")  # curl sends no Origin
    assert editor.same_origin("http://127.0.0.1:8188", "127.0.0.1:8188")
    assert not editor.same_origin("http://evil.example", "127.0.0.1:8188")
    assert not editor.same_origin("null", "127.0.0.1:8188")
    assert not editor.same_origin("http://127.0.0.1:8188", None)
    assert editor.blank('{"detail": "key mlk_abc refused"}', "mlk_abc") == '{"detail": "key *** refused"}'


def test_a_sign_in_is_one_browser_s_and_ends_after_its_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {editor.ENV: "http://127.0.0.1:9", editor.HOURS_ENV: "2"}
    link = editor.Link(env, most=3)
    assert link.state(None) == {"signed_in": False, "orchestrators": ["http://127.0.0.1:9"]}

    async def me(origin: str, key: str, method: str, path: str, body: object = None) -> tuple[int, object]:
        assert (origin, method, path) == ("http://127.0.0.1:9", "GET", "/v1/me")
        return (200, {"name": "artist", "roles": ["publish"], "can_publish": True}) if key.startswith("mlk_good") \
            else (401, {"detail": "unknown API key"})

    monkeypatch.setattr(editor, "call", me)
    with pytest.raises(editor.EditorError) as caught:
        asyncio.run(link.sign_in("http://127.0.0.1:9", "mlk_bad"))
    assert caught.value.status == 401 and "unknown API key" in caught.value.message and not link.sessions
    for bad in ("", " ", "k" * 600, "ключ", "mlk_\x00"):
        with pytest.raises(editor.EditorError):
            asyncio.run(link.sign_in("http://127.0.0.1:9", bad))
    now = [1000.0]
    monkeypatch.setattr(editor.time, "monotonic", lambda: now[0])
    sid, state = asyncio.run(link.sign_in("http://127.0.0.1:9", "mlk_good"))
    assert state["signed_in"] and state["ends_in_s"] == 7200 and "mlk_good" not in repr(state) and "mlk" not in sid
    assert link.state(sid)["signed_in"] and not link.state(None)["signed_in"] and not link.state("forged")["signed_in"]
    again, _ = asyncio.run(link.sign_in("http://127.0.0.1:9", "mlk_good2", sid))  # signing in again replaces it
    assert again != sid and not link.state(sid)["signed_in"] and list(link.sessions) == [again]
    others = [asyncio.run(link.sign_in("http://127.0.0.1:9", f"mlk_good{i}"))[0] for i in range(3)]
    assert len(link.sessions) == 3 and again not in link.sessions and others[-1] in link.sessions  # the oldest left
    async def revoked(origin: str, key: str, method: str, path: str, body: object = None) -> tuple[int, object]:
        return 401, {"detail": f"key {key} revoked"}

    monkeypatch.setattr(editor, "call", revoked)
    with pytest.raises(editor.EditorError) as caught:
        asyncio.run(link.forward(others[0], "GET", "/v1/templates"))
    assert "sign in again" in caught.value.message and "mlk_good0" not in caught.value.message
    assert others[0] not in link.sessions  # a key the orchestrator no longer takes ends its sign-in
    now[0] += 7199
    assert link.state(others[-1])["signed_in"]
    now[0] += 1
    assert link.state(others[-1])["signed_in"] is False and not link.sessions
    with pytest.raises(editor.EditorError) as caught:
        asyncio.run(link.forward(others[-1], "GET", "/v1/templates"))
    assert caught.value.status == 401 and caught.value.message == editor.NOT_SIGNED_IN
    with pytest.raises(editor.EditorError):
        editor.signin_hours({editor.HOURS_ENV: "0"})
