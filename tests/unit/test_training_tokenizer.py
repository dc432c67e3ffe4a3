"""The offline tokenizer folder built from open_clip_torch's BPE merges (scripts/build_tokenizer.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "scripts"))
import build_tokenizer  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                reason="open_clip_torch (the source of the CLIP BPE file) is not installed here; "
                                       "scripts/install_sd_scripts.sh installs it beside sd-scripts")


def test_vocabulary_and_saved_folders(tmp_path):
    vocab, merges = build_tokenizer.vocab_and_merges(build_tokenizer.find_bpe())
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab["cat</w>"] == 2368
    folders = build_tokenizer.build(tmp_path, build_tokenizer.find_bpe())
    assert [f.name for f in folders] == ["openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"]
    for folder in folders:
        build_tokenizer.check(folder)  # "a photo of a cat" -> 49406, 320, 1125, 539, 320, 2368, 49407
