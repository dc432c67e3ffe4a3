"""A process tree for the runner's tests, started in place of sd-scripts' train_network.py.

It reads the run's args.toml (output_dir, output_name) like sd-scripts would, then does what
MEDIALAB_TEST_PROC_MODE says:
  finish        progress on stderr, a step checkpoint, a sample image and the final file; exit 0
  empty         prints "No data found" and exits 0 without a file (what sd-scripts does on an empty dataset)
  crash         raises an exception after one progress update; exit 1
  hang          spawns a child that ignores SIGTERM, writes both pids to pids.txt, then both sleep
  leave-child   writes the final file, spawns a child that keeps running, exits 0
"""

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

args = sys.argv[1:]
cfg = tomllib.loads(Path(args[args.index("--config_file") + 1]).read_text())["medialab"]
out = Path(cfg["output_dir"])
name = cfg["output_name"]
mode = os.environ["MEDIALAB_TEST_PROC_MODE"]
workdir = out.parent
SLEEPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def bar(step: int, total: int, loss: str = "") -> None:
    extra = f", avr_loss={loss}" if loss else ""
    sys.stderr.write(f"\rsteps: {100 * step // total:3d}%|#####| {step}/{total} [00:0{step}<00:01,  1.50s/it{extra}]")
    sys.stderr.flush()


if mode == "finish":
    bar(0, 2)
    print("\nepoch 1/1\n")
    bar(1, 2)
    bar(1, 2, "1.09")
    ckpt = out / f"{name}-step00000001.safetensors"
    print(f"saving checkpoint: {ckpt}", flush=True)
    ckpt.write_bytes(b"x" * 1000)
    (out / "sample").mkdir(exist_ok=True)
    (out / "sample" / f"{name}_000001_00_20260101000000_42.png").write_bytes(b"png" * 100)
    time.sleep(1.2)  # seen twice by the watcher while running
    bar(2, 2, "1.13")
    print(f"saving checkpoint: {out / (name + '.safetensors')}", flush=True)
    (out / f"{name}.safetensors").write_bytes(b"y" * 1000)
    print("model saved.")
elif mode == "empty":
    print("No data found. Please verify arguments", flush=True)
elif mode == "crash":
    bar(1, 2)
    raise RuntimeError("CUDA out of memory (imitated)")
elif mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", SLEEPER])
    (workdir / "pids.txt").write_text(f"{os.getpid()} {child.pid}")
    bar(0, 100)
    time.sleep(600)
elif mode == "leave-child":
    child = subprocess.Popen([sys.executable, "-c", SLEEPER])
    (workdir / "pids.txt").write_text(f"{os.getpid()} {child.pid}")
    (out / f"{name}.safetensors").write_bytes(b"y" * 1000)
    print("model saved.", flush=True)
else:
    sys.exit(f"unknown mode {mode}")
