"""The simulated workload: models with load costs, jobs with mixed durations, and the template they run.

Pure and seeded: the same arguments give the same models and jobs, so placement modes are compared on
exactly the same work. Durations are in simulated seconds; a job's duration travels in its graph as
KSampler ``steps`` (``STEP_S`` simulated seconds per step), the way a real job's cost does.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

STEP_S = 0.5  # simulated seconds per sampler step
TEMPLATE = "sim-txt2img"
FOLDER = "checkpoints"

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"},
          "_meta": {"title": "Checkpoint"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait", "clip": ["1", 1]},
          "_meta": {"title": "Prompt"}},
    "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
          "_meta": {"title": "Latent"}},
    "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                               "latent_image": ["3", 0], "seed": 0, "steps": 20, "cfg": 7.0,
                                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
          "_meta": {"title": "Sampler"}},
    "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}, "_meta": {"title": "Decode"}},
    "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "sim"},
          "_meta": {"title": "Image"}},
}
MANIFEST = {
    "title": "Simulated text to image", "kind": "image",
    "parameters": [
        {"name": "model", "type": "model", "folder": FOLDER, "bind": {"node": "Checkpoint", "input": "ckpt_name"}},
        {"name": "steps", "type": "int", "default": 20, "min": 1, "max": 10000,
         "bind": {"node": "Sampler", "input": "steps"}},
        {"name": "seed", "type": "int", "default": 0, "bind": {"node": "Sampler", "input": "seed"}},
    ],
    "outputs": [{"node": "Image", "name": "image"}],
}


@dataclass(frozen=True)
class SimJob:
    model: str
    steps: int
    seed: int

    @property
    def duration_s(self) -> float:
        return self.steps * STEP_S

    @property
    def params(self) -> dict[str, object]:
        return {"model": self.model, "steps": self.steps, "seed": self.seed}


def model_name(i: int) -> str:
    return f"sim_model_{i:02d}.safetensors"


def models(count: int, seed: int = 1) -> dict[str, float]:
    """Model file -> load cost in simulated seconds (4 to 20 s, like SD1.5 to SDXL checkpoints from disk)."""
    rnd = random.Random(seed)
    return {model_name(i): round(rnd.uniform(4.0, 20.0), 1) for i in range(count)}


def jobs(count: int, n_models: int, seed: int = 1) -> list[SimJob]:
    """Jobs over the models (mildly skewed popularity) with mixed durations: 60% short (10-20 steps),
    30% medium (25-40), 10% long (60-150); 0.5 simulated s per step."""
    rnd = random.Random(seed * 7919)
    names = [model_name(i) for i in range(n_models)]
    weights = [1 / (k + 1) ** 0.7 for k in range(n_models)]
    out = []
    for i in range(count):
        r = rnd.random()
        steps = rnd.randint(10, 20) if r < 0.6 else rnd.randint(25, 40) if r < 0.9 else rnd.randint(60, 150)
        out.append(SimJob(rnd.choices(names, weights)[0], steps, i))
    return out


def lower_bound_s(work: list[SimJob], servers: int) -> float:
    """No schedule finishes sooner: the work spread perfectly (model loads left out), or the longest job."""
    return max(sum(j.duration_s for j in work) / servers, max(j.duration_s for j in work))


def write_template(root: Path) -> Path:
    """The template library of the simulation (one template), written under ``root``."""
    v1 = root / TEMPLATE / "v1"
    v1.mkdir(parents=True, exist_ok=True)
    (v1 / "graph.json").write_text(json.dumps(GRAPH, indent=1))
    (v1 / "manifest.json").write_text(json.dumps(MANIFEST, indent=1))
    return root
