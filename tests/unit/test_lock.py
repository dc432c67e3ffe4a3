"""The worker lock: parsing, comparing a server with it, and the placement rule it adds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from custom_nodes.packs import git_commit, git_remote, installed_packs
from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.errors import InvalidInput
from orchestrator.core.lock import check_server, commits_match, lock_mismatch, parse_lock
from orchestrator.core.placement import ServerView, place, unrunnable_reason
from orchestrator.runtime.worker_lock import DEFAULT_LOCK, load_lock
from orchestrator.settings import PROJECT_ROOT

RIFE = "26545cc2dd95bc3d27f056016300673bdeee78f5"
IPA = "9d076a3df0d2763cef5510ec5ab807f6632c39f5"
SHA = "a" * 64


def small_lock(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "comfyui": {"version": "0.3.75"},
        "pack": [
            {"name": "ComfyUI-Frame-Interpolation", "git": "https://github.com/Fannovel16/ComfyUI-Frame-Interpolation",
             "commit": RIFE, "node_classes": ["RIFE VFI", "FILM VFI"]},
            {"name": "ComfyUI_IPAdapter_plus", "git": "https://github.com/cubiq/ComfyUI_IPAdapter_plus",
             "commit": IPA, "node_classes": ["IPAdapterAdvanced", "IPAdapterUnifiedLoader"]},
            {"name": "medialab", "path": "custom_nodes", "version": "0.1.0", "node_classes": ["MediaLabSaveImage"]},
        ],
        "python": [{"name": "insightface", "version": "2.1"}],
        "model": [
            {"name": "x4.pth", "folder": "upscale_models", "url": "https://example.invalid/x4.pth", "sha256": SHA},
            {"name": "rife47.pth", "folder": "ckpts/rife", "pack": "ComfyUI-Frame-Interpolation",
             "url": "https://example.invalid/rife47.pth"},
            {"name": "buffalo_l", "folder": "insightface/models", "archive": "zip",
             "url": "https://example.invalid/buffalo_l.zip"},
        ],
    }
    data.update(over)
    return data


def caps(*, version: str = "0.3.75", nodes: tuple[str, ...] = ("RIFE VFI", "FILM VFI", "IPAdapterAdvanced",
                                                                  "IPAdapterUnifiedLoader", "MediaLabSaveImage",
                                                                  "KSampler"),
         models: dict[str, list[str]] | None = None, packs: list[dict[str, Any]] | None = None,
         python: dict[str, str] | None = None, info: bool = True) -> Capabilities:
    if packs is None:
        packs = [
            {"name": "comfyui-frame-interpolation", "commit": RIFE, "files": ["ckpts/rife/rife47.pth"],
             "remote": "https://github.com/Fannovel16/ComfyUI-Frame-Interpolation.git"},
            {"name": "ComfyUI_IPAdapter_plus", "commit": IPA, "remote": None, "files": []},
            {"name": "medialab", "commit": None, "remote": None, "files": []},
        ]
    pack = {"pack": "medialab", "version": "0.1.0", "custom_nodes": packs,
            "python_packages": python if python is not None else {"insightface": "2.1"}} if info else None
    return Capabilities(node_classes=frozenset(nodes),
                        models={f: frozenset(v) for f, v in (models or {"upscale_models": ["x4.pth"]}).items()},
                        packs=("ComfyUI_IPAdapter_plus", "comfyui-frame-interpolation", "medialab"),
                        comfy_version=version, pack=pack)


# -- parsing ------------------------------------------------------------------------------------------------
def test_the_repository_lock_parses_and_pins_what_the_templates_use() -> None:
    lock = load_lock(DEFAULT_LOCK)
    assert lock.comfyui.version == "0.3.75"
    packs = {p.name: p for p in lock.packs}
    rife, ipa = packs["ComfyUI-Frame-Interpolation"], packs["ComfyUI_IPAdapter_plus"]
    assert rife.commit == RIFE and "RIFE VFI" in rife.node_classes
    assert ipa.commit == IPA and "IPAdapterUnifiedLoader" in ipa.node_classes
    assert packs["medialab"].path == "custom_nodes"
    import custom_nodes

    assert set(packs["medialab"].node_classes) == set(custom_nodes.NODE_CLASS_MAPPINGS)
    assert packs["medialab"].version == custom_nodes.PACK_VERSION
    assert {p.name for p in lock.python} == {"insightface", "onnxruntime"}
    refs = {m.ref for m in lock.models}
    for ref in ("upscale_models/RealESRGAN_x4plus.pth", "ComfyUI-Frame-Interpolation/ckpts/rife/rife47.pth",
                "checkpoints/v1-5-pruned-emaonly.safetensors", "checkpoints/sd_xl_base_1.0.safetensors",
                "ipadapter/ip-adapter-plus_sd15.safetensors", "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                "ipadapter/ip-adapter-faceid-plusv2_sd15.bin", "insightface/models/buffalo_l"):
        assert ref in refs
    # every model default and every node class of the packaged templates is covered by the lock
    node_classes = {c for p in lock.packs for c in p.node_classes}
    names = {m.name for m in lock.models}
    for graph in (PROJECT_ROOT / "comfy_workflows").glob("*/v*/graph.json"):
        for node in json.loads(graph.read_text()).values():
            if node["class_type"] in ("RIFE VFI",) or node["class_type"].startswith("IPAdapter"):
                assert node["class_type"] in node_classes, graph
            for key in ("model_name", "ckpt_name"):
                value = node["inputs"].get(key)
                if isinstance(value, str) and not value.startswith("tiny"):
                    assert value in names, f"{graph}: {value} is not in the lock"


def test_unknown_hashes_are_empty_never_invented() -> None:
    lock = load_lock(DEFAULT_LOCK)
    for m in lock.models:
        assert m.sha256 == "" or len(m.sha256) == 64
    assert next(m for m in lock.models if m.name == "v1-5-pruned-emaonly.safetensors").sha256.startswith("6ce0161689")


@pytest.mark.parametrize("change, message", [
    ({"comfyui": {}}, "comfyui.version"),
    ({"pack": [{"name": "x", "git": "https://x", "node_classes": []}]}, "pins no commit"),
    ({"pack": [{"name": "x", "git": "https://x", "commit": "zzzzzzz"}]}, "not a git commit"),
    ({"pack": [{"name": "x", "path": "p", "git": "https://x", "commit": RIFE}]}, "exactly one of git"),
    ({"model": [{"name": "a", "folder": "f", "url": "u", "sha256": "abc"}]}, "not a sha256"),
    ({"model": [{"name": "a", "folder": "f", "url": "u", "pack": "nope"}]}, "does not list"),
    ({"model": [{"name": "a", "folder": "f", "url": "u"}, {"name": "a", "folder": "f", "url": "v"}]}, "listed twice"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_locks_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_lock(small_lock(**change), "test.toml")
    assert message in exc.value.message and "test.toml" in exc.value.message


def test_load_lock_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_lock(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[comfyui\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_lock(tmp_path / "bad.toml")


def test_commits_match_allows_abbreviations_only_when_long_enough() -> None:
    assert commits_match(RIFE, "26545cc")
    assert commits_match("26545cc", RIFE)
    assert not commits_match(RIFE, IPA)
    assert not commits_match("2654", RIFE)
    assert not commits_match(None, RIFE)


# -- comparing a server -------------------------------------------------------------------------------------
def test_a_matching_server_is_ok() -> None:
    report = check_server(caps(), parse_lock(small_lock()))
    assert report.ok, report.to_json()
    assert report.unverified == ["insightface/models/buffalo_l (the server does not list models/insightface/models)"]
    assert report.extra == []


def test_missing_packs_nodes_models_and_packages_are_reported() -> None:
    lock = parse_lock(small_lock())
    server = caps(nodes=("RIFE VFI", "MediaLabSaveImage"), models={"upscale_models": []},
                  packs=[{"name": "ComfyUI-Frame-Interpolation", "commit": RIFE, "files": [], "remote": None},
                         {"name": "my-extra-pack", "commit": "b" * 40, "files": [], "remote": None}],
                  python={})
    report = check_server(server, lock)
    assert not report.ok
    assert report.missing_packs == ["ComfyUI_IPAdapter_plus"]
    assert report.missing_nodes == {"ComfyUI-Frame-Interpolation": ["FILM VFI"]}
    assert report.missing_models == ["upscale_models/x4.pth", "ComfyUI-Frame-Interpolation/ckpts/rife/rife47.pth"]
    assert report.missing_python == ["insightface==2.1"]
    assert "my-extra-pack" in report.extra


def test_version_and_commit_mismatches_are_reported() -> None:
    lock = parse_lock(small_lock())
    server = caps(version="0.3.70", python={"insightface": "0.7.3"},
                  packs=[{"name": "ComfyUI-Frame-Interpolation", "commit": "c" * 40,
                          "files": ["ckpts/rife/rife47.pth"]},
                         {"name": "ComfyUI_IPAdapter_plus", "commit": None, "files": []}])
    report = check_server(server, lock)
    assert not report.ok
    assert "ComfyUI 0.3.70 (lock: 0.3.75)" in report.mismatches
    assert "ComfyUI-Frame-Interpolation at cccccccccccc (lock: 26545cc2dd95)" in report.mismatches
    assert "ComfyUI_IPAdapter_plus is not a git checkout (lock: 9d076a3df0d2)" in report.mismatches
    assert "insightface 0.7.3 (lock: 2.1)" in report.mismatches


def test_a_server_without_our_pack_cannot_report_commits() -> None:
    lock = parse_lock(small_lock())
    report = check_server(caps(info=False, nodes=("RIFE VFI", "FILM VFI", "IPAdapterAdvanced",
                                                   "IPAdapterUnifiedLoader")), lock)
    assert report.missing_packs == ["medialab"]
    assert any("ComfyUI-Frame-Interpolation commit" in u for u in report.unverified)
    assert any("rife47.pth" in u for u in report.unverified)
    assert check_server(None, lock).ok is False


def test_our_pack_version_is_compared() -> None:
    lock = parse_lock(small_lock())
    server = caps()
    server = Capabilities(node_classes=server.node_classes, models=server.models, comfy_version="0.3.75",
                          pack={**(server.pack or {}), "version": "0.0.9"})
    assert "medialab 0.0.9 (lock: 0.1.0)" in check_server(server, lock).mismatches


# -- the placement rule ---------------------------------------------------------------------------------------
def view(name: str, c: Capabilities | None) -> ServerView:
    return ServerView(name, f"http://{name}", healthy=True, active=True, caps=c)


def test_lock_mismatch_looks_only_at_the_packs_the_job_uses() -> None:
    lock = parse_lock(small_lock())
    stale_rife = caps(packs=[{"name": "ComfyUI-Frame-Interpolation", "commit": "c" * 40, "files": []},
                             {"name": "ComfyUI_IPAdapter_plus", "commit": IPA, "files": []}])
    assert lock_mismatch(stale_rife, frozenset({"RIFE VFI"}), lock) == [
        "ComfyUI-Frame-Interpolation at cccccccccccc (lock: 26545cc2dd95)"]
    assert lock_mismatch(stale_rife, frozenset({"IPAdapterAdvanced", "KSampler"}), lock) == []
    assert lock_mismatch(stale_rife, frozenset({"KSampler"}), lock) == []
    assert lock_mismatch(caps(version="0.3.70"), frozenset({"KSampler"}), lock) == ["ComfyUI 0.3.70 (lock: 0.3.75)"]
    unknown = lock_mismatch(caps(info=False), frozenset({"RIFE VFI"}), lock)
    assert len(unknown) == 1 and unknown[0].startswith("unknown ComfyUI-Frame-Interpolation commit")
    assert lock_mismatch(None, frozenset(), lock) == ["(capabilities not known yet)"]


def test_placement_with_the_lock_skips_servers_that_differ() -> None:
    lock = parse_lock(small_lock())
    rife_job = Requirements(frozenset({"RIFE VFI"}), frozenset())
    stale = view("a-stale", caps(packs=[{"name": "ComfyUI-Frame-Interpolation", "commit": "c" * 40, "files": []}]))
    good = view("b-good", caps())
    assert place(rife_job, [stale, good]).id == "a-stale"  # without the lock: first by url
    assert place(rife_job, [stale, good], lock=lock).id == "b-good"
    assert place(rife_job, [stale], lock=lock) is None
    reason = unrunnable_reason(rife_job, [stale], lock)
    assert reason and "http://a-stale lacks worker lock: ComfyUI-Frame-Interpolation at cccccccccccc" in reason
    assert unrunnable_reason(rife_job, [stale]) is None
    # a job that uses none of the stale pack still goes there
    core_job = Requirements(frozenset({"KSampler"}), frozenset())
    assert place(core_job, [stale], lock=lock).id == "a-stale"
    # missing nodes are reported as before, the lock adds nothing on top of them
    ipa_job = Requirements(frozenset({"IPAdapterAdvanced"}), frozenset())
    bare = view("c-bare", caps(nodes=("KSampler",)))
    assert "node IPAdapterAdvanced" in (unrunnable_reason(ipa_job, [bare], lock) or "")


# -- what /medialab/info reads -------------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_installed_packs_read_commits_without_git(tmp_path: Path) -> None:
    nodes = tmp_path / "custom_nodes"
    pack = nodes / "SomePack"
    (pack / "ckpts" / "rife").mkdir(parents=True)
    (pack / "ckpts" / "rife" / "rife47.pth").write_bytes(b"x")
    (pack / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    git(pack, "init", "-q", "-b", "main")
    git(pack, "remote", "add", "origin", "https://example.invalid/SomePack.git")
    git(pack, "add", "-A")
    git(pack, "commit", "-q", "-m", "one")
    first = git(pack, "rev-parse", "HEAD")
    assert git_commit(pack) == first  # on a branch: loose ref
    assert git_remote(pack) == "https://example.invalid/SomePack.git"
    git(pack, "commit", "-q", "--allow-empty", "-m", "two")
    git(pack, "pack-refs", "--all")
    assert git_commit(pack) == git(pack, "rev-parse", "HEAD")  # packed ref
    git(pack, "checkout", "-q", first)
    assert git_commit(pack) == first  # detached
    (nodes / "plain").mkdir()
    (nodes / "single_file.py").write_text("")
    (nodes / "__pycache__").mkdir()
    (nodes / "old.disabled").mkdir()
    found = installed_packs(nodes)
    assert [p["name"] for p in found] == ["plain", "single_file", "SomePack"]
    assert found[2]["commit"] == first and found[2]["files"] == ["ckpts/rife/rife47.pth"]
    assert found[0]["commit"] is None
