"""The sandbox rules as pure functions: the input-path rule, object keys and the URL rule (no network)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from custom_nodes import urls
from custom_nodes.objects import ObjectError, fetch, local_name
from orchestrator.core import sandbox
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities
from orchestrator.runtime import graph_check, library
from orchestrator.settings import PROJECT_ROOT
from orchestrator.training.app.trainings import local_checkpoint
from tests.unit.test_editor import INFO, RECORDED

HEX = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
KEY = f"sha256/ab/{HEX}"
SIGNED = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ak%2F20260101%2Fus-east-1%2Fs3%2Faws4_request" \
         "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123"
ESCAPE = "leaves ComfyUI's folders: absolute paths and '..' are not allowed"


# -- the input-path rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "frame.png", "medialab/abc.png", "sd15/sub dir/x.safetensors", "x.png [output]", "clip.mp4 [input]",
    "a..b.png", "..a.png", "a/.../b.png", "./x.png", "sd15\\model.safetensors", "", "ünïcode-名前.png",
    "model:v2.safetensors", "~tilde.png", "100%.png", KEY,
])
def test_names_inside_comfyuis_folders_pass(name: str) -> None:
    assert sandbox.path_problem(name) is None


@pytest.mark.parametrize("name", [
    "/etc/passwd", "//server/share/x.png", "\\etc\\passwd", "\\\\server\\share\\x.png", "C:\\Windows\\win.ini",
    "c:/x.png", "C:x.png", "~", "~/.ssh/id_rsa", "~root/.bashrc", "../x.png", "..", "a/../../x.png", "a\\..\\..\\x.png",
    "sub/..", "%2e%2e/x.png", "%2E%2E%2Fx.png", "%252e%252e%252fetc%252fpasswd", "%2Fetc%2Fpasswd",
    "\uff0e\uff0e/x.png", "\uff0e\uff0e\uff0fetc", "/etc/passwd [output]", "../secret.png [input]",
])
def test_absolute_and_dotdot_forms_are_refused(name: str) -> None:
    problem = sandbox.path_problem(name)
    assert problem is not None and problem.endswith(ESCAPE), problem
    assert sandbox.path_problem(name, strict=False) == problem  # an escape is refused in every input


@pytest.mark.parametrize("name, why", [
    ("x\x00.png", "control character"), ("x\n.png", "control character"), ("x\x7f", "control character"),
    ("a" * 256 + ".png", "too long"), ("a/" * 600, "too long"), ("ä" * 128 + ".png", "too long"),
    ("http://169.254.169.254/latest", "is a URL"), ("file:///etc/passwd", "is a URL"),
])
def test_a_file_input_takes_only_plain_names(name: str, why: str) -> None:
    assert why in (sandbox.path_problem(name) or "")


def test_free_text_keeps_newlines_urls_and_slashes_but_not_escapes() -> None:
    for prompt in ("a photo of a cat,\nsunset", "see http://example.com", "50/50 split", "wait... what"):
        assert sandbox.path_problem(prompt, strict=False) is None
    assert sandbox.path_problem("x\x00", strict=False) is not None
    assert sandbox.path_problem("/imagine a cat", strict=False) is not None


def test_the_message_never_depends_on_whether_the_file_exists() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sbx", dir="/tmp"))  # short: the message shortens long values
    real, missing = folder / "real.png", folder / "miss.png"
    real.write_bytes(b"x")
    try:
        assert sandbox.path_problem(str(real)).replace("real.png", "miss.png") == sandbox.path_problem(str(missing))
    finally:
        shutil.rmtree(folder)
    assert sandbox.path_problem("/etc/passwd").replace("passwd", "nofile") == sandbox.path_problem("/etc/nofile")


def test_object_keys_are_exact() -> None:
    assert urls.is_object_key(KEY)
    for bad in (f"sha256/cd/{HEX}", f"sha256/AB/{HEX.upper()}", f"sha256/ab/{HEX}/x", f"sha256/ab/{HEX}\n",
                f"sha256/ab/{HEX[:-1]}", f"/sha256/ab/{HEX}", f"sha256/ab/../../{HEX}", "sha256/00/image", None, 7):
        assert not urls.is_object_key(bad), bad


def test_local_names_of_sources_stay_in_their_folder() -> None:
    assert local_name(KEY) == HEX
    for url in ("http://x/a/../../etc/passwd", "http://x/..", "http://x/%2e%2e%2f%2e%2e%2fetc", f"http://evil/{HEX}",
                "http://x/v.mp4?../../x", "http://x/" + "a" * 5000 + ".mp4"):
        name = local_name(url)
        assert name.startswith("url-") and "/" not in name and ".." not in name and len(name) < 60, name
    assert local_name("http://x/clip.MP4?sig=1").endswith(".mp4")
    assert local_name(f"http://evil/{HEX}") != HEX  # a foreign URL never passes for a stored object


def test_the_node_pack_refuses_what_is_neither_key_nor_url(tmp_path: Any) -> None:
    for source in ("../../etc/passwd", "/etc/passwd", "sha256/00/x", "file:///etc/passwd", "ftp://x/y"):
        with pytest.raises(ObjectError) as exc:
            fetch(source, tmp_path / "out", 1 << 20, urls.UrlPolicy())
        assert "object key" in str(exc.value) or "only http and https" in str(exc.value)
        assert not (tmp_path / "out").exists()


def test_checkpoint_names_use_the_same_rule(tmp_path: Any) -> None:
    from orchestrator.settings import Settings

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "base.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    st = Settings(home=tmp_path / "home", models_dir=tmp_path)
    assert local_checkpoint(st, "base.safetensors") == tmp_path / "checkpoints" / "base.safetensors"
    for name in ("../secret.safetensors", "%2e%2e/secret.safetensors", str(tmp_path / "secret.safetensors"),
                 "..\\secret.safetensors"):
        assert local_checkpoint(st, name) is None


# -- which inputs are file inputs ------------------------------------------------------------------
def recorded() -> dict[str, Any]:
    if not RECORDED.exists():
        pytest.skip(f"{RECORDED} not found (CI and sessions lay ../shared beside the repository)")
    return {**INFO, **json.loads(RECORDED.read_text())}


def test_file_inputs_from_node_definitions() -> None:
    found = sandbox.file_inputs(recorded())
    for cls, name in [("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadImageOutput", "image"),
                      ("LoadVideo", "file"), ("CheckpointLoaderSimple", "ckpt_name"), ("LoraLoader", "lora_name"),
                      ("UpscaleModelLoader", "model_name"), ("VAELoader", "vae_name"), ("Load3D", "model_file"),
                      ("Preview3D", "model_file"), ("LoadTrainingDataset", "folder_name"), ("LoadLatent", "latent"),
                      ("SaveImage", "filename_prefix"), ("SaveLoRA", "prefix"),
                      ("IPAdapterModelLoader", "ipadapter_file"), ("IPAdapterSaveEmbeds", "filename_prefix"),
                      ("RIFE VFI", "ckpt_name"), ("MediaLabLoadImage", "source"), ("MediaLabLoadVideo", "source"),
                      ("MediaLabParamModel", "value")]:
        assert name in found.get(cls, ()), (cls, name)
    for cls, name in [("CLIPTextEncode", "text"), ("KSampler", "seed"), ("MediaLabParamText", "value"),
                      ("IPAdapterWeights", "weights"), ("StringConcatenate", "string_a"), ("PrimitiveString", "value")]:
        assert name not in found.get(cls, ()), (cls, name)


def test_every_library_template_stays_in_the_sandbox() -> None:
    defs = sandbox.Definitions.from_object_info(recorded())
    for t in library.scan_library(PROJECT_ROOT / "comfy_workflows"):
        graph = tpl.bind(t, {p.name: p.default for p in t.manifest.parameters if p.default is not None})
        for d in (defs, None):  # with definitions, and with none known (every value checked)
            assert sandbox.check_graph(graph, d, urls.UrlPolicy()).problems == [], t.ref


def test_capabilities_record_file_inputs_and_old_rows_stay_unknown() -> None:
    info = {"LoadImage": INFO["LoadImage"], "CLIPTextEncode": INFO.get("CLIPTextEncode", {"input": {"required": {
        "text": ["STRING", {"multiline": True}]}}})}
    caps = Capabilities.from_probe(info, {}, {})
    assert caps.file_inputs == {"LoadImage": frozenset({"image"})}
    assert Capabilities.from_json(json.loads(json.dumps(caps.to_json()))) == caps
    old = caps.to_json()
    del old["file_inputs"]
    assert Capabilities.from_json(old).file_inputs is None
    merged = sandbox.Definitions.merge([Capabilities.from_json(old), caps, None])
    assert merged.known == {"LoadImage", "CLIPTextEncode"} and merged.file_inputs["LoadImage"] == {"image"}
    assert sandbox.Definitions.merge([Capabilities.from_json(old)]).known == frozenset()
    assert caps.free_text == {"CLIPTextEncode": frozenset({"text"})} and merged.free_text == caps.free_text
    no_free_text = caps.to_json()
    del no_free_text["free_text"]  # recorded before free text was: its classes stay unknown too
    assert Capabilities.from_json(no_free_text).free_text is None
    assert sandbox.Definitions.merge([Capabilities.from_json(no_free_text)]).known == frozenset()


# Third-party loaders whose path inputs are plain STRINGs named like media (VHS LoadVideoPath, WAS "Load Image
# (Path)"-style nodes): their names match no file-name pattern, so only "check every string" catches them.
PATH_LOADERS: dict[str, Any] = {
    "VHS_LoadVideoPath": {"input": {"required": {
        "video": ["STRING", {"placeholder": "X://insert/path/here.mp4", "vhs_path_extensions": ["mp4", "webm"]}],
        "force_rate": ["FLOAT", {"default": 0, "min": 0, "max": 60, "step": 1}]},
        "optional": {"meta_batch": ["VHS_BatchManager"]}}},
    "Load Image (Path)": {"input": {"required": {"image": ["STRING", {"default": ""}]}}},
    "LoadAudioPath": {"input": {"required": {"audio": ["STRING", {}], "mask": ["STRING", {"multiline": False}],
                                             "model": ["STRING"]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
                                              "clip": ["CLIP"]}}},
    "BatchPaths": {"input": {"required": {"paths": ["STRING", {"multiline": True}]}}},  # multiline, but a path
}


@pytest.mark.parametrize("cls, name", [("VHS_LoadVideoPath", "video"), ("Load Image (Path)", "image"),
                                       ("LoadAudioPath", "audio"), ("LoadAudioPath", "mask"),
                                       ("LoadAudioPath", "model")])
def test_string_path_inputs_of_known_classes_are_checked_whatever_their_name(cls: str, name: str) -> None:
    defs = sandbox.Definitions.from_object_info(PATH_LOADERS)
    via_caps = sandbox.Definitions.merge([Capabilities.from_json(Capabilities.from_probe(PATH_LOADERS, {}, {})
                                                                 .to_json())])
    for d in (defs, via_caps):
        assert cls in d.known and name not in d.file_inputs.get(cls, ())  # not a file input by name ...
        for escape in ("/etc/passwd", "../../../etc/passwd", "%2e%2e/secret.mp4", "~/.ssh/id_rsa", "C:\\x.png"):
            problems = check({"1": node(cls, **{name: escape})}, defs=d)
            assert problems == [f"node '1' (#1 {cls}) input '{name}': {sandbox._shown(escape)} {ESCAPE}"], problems
        assert check({"1": node(cls, **{name: "clips/take 1.mp4"})}, defs=d) == []  # ... but checked for escapes
    through_param = {"1": node("MediaLabParamText", value="/etc/passwd"), "2": node(cls, **{name: ["1", 0]})}
    assert len(check(through_param, defs=defs)) == 1  # the parameter's value, where it lands


def test_multiline_prompts_of_known_classes_stay_free() -> None:
    defs = sandbox.Definitions.from_object_info(PATH_LOADERS)
    assert defs.free_text == {"CLIPTextEncode": frozenset({"text"})}
    for prompt in ("../../ a strange prompt", "/imagine a cat\n../..", "C:\\ drive of dreams", "~/home"):
        assert check({"1": node("CLIPTextEncode", text=prompt)}, defs=defs) == []
    # a multiline widget that is a file input by its name stays strict
    assert check({"1": node("BatchPaths", paths="../x.png")}, defs=defs)
    # a single-line STRING of a known class is no prompt: checked
    assert check({"1": node("VHS_LoadVideoPath", video="../x.mp4", force_rate=24.0)}, defs=defs)


def test_free_text_is_what_every_server_knowing_the_class_calls_free() -> None:
    multiline = {"Loader": {"input": {"required": {"text": ["STRING", {"multiline": True}]}}}}
    single = {"Loader": {"input": {"required": {"text": ["STRING", {}]}}}, "Other": {"input": {}}}
    a, b = (Capabilities.from_probe(info, {}, {}) for info in (multiline, single))
    assert sandbox.Definitions.merge([a]).free_text == {"Loader": frozenset({"text"})}
    for servers in ([a, b], [b, a]):
        merged = sandbox.Definitions.merge(servers)
        assert merged.known == {"Loader", "Other"} and merged.free_text == {}
        assert check({"1": node("Loader", text="../x")}, defs=merged)
    assert sandbox.Definitions.merge([a, Capabilities.from_probe({"Other": {"input": {}}}, {}, {})]).free_text == \
        {"Loader": frozenset({"text"})}  # a server that lacks the class does not decide for it


# -- graphs ----------------------------------------------------------------------------------------
DEFS = sandbox.Definitions(frozenset({"LoadImage", "CLIPTextEncode", "SaveImage", "StringConcatenate",
                                      "MediaLabParamModel", "MediaLabParamText", "MediaLabLoadImage",
                                      "UpscaleModelLoader"}),
                           {"LoadImage": frozenset({"image"}), "SaveImage": frozenset({"filename_prefix"}),
                            "MediaLabParamModel": frozenset({"value", "folder"}),
                            "MediaLabLoadImage": frozenset({"source"}),
                            "UpscaleModelLoader": frozenset({"model_name"})},
                           {"CLIPTextEncode": frozenset({"text"}), "MediaLabParamText": frozenset({"value"}),
                            "StringConcatenate": frozenset({"string_a", "string_b"})})
POLICY = urls.UrlPolicy.build(["https://shots.example"])


def check(graph: dict[str, Any], defs: sandbox.Definitions | None = DEFS, **kw: Any) -> list[str]:
    return sandbox.check_graph(graph, defs, POLICY, **kw).problems


def node(cls: str, title: str | None = None, **inputs: Any) -> dict[str, Any]:
    return {"class_type": cls, "inputs": inputs, **({"_meta": {"title": title}} if title else {})}


def test_a_graph_problem_names_node_input_and_rule() -> None:
    problems = check({"1": node("LoadImage", "Input", image="/etc/passwd")})
    assert problems == [f"node 'Input' (#1 LoadImage) input 'image': '/etc/passwd' {ESCAPE}"]


def test_prompts_stay_free_and_unknown_classes_are_checked_everywhere() -> None:
    prompt = {"1": node("CLIPTextEncode", text="../../ a strange prompt\n/with slashes")}
    assert check(prompt) == []
    assert check({"1": node("CLIPTextEncode", text="a cat\nin the rain")}, defs=None) == []  # fallback: free
    assert len(check({"1": node("ThirdPartyLoader", path="../x", note="/etc/hosts", n=3)})) == 2
    assert check({"1": node("ThirdPartyLoader", note="a\nmulti-line prompt")}) == []


def test_links_are_followed_to_the_value_and_computed_names_refused() -> None:
    through_param = {"1": node("MediaLabParamText", value="/etc/passwd"),
                     "2": node("LoadImage", "Input", image=["1", 0])}
    assert check(through_param) == [f"node 'Input' (#2 LoadImage) input 'image': '/etc/passwd' {ESCAPE}"]
    chained = {"1": node("MediaLabParamModel", value="../../etc/x", folder="upscale_models"),
               "2": node("UpscaleModelLoader", model_name=["1", 0])}
    assert len(check(chained)) == 2  # the parameter node's own value, and where it lands
    computed = {"1": node("StringConcatenate", string_a="/etc/", string_b="passwd"),
                "2": node("MediaLabParamModel", value=["1", 0], folder="checkpoints"),
                "3": node("LoadImage", image=["2", 0])}
    problems = check(computed)
    assert problems and all("computes it while the graph runs" in p for p in problems)
    fine = {"1": node("MediaLabParamText", value="frame.png"), "2": node("LoadImage", image=["1", 0])}
    assert check(fine) == []
    cycle = {"1": node("MediaLabParamText", value=["2", 0]), "2": node("MediaLabParamText", value=["1", 0]),
             "3": node("LoadImage", image=["1", 0])}
    assert check(cycle) == []  # the graph check reports a cycle; nothing to read here


def test_malformed_graphs_are_left_to_the_graph_check() -> None:
    graph = {"1": {"class_type": "X", "inputs": [1, 2]}, "2": "not a node", "3": {"class_type": ["a"], "_meta": "t",
             "inputs": {"a": ["9", 0], "b": ["1", 0], "c": ["2", 0]}}, "4": node("LoadImage", image=["2", 0])}
    assert check(graph) == [] and check(graph, defs=None) == []


def test_inputs_bound_to_artifacts_are_checked_when_their_names_are_known() -> None:
    graph = {"1": node("LoadImage", image="sha256/00/image"), "2": node("MediaLabLoadImage", source="art-id")}
    assert len(check(graph)) == 1  # the placeholder id is no key
    assert check(graph, skip={("1", "image"), ("2", "source")}) == []


def test_loader_sources_take_keys_and_allowed_urls_only() -> None:
    def source(value: str) -> sandbox.GraphCheck:
        return sandbox.check_graph({"1": node("MediaLabLoadImage", source=value)}, DEFS, POLICY)

    assert source(KEY).problems == [] and source(KEY).urls == []
    ok = source("https://shots.example/shot.png?sig=1")
    assert ok.problems == [] and ok.urls[0][1].origin == ("https", "shots.example", 443)
    for bad, why in [("https://evil.example/x.png", "is not allowed: url_allowlist"), ("/etc/passwd", "object key"),
                     ("../x", "object key"), ("file:///etc/passwd", "only http and https"),
                     ("http://shots.example/x", "is not allowed")]:
        problems = source(bad).problems
        assert len(problems) == 1 and why in problems[0], (bad, problems)


# -- the URL rule ----------------------------------------------------------------------------------
P = urls.UrlPolicy.build(["https://shots.example:8443", "http://127.0.0.1:8080", "http://[::1]:8080",
                          "https://B\u00fccher.example", "http://metadata.test"], store_endpoint="minio:9000")


def refused(url: str, policy: urls.UrlPolicy = P) -> str:
    with pytest.raises(urls.UrlRefused) as exc:
        urls.check_url(url, policy)
    return str(exc.value)


def test_allowlisted_origins_pass_in_every_spelling() -> None:
    for url in ("https://shots.example:8443/a.png?x=1", "HTTPS://SHOTS.EXAMPLE:8443/a", "https://shots.example.:8443/",
                "https://xn--bcher-kva.example/x", "https://XN--BCHER-KVA.example:443/x"):
        assert urls.check_url(url, P).origin[1] in ("shots.example", "xn--bcher-kva.example")
    store = urls.check_url(f"http://minio:9000/medialab/{KEY}?{SIGNED}", P)
    assert store.is_store


@pytest.mark.parametrize("url, why", [
    ("https://evil.example/x", "origin https://evil.example:443 is not allowed"),
    ("https://shots.example/x", "is not allowed"),  # the allowed origin has port 8443
    ("http://shots.example:8443/x", "is not allowed"),  # and https
    ("https://minio:9000/x", "is not allowed"),  # the store speaks http here
    ("ftp://shots.example:8443/x", "only http and https"), ("file:///etc/passwd", "only http and https"),
    ("gopher://127.0.0.1:8080/", "only http and https"), ("//shots.example:8443/x", "only http and https"),
    ("https://shots.example:8443@evil.example/", "credentials"), ("http://allowed@evil/", "credentials"),
    ("https://user:pw@shots.example:8443/", "credentials"),
    ("https://evil.example\\@shots.example:8443/", "backslashes"), ("https://shots.example:8443/\x00", "control"),
    ("https://shots.example:8443/a b", "spaces"), ("https://shots.example:8443/\u00fc", "ASCII"),
    ("http://2130706433:8080/", "ambiguous"), ("http://0177.0.0.1:8080/", "ambiguous"),
    ("http://0x7f.0.0.1:8080/", "ambiguous"), ("http://127.1:8080/", "ambiguous"),
    ("http://017700000001:8080/", "ambiguous"), ("http://shots.example:99999/", "bad port"),
    ("http://[fe80::1%25eth0]:8080/", "zone"), ("http://[::1/", "not a URL"), ("http://[shots]:8080/", "not a URL"),
    ("https://shots.example:8443/" + "a" * 9000, "longer than"),
])
def test_urls_the_rule_refuses(url: str, why: str) -> None:
    assert why in refused(url)


STORE_PATH = "the path must be /medialab/sha256/<2 hex>/<64 hex>"


@pytest.mark.parametrize("url, why", [
    (f"http://minio:9000/medialab/{KEY}", "the query lacks X-Amz-Credential and X-Amz-Signature"),
    (f"http://minio:9000/medialab/{KEY}?X-Amz-Signature=abc", "the query lacks X-Amz-Credential"),
    (f"http://minio:9000/medialab/{KEY}?X-Amz-Credential=ak&X-Amz-Signature=", "the query lacks X-Amz-Signature"),
    (f"http://minio:9000/medialab/{KEY}?x-amz-credential=ak&x-amz-signature=s", "the query lacks"),
    (f"http://minio:9000/other-bucket/{KEY}?{SIGNED}", STORE_PATH), (f"http://minio:9000/{KEY}?{SIGNED}", STORE_PATH),
    (f"http://minio:9000/medialab/{KEY}/x?{SIGNED}", STORE_PATH),
    (f"http://minio:9000/medialab/sha256/cd/{HEX}?{SIGNED}", STORE_PATH),  # a key whose prefix is not its hash's
    (f"http://minio:9000/medialab/sha256%2Fab%2F{HEX}?{SIGNED}", STORE_PATH),
    (f"http://minio:9000/medialab/sha256/ab/../../../minio/admin/v3/info?{SIGNED}", STORE_PATH),
    (f"http://minio:9000/medialab/?{SIGNED}", STORE_PATH), (f"http://minio:9000/?{SIGNED}", STORE_PATH),  # listings
    (f"http://minio:9000/minio/health/live?{SIGNED}", STORE_PATH), (f"http://minio:9000//medialab/{KEY}?{SIGNED}",
                                                                     STORE_PATH),
])
def test_the_store_origin_takes_only_presigned_urls_of_stored_objects(url: str, why: str) -> None:
    message = refused(url)
    assert "the object store http://minio:9000 is allowed only for presigned URLs of stored objects" in message
    assert why in message, message


def test_presigned_urls_of_the_store_pass_as_the_sdk_makes_them() -> None:
    from datetime import timedelta

    from minio import Minio

    sdk = Minio("minio:9000", "access", "secret", secure=False, region="us-east-1")  # signs offline
    for headers in (None, {"response-content-disposition": 'attachment; filename="a b.png"'}):
        url = sdk.presigned_get_object("medialab", KEY, expires=timedelta(hours=1), response_headers=headers)
        assert urls.check_url(url, P).is_store, url
    # the store's origin keeps its rule when it is allowlisted too, and the bucket is the configured one
    allowlisted = urls.UrlPolicy.build(["http://minio:9000"], store_endpoint="minio:9000", store_bucket="media-b")
    assert urls.check_url(f"http://minio:9000/media-b/{KEY}?{SIGNED}", allowlisted).is_store
    for url in (f"http://minio:9000/medialab/{KEY}?{SIGNED}", "http://minio:9000/media-b/"):
        with pytest.raises(urls.UrlRefused, match="bucket 'media-b', MEDIALAB_S3_BUCKET"):
            urls.check_url(url, allowlisted)
    from_env = urls.UrlPolicy.from_env({"MEDIALAB_S3_ENDPOINT": "minio:9000", "MEDIALAB_S3_BUCKET": "media-b"})
    assert from_env.store_bucket == "media-b" and urls.UrlPolicy.from_env({}).store_bucket == "medialab"


def test_the_orchestrators_url_policy_names_its_bucket() -> None:
    from orchestrator.bootstrap import worker_env
    from orchestrator.settings import Settings

    st = Settings(storage="s3", s3_endpoint="minio:9000", s3_bucket="media-b", s3_access_key="a", s3_secret_key="s")
    for policy in (graph_check.url_policy(st), urls.UrlPolicy.from_env(worker_env(st))):
        assert policy.store == ("http", "minio", 9000) and policy.store_bucket == "media-b"
        assert urls.check_url(f"http://minio:9000/media-b/{KEY}?{SIGNED}", policy).is_store


def test_messages_name_the_setting_and_its_value() -> None:
    message = refused("https://evil.example/x")
    assert "url_allowlist (MEDIALAB_URL_ALLOWLIST) is ['https://shots.example:8443'" in message
    assert "the object store http://minio:9000 is always allowed for presigned URLs of its objects" in message


def test_ip_literals_are_checked_as_addresses_at_once() -> None:
    assert "loopback" in refused("http://127.0.0.1:8080/x") and "url_private_ok" in refused("http://[::1]:8080/")
    private = urls.UrlPolicy.build(["http://127.0.0.1:8080", "http://[::1]:8080", "http://169.254.169.254",
                                    "http://[::ffff:169.254.169.254]"], private_ok=True)
    assert urls.check_url("http://127.0.0.1:8080/x", private).host == "127.0.0.1"
    assert urls.check_url("http://[0:0::1]:8080/x", private).host == "::1"
    assert "link-local" in refused("http://169.254.169.254/latest/meta-data/", private)
    assert "link-local" in refused("http://[::ffff:a9fe:a9fe]/", private)


NEVER = ["169.254.169.254", "169.254.0.1", "fe80::1", "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "ff02::1",
         "240.0.0.1", "255.255.255.255", "100.100.100.200", "fd00:ec2::254", "::ffff:169.254.169.254",
         "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"]
PRIVATE = ["127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "fd12::1",
           "::ffff:10.0.0.1", "192.0.2.1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("addr", NEVER)
def test_addresses_never_allowed(addr: str) -> None:
    assert urls.address_problem(ipaddress.ip_address(addr), private_ok=True) is not None


@pytest.mark.parametrize("addr", PRIVATE)
def test_private_addresses_need_url_private_ok(addr: str) -> None:
    assert "url_private_ok" in (urls.address_problem(ipaddress.ip_address(addr), private_ok=False) or "")
    assert urls.address_problem(ipaddress.ip_address(addr), private_ok=True) is None


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr: str) -> None:
    assert urls.address_problem(ipaddress.ip_address(addr), private_ok=False) is None


def test_one_bad_address_refuses_the_name_and_the_store_may_be_private() -> None:
    target = urls.check_url("http://metadata.test/x", P)
    with pytest.raises(urls.UrlRefused, match="link-local"):
        urls.check_addresses(target, ["8.8.8.8", "169.254.169.254"], P)
    with pytest.raises(urls.UrlRefused, match="private"):
        urls.check_addresses(target, ["10.1.2.3"], P)
    assert urls.check_addresses(target, ["8.8.8.8", "8.8.8.8"], P) == [ipaddress.ip_address("8.8.8.8")]
    store = urls.check_url(f"http://minio:9000/medialab/{KEY}?{SIGNED}", P)
    assert urls.check_addresses(store, ["10.0.0.5"], P)
    with pytest.raises(urls.UrlRefused, match="link-local"):
        urls.check_addresses(store, ["169.254.1.1"], P)
    with pytest.raises(urls.UrlRefused, match="no address"):
        urls.check_addresses(target, [], P)


def test_policies_from_settings_and_environment() -> None:
    for bad in ("shots.example", "https://x/path", "https://u@x", "ftp://x", "https://x:0x1"):
        with pytest.raises(urls.UrlRefused, match="allowlist entry"):
            urls.UrlPolicy.build([bad])
    env = {"MEDIALAB_URL_ALLOWLIST": " https://a.example , http://b.example:81/ ,", "MEDIALAB_URL_PRIVATE_OK": "1",
           "MEDIALAB_URL_MAX_BYTES": "1000", "MEDIALAB_URL_TIMEOUT_S": "2.5", "MEDIALAB_S3_ENDPOINT": "s3.internal:443",
           "MEDIALAB_S3_SECURE": "true"}
    policy = urls.UrlPolicy.from_env(env)
    assert policy.allowlist == {("https", "a.example", 443), ("http", "b.example", 81)}
    assert (policy.private_ok, policy.max_bytes, policy.timeout_s) == (True, 1000, 2.5)
    assert policy.store == ("https", "s3.internal", 443)
    as_json = urls.UrlPolicy.from_env({"MEDIALAB_URL_ALLOWLIST": '["https://a.example"]'})
    assert as_json.allowlist == {("https", "a.example", 443)} and not as_json.private_ok and as_json.store is None
    assert urls.UrlPolicy.from_env({}).allowlist == frozenset()


def test_the_orchestrator_passes_its_url_rule_to_the_local_worker() -> None:
    from orchestrator.bootstrap import worker_env
    from orchestrator.settings import Settings

    st = Settings(url_allowlist=["https://shots.example", "http://10.0.0.9:8080"], url_private_ok=True,
                  url_max_bytes=1234, url_timeout_s=7.0)
    policy = urls.UrlPolicy.from_env(worker_env(st))
    assert policy.allowlist == {("https", "shots.example", 443), ("http", "10.0.0.9", 8080)}
    assert (policy.private_ok, policy.max_bytes, policy.timeout_s) == (True, 1234, 7.0)
    assert urls.UrlPolicy.from_env(worker_env(Settings())).allowlist == frozenset()
