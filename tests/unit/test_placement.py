import json

import pytest

from orchestrator.core.capabilities import Capabilities, Requirements, missing
from orchestrator.core.placement import Candidate, ServerView, fair_order, place, unrunnable_reason
from orchestrator.core.retry import RetryPolicy
from orchestrator.settings import PROJECT_ROOT

CORE = frozenset({"LoadImage", "SaveImage", "UpscaleModelLoader", "ImageUpscaleWithModel"})
UPSCALE = Requirements(CORE, frozenset({("upscale_models", "x4.pth")}))


def server(name: str, *, healthy: bool = True, active: bool = True, nodes: frozenset = CORE,
           models: tuple = ("x4.pth",), inflight: int = 0, warm: frozenset = frozenset()) -> ServerView:
    caps = Capabilities(node_classes=nodes, models={"upscale_models": frozenset(models)})
    return ServerView(name, f"http://{name}", healthy, active, caps, inflight, warm)


def test_only_capable_healthy_active_servers_with_a_free_slot() -> None:
    servers = [server("a", healthy=False), server("b", active=False), server("c", models=()),
               server("d", nodes=CORE - {"SaveImage"}), server("e", inflight=2), server("f")]
    assert place(UPSCALE, servers).id == "f"
    assert place(UPSCALE, servers[:-1]) is None


def test_idle_first_then_warm_then_shortest_queue() -> None:
    warm = frozenset(UPSCALE.models)
    assert place(UPSCALE, [server("a"), server("b", warm=warm)]).id == "b"  # both idle: the warm one
    assert place(UPSCALE, [server("a"), server("b", warm=warm, inflight=1)]).id == "a"  # never leave a GPU idle
    assert place(UPSCALE, [server("a", inflight=1), server("b", warm=warm, inflight=1)]).id == "b"
    assert place(UPSCALE, [server("a", inflight=1), server("b", inflight=0)], max_inflight=3).id == "b"


def test_unrunnable_reason_names_what_each_server_lacks() -> None:
    assert unrunnable_reason(UPSCALE, [server("a", healthy=False)]) is None  # capable, just down now
    reason = unrunnable_reason(UPSCALE, [server("a", models=("other.pth",)), server("b", nodes=frozenset())])
    assert "http://a lacks upscale_models/x4.pth (it has: other.pth)" in reason
    assert "http://b lacks node ImageUpscaleWithModel" in reason
    assert unrunnable_reason(UPSCALE, [server("a", active=False)]) == "no active ComfyUI server is registered"


def test_missing_without_known_capabilities() -> None:
    assert missing(None, UPSCALE) == ["(capabilities not known yet)"]


def test_fair_share_interleaves_keys_within_a_priority() -> None:
    batch = [Candidate(f"a{i}", 0, "alice", i) for i in range(4)]
    late = [Candidate("b0", 0, "bob", 10), Candidate("b1", 0, "bob", 11)]
    order = [c.id for c in fair_order(batch + late, {})]
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3"]
    # bob already has 2 running: alice catches up first
    assert [c.id for c in fair_order(batch[:2] + late, {"bob": 2})][:2] == ["a0", "a1"]


def test_priority_beats_fair_share() -> None:
    urgent = Candidate("u", 5, "alice", 99)
    order = fair_order([Candidate("b", 0, "bob", 1), urgent], {"alice": 10})
    assert [c.id for c in order] == ["u", "b"]


def test_retry_policy_backs_off_and_stops() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay_s=1, max_delay_s=3)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 2, 3, None]
    assert RetryPolicy(max_attempts=1).delay(1) is None


def test_capabilities_from_a_real_object_info_and_back() -> None:
    """From the /object_info of a real 0.3.75 server with both packs (shared/comfy beside the repository)."""
    path = PROJECT_ROOT.parent / "shared" / "comfy" / "object_info-0.3.75.json"
    if not path.exists():
        pytest.skip(f"{path} not found (CI and sessions lay ../shared beside the repository)")
    stats = {"system": {"comfyui_version": "0.3.75"}, "devices": [{"name": "cpu", "vram_total": 100, "vram_free": 50}]}
    caps = Capabilities.from_probe(json.loads(path.read_text()), {"upscale_models": ["x4.pth"]}, stats)
    assert {"RIFE VFI", "IPAdapterAdvanced", "UpscaleModelLoader"} <= caps.node_classes
    assert {"comfyui-frame-interpolation", "ComfyUI_IPAdapter_plus"} <= set(caps.packs)
    assert (caps.comfy_version, caps.device, caps.vram_total) == ("0.3.75", "cpu", 100)
    assert Capabilities.from_json(json.loads(json.dumps(caps.to_json()))) == caps


def test_ip_adapter_preset_files_are_required_by_pattern() -> None:
    from orchestrator.core import templates as tpl
    from orchestrator.runtime import library

    t = tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "restyle-ipadapter", 1)
    graph = tpl.bind(t, {"image": "a.png"})
    req = Requirements.of_graph(graph, tpl.model_refs(graph), tpl.model_patterns(graph))
    caps = Capabilities(node_classes=frozenset(n["class_type"] for n in graph.values()),
                        models={"checkpoints": frozenset({"v1-5-pruned-emaonly.safetensors"}),
                                "ipadapter": frozenset({"ip-adapter_sd15.safetensors"})})
    clip, adapter = missing(caps, req)
    assert adapter.startswith("IP-Adapter PLUS in ipadapter") and "it has: ip-adapter_sd15.safetensors" in adapter
    assert clip.startswith("the ViT-H CLIP vision model in clip_vision") and clip.endswith("it has: none)")
    caps.models["ipadapter"] = frozenset({"ip-adapter-plus_sd15.safetensors"})
    caps.models["clip_vision"] = frozenset({"CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"})
    assert missing(caps, req) == []
    faceid = tpl.bind(tpl.pick(library.scan_library(PROJECT_ROOT / "comfy_workflows"), "blend-faceid", 1), {})
    assert {w for _f, _p, w in tpl.model_patterns(faceid)} == {
        "IP-Adapter FACEID PLUS V2", "a FaceID LoRA", "the ViT-H CLIP vision model", "IP-Adapter PLUS"}
