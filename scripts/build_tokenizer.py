"""Build sd-scripts' offline tokenizer folder from open_clip_torch's CLIP BPE merges (no hub download).

Usage: python scripts/build_tokenizer.py DIR [--bpe bpe_simple_vocab_16e6.txt.gz]

sd-scripts loads its tokenizers by hub id; with ``--tokenizer_cache_dir DIR`` it looks in
``DIR/<id with / replaced by _>`` first. This writes ``DIR/openai_clip-vit-large-patch14`` (SD1.x, SDXL's
first encoder) and ``DIR/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k`` (SDXL's second encoder, padded with "!")
with transformers' ``CLIPTokenizer.save_pretrained`` and checks the ids of "a photo of a cat". Run it with
the Python of sd-scripts' environment (it needs transformers; open_clip_torch only as the file's source).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 49408
CHECK_TEXT = "a photo of a cat"
CHECK_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
FOLDERS = {"openai_clip-vit-large-patch14": "<|endoftext|>", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": "!"}


def find_bpe() -> Path:
    """open_clip_torch's bpe_simple_vocab_16e6.txt.gz, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open_clip_torch is not installed: pip install --no-deps open_clip_torch (or pass --bpe FILE)")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def vocab_and_merges(bpe: Path) -> tuple[dict[str, int], list[str]]:
    """The exact CLIP vocabulary (49,408 tokens) and merge list, as open_clip's SimpleTokenizer builds them."""
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise SystemExit(f"{bpe}: built {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def build(out: Path, bpe: Path) -> list[Path]:
    """Write the tokenizer folders under ``out`` and check each one; returns the folders."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(bpe)
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        for name, pad in FOLDERS.items():
            tok = CLIPTokenizer(str(vocab_file), str(merges_file), unk_token="<|endoftext|>",
                                bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token=pad,
                                model_max_length=77)
            folder = out / name
            tok.save_pretrained(str(folder))
            check(folder)
            made.append(folder)
    return made


def check(folder: Path) -> None:
    """Load the saved folder as sd-scripts does and compare the ids of the check sentence."""
    from transformers import CLIPTokenizer

    ids = CLIPTokenizer.from_pretrained(str(folder))(CHECK_TEXT)["input_ids"]
    if list(ids) != CHECK_IDS:
        raise SystemExit(f"{folder}: {CHECK_TEXT!r} -> {list(ids)}, expected {CHECK_IDS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the tokenizer cache folder (sd-scripts' --tokenizer_cache_dir)")
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip_torch's)")
    args = parser.parse_args()
    for folder in build(args.out, args.bpe or find_bpe()):
        print(f"built {folder} ({CHECK_TEXT!r} -> {CHECK_IDS})")


if __name__ == "__main__":
    main()
