"""Regenerate the editor-format fixtures with ComfyUI's own frontend (not run by the tests).

Each scenario builds a graph in the real frontend (the ``comfyui-frontend-package`` a ComfyUI 0.3.75 server
serves), saves it the way the editor's Save does (``app.graph.serialize()``), loads that file back with
``app.loadGraphData`` and records ``app.graphToPrompt()``: ``<name>.json`` is the editor-format workflow,
``<name>.api.json`` the API graph the frontend makes of it (what Workflow > Export (API) writes).
``object_info.json`` is the server's node definitions for the classes used. With ``--check-open`` it also
loads what ``orchestrator.editor.to_editor`` makes of each API graph (the fixtures' and the library's) into the
frontend and checks that the frontend turns it back into the same API graph.

Needs a running ComfyUI with the project's node pack (``--url``), Chromium and Playwright for Python:
``python tests/data/editor/generate.py --url http://127.0.0.1:8300 --chromium /usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

HELPERS = """
const g = app.graph;
g.clear();
const add = (type, o = {}) => {
  const n = LiteGraph.createNode(type);
  if (!n) throw new Error('unknown node ' + type);
  g.add(n);
  n.pos = o.pos || [0, 0];
  if (o.title) n.title = o.title;
  for (const [k, v] of Object.entries(o.w || {})) {
    const w = n.widgets.find((x) => x.name === k);
    if (!w) throw new Error(type + ' has no widget ' + k);
    w.value = v;
  }
  if (o.mode !== undefined) n.mode = o.mode;
  return n;
};
const slot = (n, name) => (typeof name === 'number' ? name : n.findInputSlot(name));
const link = (a, out, b, inp) => { if (!a.connect(out, b, slot(b, inp))) throw new Error('no link ' + inp); };
const group = (title, nodes) => {
  const G = LiteGraph.LGraphGroup;
  const grp = new G(title);
  g.add(grp);
  grp.resizeTo(nodes, 10);
};
"""

SCENARIOS: dict[str, str] = {
    # LoadImage titled by the artist -> ESRGAN model -> SaveImage titled "Output", inside a group
    "esrgan": """
const img = add('LoadImage', {title: 'input image', pos: [40, 200], w: {image: 'frame.png'}});
const ld = add('UpscaleModelLoader', {pos: [40, 60], w: {model_name: 'tiny_x4.safetensors'}});
const up = add('ImageUpscaleWithModel', {pos: [400, 120]});
const save = add('SaveImage', {title: 'Output', pos: [720, 120], w: {filename_prefix: 'esrgan/frame'}});
link(ld, 0, up, 'upscale_model'); link(img, 0, up, 'image'); link(up, 0, save, 'images');
group('upscale', [ld, up]);
""",
    # txt2img: KSampler with seed + "randomize", the VAE through a Reroute node, a Note
    "txt2img": """
const ck = add('CheckpointLoaderSimple', {pos: [20, 200], w: {ckpt_name: 'v1-5-pruned-emaonly.safetensors'}});
const pos = add('CLIPTextEncode', {title: 'positive prompt', pos: [400, 40],
  w: {text: 'a portrait of an actor, studio light'}});
const neg = add('CLIPTextEncode', {title: 'negative prompt', pos: [400, 280], w: {text: 'blurry, watermark'}});
const lat = add('EmptyLatentImage', {pos: [400, 520], w: {width: 512, height: 768, batch_size: 1}});
const ks = add('KSampler', {title: 'sampler', pos: [820, 160], w: {seed: 123456789, control_after_generate: 'randomize',
  steps: 25, cfg: 7.5, sampler_name: 'euler_ancestral', scheduler: 'karras', denoise: 1}});
const rr = add('Reroute', {pos: [820, 560]});
const dec = add('VAEDecode', {pos: [1180, 160]});
const save = add('SaveImage', {title: 'Output', pos: [1420, 160], w: {filename_prefix: 'txt2img'}});
const note = add('Note', {pos: [20, 20]});
note.widgets[0].value = 'Prompts are template parameters; the seed is randomized on each queue.';
link(ck, 0, ks, 'model'); link(ck, 1, pos, 'clip'); link(ck, 1, neg, 'clip');
link(pos, 0, ks, 'positive'); link(neg, 0, ks, 'negative'); link(lat, 0, ks, 'latent_image');
link(ck, 2, rr, 0); link(rr, 0, dec, 'vae'); link(ks, 0, dec, 'samples'); link(dec, 0, save, 'images');
""",
    # PrimitiveNodes feeding KSamplerAdvanced's noise_seed and steps (widgets converted to inputs)
    "primitive_seed": """
const ck = add('CheckpointLoaderSimple', {pos: [20, 200], w: {ckpt_name: 'v1-5-pruned-emaonly.safetensors'}});
const pos = add('CLIPTextEncode', {title: 'positive prompt', pos: [400, 40], w: {text: 'a red fox in snow'}});
const neg = add('CLIPTextEncode', {pos: [400, 280], w: {text: 'lowres'}});
const lat = add('EmptyLatentImage', {pos: [400, 520]});
const ks = add('KSamplerAdvanced', {pos: [820, 160], w: {noise_seed: 7, control_after_generate: 'increment'}});
const seed = add('PrimitiveNode', {title: 'seed', pos: [420, 760]});
const steps = add('PrimitiveNode', {pos: [420, 900]});
const rr1 = add('Reroute', {pos: [700, 600]});
const rr2 = add('Reroute', {pos: [1000, 600]});
const dec = add('VAEDecode', {pos: [1180, 160]});
const save = add('SaveImage', {title: 'Output', pos: [1420, 160]});
link(ck, 0, ks, 'model'); link(ck, 1, pos, 'clip'); link(ck, 1, neg, 'clip');
link(pos, 0, ks, 'positive'); link(neg, 0, ks, 'negative'); link(lat, 0, ks, 'latent_image');
link(seed, 0, ks, 'noise_seed'); link(steps, 0, ks, 'steps');
seed.widgets[0].value = 42; seed.widgets[1].value = 'fixed';
steps.widgets[0].value = 12;
link(ck, 2, rr1, 0); link(rr1, 0, rr2, 0); link(rr2, 0, dec, 'vae');
link(ks, 0, dec, 'samples'); link(dec, 0, save, 'images');
""",
    # a bypassed node (routed around), muted nodes (dropped, and what they fed loses the input), a MarkdownNote
    "muted_bypassed": """
const img = add('LoadImage', {title: 'source', pos: [20, 100], w: {image: 'frame.png'}});
const inv = add('ImageInvert', {pos: [360, 100], mode: 4});
const sc = add('ImageScaleBy', {pos: [620, 100], w: {upscale_method: 'bicubic', scale_by: 1.5}});
const save = add('SaveImage', {title: 'Output', pos: [920, 100], w: {filename_prefix: 'scaled'}});
const blur = add('ImageBlur', {pos: [360, 400], mode: 2, w: {blur_radius: 3}});
const prev = add('PreviewImage', {pos: [620, 400]});
const prev2 = add('PreviewImage', {title: 'muted preview', pos: [920, 400], mode: 2});
const md = add('MarkdownNote', {pos: [20, 400]});
md.widgets[0].value = '# Notes\\nThe invert is **bypassed**, the blur is muted.';
link(img, 0, inv, 'image'); link(inv, 0, sc, 'image'); link(sc, 0, save, 'images');
link(img, 0, blur, 'image'); link(blur, 0, prev, 'images'); link(sc, 0, prev2, 'images');
""",
    # a bypassed LoRA (two outputs: each consumer gets the input of its own type) and a bypassed VAEDecode
    # (no input of the wanted type: the consumer loses the input)
    "lora_bypassed": """
const ck = add('CheckpointLoaderSimple', {pos: [20, 200], w: {ckpt_name: 'v1-5-pruned-emaonly.safetensors'}});
const lora = add('LoraLoader', {title: 'style lora', pos: [360, 200], mode: 4,
  w: {lora_name: 'style.safetensors', strength_model: 0.8, strength_clip: 0.6}});
const pos = add('CLIPTextEncode', {pos: [720, 40], w: {text: 'an actor in a red coat'}});
const neg = add('CLIPTextEncode', {pos: [720, 280], w: {text: ''}});
const lat = add('EmptyLatentImage', {pos: [720, 520]});
const ks = add('KSampler', {pos: [1080, 160], w: {seed: 99}});
const dec = add('VAEDecode', {pos: [1420, 160], mode: 4});
const save = add('SaveImage', {title: 'Output', pos: [1700, 160]});
link(ck, 0, lora, 'model'); link(ck, 1, lora, 'clip');
link(lora, 0, ks, 'model'); link(lora, 1, pos, 'clip'); link(lora, 1, neg, 'clip');
link(pos, 0, ks, 'positive'); link(neg, 0, ks, 'negative'); link(lat, 0, ks, 'latent_image');
link(ks, 0, dec, 'samples'); link(ck, 2, dec, 'vae'); link(dec, 0, save, 'images');
""",
    # two nodes turned into a subgraph (refused: not supported yet)
    "subgraph": """
const img = add('LoadImage', {pos: [20, 100], w: {image: 'frame.png'}});
const inv = add('ImageInvert', {pos: [360, 100]});
const sc = add('ImageScaleBy', {pos: [620, 100]});
const save = add('SaveImage', {title: 'Output', pos: [920, 100]});
link(img, 0, inv, 'image'); link(inv, 0, sc, 'image'); link(sc, 0, save, 'images');
g.convertToSubgraph(new Set([inv, sc]));
""",
    # the node pack's parameter nodes, one widget of ImageScaleBy fed by a link: a publishable template
    "scaler": """
const img = add('MediaLabParamImage', {title: 'param image', pos: [20, 40],
  w: {name: 'image', image: 'frame.png', help: 'The frame.'}});
const sc = add('MediaLabParamFloat', {title: 'param scale', pos: [20, 360],
  w: {name: 'scale', value: 2.0, min: 0.5, max: 4.0}});
const me = add('MediaLabParamChoice', {title: 'param method', pos: [20, 640],
  w: {name: 'method', value: 'bilinear', choices: 'nearest-exact, bilinear'}});
const by = add('ImageScaleBy', {pos: [420, 200]});
const save = add('SaveImage', {title: 'Output', pos: [760, 200], w: {filename_prefix: 'x'}});
link(img, 0, by, 'image'); link(me, 0, by, 'upscale_method'); link(sc, 0, by, 'scale_by');
link(by, 0, save, 'images');
""",
}

SAVE_AND_EXPORT = """
const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
await app.loadGraphData(saved);
const workflow = JSON.parse(JSON.stringify(app.graph.serialize()));
const {output} = await app.graphToPrompt();
return {workflow, output};
"""

OPEN_AND_EXPORT = """
await app.loadGraphData(arg);
const {output} = await app.graphToPrompt();
return output;
"""


async def main() -> int:
    from playwright.async_api import async_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8300")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--check-open", action="store_true", help="only check to_editor() against the frontend")
    args = ap.parse_args()
    failures = 0
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(args.url + "/", wait_until="networkidle")
        await page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60000)

        async def run(body: str, arg: Any = None) -> Any:
            return json.loads(await page.evaluate(
                f"async (arg) => JSON.stringify(await (async () => {{ {body} }})())", arg))

        if args.check_open:
            sys.path.insert(0, str(HERE.parents[2]))
            from orchestrator.core.editor import to_editor
            info = await run("const r = await fetch('/object_info'); return await r.json();")
            library = sorted((HERE.parents[2] / "comfy_workflows").glob("*/v*/graph.json"))
            for api_path in sorted(HERE.glob("*.api.json")) + library:
                api = json.loads(api_path.read_text())
                if any(":" in k for k in api):
                    continue  # flattened from a subgraph, which to_api refuses
                missing = {n["class_type"] for n in api.values()} - info.keys()
                if missing:
                    print(f"{api_path}: skipped, the server lacks {sorted(missing)}")
                    continue
                back = await run(OPEN_AND_EXPORT, to_editor(api, info))
                ok = back == api
                failures += not ok
                print(f"{api_path}: {'same API graph' if ok else 'DIFFERS'}")
                if not ok:
                    print(json.dumps(back, indent=1), json.dumps(api, indent=1))
        else:
            classes: set[str] = set()
            for name, body in SCENARIOS.items():
                result = await run(HELPERS + body + SAVE_AND_EXPORT)
                (HERE / f"{name}.json").write_text(json.dumps(result["workflow"], indent=1) + "\n")
                (HERE / f"{name}.api.json").write_text(json.dumps(result["output"], indent=1) + "\n")
                classes |= {n["type"] for n in result["workflow"]["nodes"]}
                print(f"{name}: {len(result['workflow']['nodes'])} nodes -> {len(result['output'])} API nodes")
            info = await run("const r = await fetch('/object_info'); return await r.json();")
            classes |= {c for c in info if c.startswith("MediaLab")}  # the whole node pack
            (HERE / "object_info.json").write_text(json.dumps({c: info[c] for c in sorted(classes) if c in info},
                                                              indent=1) + "\n")
        await browser.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
