#!/usr/bin/env bash
# Install kohya sd-scripts for the LoRA trainer at a pinned commit, with its own virtual environment and the
# offline tokenizer folder. sd-scripts is not on the package registries; its code is never committed here.
#
# Usage: scripts/install_sd_scripts.sh DEST [--venv DIR] [--base-site SITE_PACKAGES] [--tokenizers DIR]
#   DEST           where the checkout goes (cloned at $SD_SCRIPTS_COMMIT); an existing tree there is kept
#   --venv         its virtual environment (default DEST/.venv)
#   --base-site    reuse the packages (torch...) of another environment's site-packages through a .pth file
#                  instead of downloading torch again (development machines: .venv/lib/python3.11/site-packages)
#   --tokenizers   the tokenizer cache folder, --tokenizer_cache_dir of the runs (default DEST/tokenizers)
# Environment: SD_SCRIPTS_REPO (git URL or local repository), SD_SCRIPTS_COMMIT, TORCH_PINS,
#   WITH_BITSANDBYTES=1 (AdamW8bit and the paged optimizers; CUDA hosts), PYTHON (the interpreter for the venv).
# Safe to run again. Afterwards: MEDIALAB_SD_SCRIPTS_DIR=DEST (and the printed python and tokenizer folder).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SD_SCRIPTS_REPO=${SD_SCRIPTS_REPO:-https://github.com/kohya-ss/sd-scripts.git}
SD_SCRIPTS_COMMIT=${SD_SCRIPTS_COMMIT:-48d368fa557731ad0488c07304dfeba8c07910eb}
TORCH_PINS=${TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
PYTHON=${PYTHON:-python3}

[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
DEST=$1; shift
VENV="" BASE_SITE="" TOKENIZERS=""
while [ $# -gt 0 ]; do
  case $1 in
    --venv) VENV=$2; shift 2 ;;
    --base-site) BASE_SITE=$(cd "$2" && pwd); shift 2 ;;
    --tokenizers) TOKENIZERS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
VENV=${VENV:-$DEST/.venv}
TOKENIZERS=${TOKENIZERS:-$DEST/tokenizers}
step() { printf '\n== %s\n' "$*"; }

step "sd-scripts at ${SD_SCRIPTS_COMMIT:0:12} -> $DEST"
if [ -f "$DEST/train_network.py" ]; then
  if [ -d "$DEST/.git" ]; then
    have=$(git -C "$DEST" rev-parse HEAD)
    [ "$have" = "$SD_SCRIPTS_COMMIT" ] || { echo "$DEST is at $have, not $SD_SCRIPTS_COMMIT" >&2; exit 1; }
  else
    echo "keeping the existing tree (not a git checkout: make sure it is $SD_SCRIPTS_COMMIT)"
  fi
else
  git clone --no-checkout "$SD_SCRIPTS_REPO" "$DEST"
  git -C "$DEST" checkout --detach "$SD_SCRIPTS_COMMIT"
fi

step "virtual environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
if [ -n "$BASE_SITE" ]; then
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$BASE_SITE" > "$site/zz_medialab_base.pth"   # searched after the venv's own packages
fi

step "requirements (torch pinned: $TORCH_PINS, never resolved newer)"
pins=$(mktemp); reqs=$(mktemp); trap 'rm -f "$pins" "$reqs"' EXIT
tr ' ' '\n' <<<"$TORCH_PINS" > "$pins"
# The project's own "-e ." is installed below without deps; bitsandbytes only where asked for (CUDA hosts).
grep -v -E '^\s*(-e|#|$)' "$DEST/requirements.txt" | grep -v -E '^bitsandbytes' > "$reqs"
[ "${WITH_BITSANDBYTES:-0}" = 1 ] && echo bitsandbytes >> "$reqs"
"$PY" -m pip install -q -c "$pins" $TORCH_PINS -r "$reqs"
"$PY" -m pip install -q --no-deps -e "$DEST"
"$PY" -m pip install -q --no-deps open_clip_torch   # only for its CLIP BPE file

step "offline tokenizers -> $TOKENIZERS"
"$PY" "$HERE/build_tokenizer.py" "$TOKENIZERS"

"$PY" -c 'import torch, transformers, diffusers, accelerate; print("torch", torch.__version__, "transformers",
transformers.__version__, "diffusers", diffusers.__version__, "accelerate", accelerate.__version__)'
printf '\nsd-scripts ready:\n  MEDIALAB_SD_SCRIPTS_DIR=%s\n  python: %s\n  tokenizer cache: %s\n' \
  "$(cd "$DEST" && pwd)" "$PY" "$(cd "$TOKENIZERS" && pwd)"
