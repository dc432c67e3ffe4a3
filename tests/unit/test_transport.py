import pytest

from orchestrator.core import byte_path as transport
from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Capabilities
from orchestrator.core.errors import InvalidInput
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT

LIBRARY = library.scan_library(PROJECT_ROOT / "comfy_workflows")
ESRGAN = tpl.pick(LIBRARY, "upscale-esrgan", 1)
VIDEO = tpl.pick(LIBRARY, "video-retime")
PACK = {"pack": "medialab", "storage": {"endpoint": "s3:9000", "bucket": "media"}, "max_upload_mb": 100}
MB = 1024 * 1024


def caps(pack: dict | None = PACK) -> Capabilities:
    return Capabilities(pack=pack)


def test_direct_when_the_server_has_the_pack_and_our_bucket() -> None:
    assert transport.choose("auto", caps(), "media", ESRGAN, 10) == (transport.BytePath.direct,
                                                                      "server has the pack and the bucket")
    reasons = {
        "the orchestrator stores on local disk": (caps(), None),
        "the server lacks the medialab node pack": (caps(None), "media"),
        "the server has no object storage configured (MEDIALAB_S3_ENDPOINT)": (caps({"pack": "medialab"}), "media"),
        "the server stores in bucket 'media', not 'other'": (caps(), "other"),
    }
    for reason, (c, bucket) in reasons.items():
        assert transport.choose("auto", c, bucket, ESRGAN, 10) == (transport.BytePath.through, reason)


def test_over_the_upload_limit_always_direct_or_a_clear_error() -> None:
    small_limit = caps({**PACK, "max_upload_mb": 1})
    assert transport.choose("through", small_limit, "media", ESRGAN, 2 * MB)[0] == transport.BytePath.direct
    with pytest.raises(InvalidInput, match="over the server's upload limit of 104857600, but the direct byte "
                                           "path is not possible: the orchestrator stores on local disk"):
        transport.choose("auto", caps(), None, ESRGAN, 200 * MB)


def test_direct_graph_swaps_loaders_and_savers_keeping_ids_and_links() -> None:
    graph = transport.direct_graph(ESRGAN, {"image": "sha256/ab/abc", "model": "m.pth"})
    assert graph["1"] == {"class_type": "MediaLabLoadImage", "inputs": {"source": "sha256/ab/abc"},
                          "_meta": {"title": "Input image"}}
    assert graph["4"]["class_type"] == "MediaLabSaveImage" and graph["4"]["inputs"]["images"] == ["3", 0]
    assert graph["2"]["inputs"]["model_name"] == "m.pth"
    video = transport.direct_graph(VIDEO, {"video": "sha256/cd/cde", "fps": 60.0})
    assert video["1"]["class_type"] == "MediaLabLoadVideo" and video["4"]["class_type"] == "MediaLabSaveVideo"
    assert video["4"]["inputs"]["format"] == "auto" and video["3"]["inputs"]["fps"] == 60.0
    assert ESRGAN.graph["1"]["class_type"] == "LoadImage"  # the template itself is untouched
