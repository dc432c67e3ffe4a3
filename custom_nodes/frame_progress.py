"""Progress of ComfyUI-Frame-Interpolation's frame loops: a ``comfy.utils.ProgressBar`` per frame pair.

That pack (a third-party node pack, https://github.com/Fannovel16/ComfyUI-Frame-Interpolation, as of commit
26545cc) reports no progress at all, so a long interpolation looks hung. Nothing of it is vendored or edited:
its functions are wrapped in memory, once, when its modules are loaded:

- ``vfi_utils._generic_frame_loop`` (the loop of the VFI nodes built on ``generic_frame_loop``: one call of the
  node's middle-frame function per middle frame) gets a bar with ``max`` = the middle frames of the pairs it
  interpolates, one step per middle frame; ``generic_frame_loop`` with a list of multipliers (one loop per pair)
  gets one bar over all its pairs (``vfi_utils`` and every module that imported the name);
- RIFE VFI runs its own loop (``vfi_models.rife.RIFE_VFI.vfi``, IFNet called on batches of middle frames): the
  node gets a bar with ``max`` = its middle frames, stepped by each IFNet call's batch (a forward hook, there
  only while the node runs).

Guarded: a module that is absent, or a function whose parameters are not those expected, is left alone (one log
line says so). Packs load in directory order and that pack may load after this one, so ``hook`` patches now
and again on each prompt (``PromptServer.add_on_prompt_handler``: a dictionary lookup once patched).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MARK = "__medialab_frame_progress__"  # set on a wrapper: the original is patched already
INNER_PARAMS = ("frames", "clear_cache_after_n_frames", "multiplier", "return_middle_frame_function",
                "return_middle_frame_function_args", "interpolation_states", "use_timestep")
OUTER_PARAMS = ("model_name", "frames", "clear_cache_after_n_frames", "multiplier", "return_middle_frame_function",
                "return_middle_frame_function_args", "interpolation_states", "use_timestep")
RIFE_PARAMS = ("frames", "multiplier", "batch_size", "optional_interpolation_states")

_state = threading.local()  # .bar: the bar of a generic_frame_loop over a list of multipliers, while it runs
_said: set[str] = set()


def make_bar(total: int) -> Any:
    """A ComfyUI progress bar of the running node (its hook sends the ``progress`` messages)."""
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def _say_once(what: str) -> None:
    if what not in _said:
        _said.add(what)
        log.info("medialab frame progress: %s", what)


# -- how many middle frames a loop makes (the pack's own rules) ---------------------------------------------
def calls_per_pair(multiplier: int, use_timestep: bool) -> int:
    """Calls of the middle-frame function for one pair: one per middle frame with a timestep; without one, the
    pack halves recursively (``non_timestep_inference``: one call, then two halves)."""
    if use_timestep:
        return max(multiplier - 1, 0)

    def recursive(n: int) -> int:
        return 0 if n <= 0 else 1 if n == 1 else 1 + 2 * recursive(n // 2)

    return recursive(multiplier - 1)


def _skipped(states: Any, pair: int) -> bool:
    return states is not None and bool(states.is_frame_skipped(pair))


def loop_calls(frames: int, multiplier: int, states: Any, use_timestep: bool) -> int:
    """The middle-frame calls of ``_generic_frame_loop`` over ``frames`` frames (pairs ``states`` skips: none)."""
    per_pair = calls_per_pair(multiplier, use_timestep)
    return sum(per_pair for pair in range(frames - 1) if not _skipped(states, pair))


def list_calls(frames: int, multipliers: list[int], states: Any, use_timestep: bool) -> int:
    """``generic_frame_loop`` with a multiplier per pair (missing ones 2, 0 skips the pair): one inner loop of
    two frames per pair, which the pack asks ``states`` about as pair 0."""
    ms = [int(m) for m in multipliers] + [2] * max(frames - len(multipliers) - 1, 0)
    return sum(loop_calls(2, m, states, use_timestep) for m in ms[:max(frames - 1, 0)] if m != 0)


def rife_tasks(frames: int, multiplier: Any, states: Any) -> int:
    """RIFE VFI's middle frames (its ``tasks``): multiplier - 1 for each pair it does not skip."""
    pairs = max(frames - 1, 0)
    ms = [int(multiplier)] * pairs if isinstance(multiplier, int) else \
        [int(m) for m in multiplier] + [2] * max(pairs - len(multiplier), 0)
    return sum(max(ms[pair] - 1, 0) for pair in range(pairs) if not _skipped(states, pair))


# -- the wrappers ----------------------------------------------------------------------------------------
def _has(fn: Any, names: tuple[str, ...]) -> inspect.Signature | None:
    """``fn``'s signature when it takes every parameter in ``names`` (None: not a function of that shape)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return sig if set(names) <= sig.parameters.keys() else None


def _counting(fn: Callable[..., Any], bar: Any) -> Callable[..., Any]:
    @functools.wraps(fn)
    def middle(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        bar.update(1)
        return out

    return middle


def wrap_inner(original: Callable[..., Any], sig: inspect.Signature) -> Callable[..., Any]:
    """``_generic_frame_loop`` reporting one step per middle frame (on the outer bar of a list loop, if any)."""

    @functools.wraps(original)
    def loop(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            bar = getattr(_state, "bar", None)
            if bar is None and a.get("final_logging", True) is not False:  # not one pair of a list loop
                bar = make_bar(loop_calls(len(a["frames"]), int(a["multiplier"]), a["interpolation_states"],
                                          bool(a["use_timestep"])))
            if bar is not None:
                a["return_middle_frame_function"] = _counting(a["return_middle_frame_function"], bar)
            args, kwargs = bound.args, bound.kwargs
        except Exception as exc:  # noqa: BLE001  (the pack's own call is never broken by its progress)
            _say_once(f"no progress for this loop ({type(exc).__name__}: {exc})")
        return original(*args, **kwargs)

    setattr(loop, MARK, original)
    return loop


def wrap_outer(original: Callable[..., Any], sig: inspect.Signature) -> Callable[..., Any]:
    """``generic_frame_loop``: with a list of multipliers, one bar over all its pairs."""

    @functools.wraps(original)
    def loop(*args: Any, **kwargs: Any) -> Any:
        bar = None
        try:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            if isinstance(a["multiplier"], list) and getattr(_state, "bar", None) is None:
                bar = make_bar(list_calls(len(a["frames"]), a["multiplier"], a["interpolation_states"],
                                          bool(a["use_timestep"])))
        except Exception as exc:  # noqa: BLE001
            _say_once(f"no progress for this loop ({type(exc).__name__}: {exc})")
        if bar is None:
            return original(*args, **kwargs)
        _state.bar = bar
        try:
            return original(*args, **kwargs)
        finally:
            _state.bar = None

    setattr(loop, MARK, original)
    return loop


def _is_ifnet(module: Any) -> bool:
    cls = type(getattr(module, "_orig_mod", module))  # torch.compile's wrapper counts as its model
    return cls.__name__ == "IFNet" and cls.__module__.split(".")[-1] == "rife_arch"


def wrap_rife(original: Callable[..., Any], sig: inspect.Signature) -> Callable[..., Any]:
    """``RIFE_VFI.vfi``: a bar of its middle frames, stepped by each IFNet call's batch while it runs."""

    @functools.wraps(original)
    def vfi(*args: Any, **kwargs: Any) -> Any:
        handle = None
        try:
            import torch

            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            bar = make_bar(rife_tasks(len(a["frames"]), a["multiplier"], a["optional_interpolation_states"]))

            def step(module: Any, inputs: Any, _output: Any) -> None:
                if _is_ifnet(module) and not torch.compiler.is_compiling():
                    first = inputs[0] if inputs else None
                    bar.update(int(first.shape[0]) if getattr(first, "shape", None) else 1)

            handle = torch.nn.modules.module.register_module_forward_hook(step)
        except Exception as exc:  # noqa: BLE001
            _say_once(f"no progress for RIFE VFI ({type(exc).__name__}: {exc})")
        try:
            return original(*args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    setattr(vfi, MARK, original)
    return vfi


# -- patching ----------------------------------------------------------------------------------------------
def _patch_vfi_utils(vfi_utils: Any) -> list[str]:
    done = []
    inner = getattr(vfi_utils, "_generic_frame_loop", None)
    if inner is not None and not hasattr(inner, MARK):
        sig = _has(inner, INNER_PARAMS)
        if sig is None:
            _say_once("vfi_utils._generic_frame_loop has other parameters than expected: left alone")
        else:
            vfi_utils._generic_frame_loop = wrap_inner(inner, sig)
            done.append("vfi_utils._generic_frame_loop")
    outer = getattr(vfi_utils, "generic_frame_loop", None)
    if outer is not None and not hasattr(outer, MARK):
        sig = _has(outer, OUTER_PARAMS)
        if sig is None:
            _say_once("vfi_utils.generic_frame_loop has other parameters than expected: left alone")
        else:
            wrapped = wrap_outer(outer, sig)
            for name, module in list(sys.modules.items()):  # the VFI modules imported the name itself
                if getattr(module, "__dict__", {}).get("generic_frame_loop") is outer:  # no lazy __getattr__
                    module.generic_frame_loop = wrapped
                    done.append(f"{name}.generic_frame_loop")
    return done


def _patch_rife(rife: Any) -> list[str]:
    node = getattr(rife, "RIFE_VFI", None)
    vfi = getattr(node, "vfi", None)
    if vfi is None or hasattr(vfi, MARK):
        return []
    code = getattr(vfi, "__code__", None)
    if code is not None and "generic_frame_loop" in code.co_names:  # it reports through the generic loop
        return []
    sig = _has(vfi, RIFE_PARAMS)
    if sig is None:
        _say_once("vfi_models.rife.RIFE_VFI.vfi has other parameters than expected: left alone")
        return []
    node.vfi = wrap_rife(vfi, sig)
    return ["vfi_models.rife.RIFE_VFI.vfi"]


def install(modules: dict[str, Any] | None = None, quiet: bool = False) -> list[str]:
    """Wrap what of the pack is loaded and not wrapped yet; returns what it wrapped. ``quiet``: say nothing when
    the pack is not (yet) loaded."""
    modules = sys.modules if modules is None else modules
    vfi_utils, rife = modules.get("vfi_utils"), modules.get("vfi_models.rife")
    if vfi_utils is None and rife is None:
        if not quiet:
            _say_once("ComfyUI-Frame-Interpolation is not loaded (no vfi_utils module): nothing to report")
        return []
    done = (_patch_vfi_utils(vfi_utils) if vfi_utils is not None else []) + \
        (_patch_rife(rife) if rife is not None else [])
    if done:
        log.info("medialab frame progress: wrapped %s", ", ".join(done))
    return done


def _on_prompt(json_data: Any) -> Any:
    try:
        install()
    except Exception as exc:  # noqa: BLE001  (a prompt is never refused for its progress)
        _say_once(f"not installed ({type(exc).__name__}: {exc})")
    return json_data


def hook() -> None:
    """Inside a running ComfyUI: wrap now what is loaded, and again on each prompt (the pack may load later)."""
    install(quiet=True)
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.add_on_prompt_handler(_on_prompt)
