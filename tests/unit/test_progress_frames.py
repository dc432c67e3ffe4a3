"""custom_nodes/frame_progress.py: the node pack's progress for ComfyUI-Frame-Interpolation's frame loops.

The modules below are STAND-INS for that third-party pack (``vfi_utils``, ``vfi_models.cain``,
``vfi_models.rife``, ``vfi_models.rife.rife_arch``), written here with the same function signatures and call
pattern as the pack at commit 26545cc (its middle-frame function once per middle frame; RIFE VFI's own loop
calling IFNet on batches), with plain values for frames. The real pack runs in the RIFE end to end test
(tests/integration/test_template_library.py) when MEDIALAB_TEST_CUSTOM_NODES points at it."""

from __future__ import annotations

import logging
import sys
import types
import typing
from typing import Any

import pytest
import torch

from custom_nodes import frame_progress


class Bar:
    """Stands in for comfy.utils.ProgressBar."""

    made: typing.ClassVar[list[Bar]] = []

    def __init__(self, total: int) -> None:
        self.total, self.current, self.updates = total, 0, []
        Bar.made.append(self)

    def update(self, value: int) -> None:
        self.current = min(self.current + value, self.total)
        self.updates.append(self.current)


class States:  # the pack's InterpolationStateList: skips the pairs listed
    def __init__(self, skip: list[int]) -> None:
        self.skip = skip

    def is_frame_skipped(self, i: int) -> bool:
        return i in self.skip


def stand_in_vfi_utils() -> types.ModuleType:
    m = types.ModuleType("vfi_utils")

    def _generic_frame_loop(frames, clear_cache_after_n_frames, multiplier, return_middle_frame_function,  # noqa: ANN001, ANN202
                            *return_middle_frame_function_args, interpolation_states=None, use_timestep=True,
                            dtype=None, batch_size=1, final_logging=True):
        def non_timestep_inference(f0, f1, n):  # noqa: ANN001, ANN202
            middle = return_middle_frame_function(f0, f1, None, *return_middle_frame_function_args)
            if n == 1:
                return [middle]
            first, second = non_timestep_inference(f0, middle, n // 2), non_timestep_inference(middle, f1, n // 2)
            return [*first, middle, *second] if n % 2 else [*first, *second]

        out = []
        for i in range(len(frames) - 1):
            out.append(frames[i])
            if interpolation_states is not None and interpolation_states.is_frame_skipped(i):
                continue
            if use_timestep:
                out += [return_middle_frame_function(frames[i], frames[i + 1], k / multiplier,
                                                     *return_middle_frame_function_args) for k in range(1, multiplier)]
            else:
                out += non_timestep_inference(frames[i], frames[i + 1], multiplier - 1)
        return [*out, frames[-1]]

    def generic_frame_loop(model_name, frames, clear_cache_after_n_frames, multiplier, return_middle_frame_function,  # noqa: ANN001, ANN202
                           *return_middle_frame_function_args, interpolation_states=None, use_timestep=True,
                           dtype=None, batch_size=1):
        if isinstance(multiplier, int):  # looked up in the module when called, as in the pack
            return m._generic_frame_loop(frames, clear_cache_after_n_frames, multiplier,
                                         return_middle_frame_function, *return_middle_frame_function_args,
                                         interpolation_states=interpolation_states, use_timestep=use_timestep,
                                         dtype=dtype, batch_size=batch_size)
        ms = [*map(int, multiplier), *[2] * (len(frames) - len(multiplier) - 1)]
        out = []
        for i in range(len(frames) - 1):
            if ms[i] == 0:
                continue
            part = m._generic_frame_loop(frames[i:i + 2], clear_cache_after_n_frames, ms[i],
                                         return_middle_frame_function, *return_middle_frame_function_args,
                                         interpolation_states=interpolation_states, use_timestep=use_timestep,
                                         dtype=dtype, batch_size=batch_size, final_logging=False)
            out += part if i == len(frames) - 2 else part[:-1]
        return out

    m._generic_frame_loop, m.generic_frame_loop = _generic_frame_loop, generic_frame_loop
    return m


def stand_in_cain(vfi_utils: types.ModuleType) -> types.ModuleType:
    m = types.ModuleType("vfi_models.cain")
    m.generic_frame_loop = vfi_utils.generic_frame_loop  # ``from vfi_utils import generic_frame_loop``

    class CAIN_VFI:  # noqa: N801
        def vfi(self, frames, multiplier=2, states=None, use_timestep=True):  # noqa: ANN001, ANN201
            def middle(f0, f1, t, scale):  # noqa: ANN001, ANN202
                return (f0 + f1) / 2 * scale

            return m.generic_frame_loop(type(self).__name__, frames, 10, multiplier, middle, 1.0,
                                        interpolation_states=states, use_timestep=use_timestep)

    m.CAIN_VFI = CAIN_VFI
    return m


def stand_in_rife() -> tuple[types.ModuleType, types.ModuleType]:
    arch = types.ModuleType("vfi_models.rife.rife_arch")

    class IFNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)  # a submodule: its calls are not counted

        def forward(self, img0, img1, timestep, scale_list, fast_mode, ensemble):  # noqa: ANN001, ANN201, ARG002
            return self.conv(img0 * (1 - timestep) + img1 * timestep)

    IFNet.__module__ = arch.__name__
    arch.IFNet = IFNet
    rife = types.ModuleType("vfi_models.rife")

    class RIFE_VFI:  # noqa: N801
        def vfi(self, ckpt_name, frames, clear_cache_after_n_frames=10, multiplier=2, fast_mode=False,  # noqa: ANN001, ANN201
                ensemble=False, scale_factor=1.0, dtype="float32", torch_compile=False, batch_size=1,
                optional_interpolation_states=None, **kwargs):
            model = IFNet()
            pairs = len(frames) - 1
            tasks = [(i, s / multiplier) for i in range(pairs) for s in range(1, multiplier)
                     if optional_interpolation_states is None or not optional_interpolation_states.is_frame_skipped(i)]
            out = []
            with torch.inference_mode():
                for pos in range(0, len(tasks), batch_size):
                    batch = tasks[pos:pos + batch_size]
                    f0 = torch.cat([frames[i:i + 1] for i, _ in batch])
                    f1 = torch.cat([frames[i + 1:i + 2] for i, _ in batch])
                    t = torch.tensor([dt for _, dt in batch]).view(-1, 1, 1, 1)
                    out.append(model(f0, f1, t, [1.0], fast_mode, ensemble))
            return (torch.cat([frames, *out]),)

    rife.RIFE_VFI = RIFE_VFI
    return rife, arch


@pytest.fixture
def pack(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    """The stand-in modules in sys.modules (as the pack loads them), bars recorded instead of sent."""
    vfi_utils = stand_in_vfi_utils()
    rife, arch = stand_in_rife()
    modules = {"vfi_utils": vfi_utils, "vfi_models.cain": stand_in_cain(vfi_utils), "vfi_models.rife": rife,
               "vfi_models.rife.rife_arch": arch}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(frame_progress, "make_bar", Bar)
    monkeypatch.setattr(frame_progress, "_said", set())
    Bar.made = []
    return modules


def test_generic_loop_reports_a_step_per_middle_frame(pack: dict[str, types.ModuleType]) -> None:
    original = pack["vfi_utils"]._generic_frame_loop
    done = frame_progress.install()
    assert "vfi_utils._generic_frame_loop" in done and "vfi_models.cain.generic_frame_loop" in done
    assert frame_progress.install() == []  # once
    frames = [float(i) for i in range(5)]
    out = pack["vfi_models.cain"].CAIN_VFI().vfi(frames, multiplier=3)
    assert out == original(frames, 10, 3, lambda f0, f1, t, s: (f0 + f1) / 2 * s, 1.0)  # the pack's result
    (bar,) = Bar.made
    assert bar.total == 8 and bar.updates == list(range(1, 9))  # 4 pairs x 2 middle frames


def test_skipped_pairs_and_the_recursive_path_are_counted_as_the_pack_runs_them(pack: dict[str, Any]) -> None:
    frame_progress.install()
    cain = pack["vfi_models.cain"].CAIN_VFI()
    cain.vfi([0.0, 1.0, 2.0, 3.0], multiplier=2, states=States([1]))
    assert (Bar.made[-1].total, Bar.made[-1].current) == (2, 2)
    cain.vfi([0.0, 1.0, 2.0], multiplier=4, use_timestep=False)  # 3 middle frames: 1 + 2 x 1 calls a pair
    assert (Bar.made[-1].total, Bar.made[-1].current) == (6, 6)


def test_a_multiplier_per_pair_gets_one_bar_over_all_pairs(pack: dict[str, Any]) -> None:
    frame_progress.install()
    out = pack["vfi_models.cain"].CAIN_VFI().vfi([0.0, 1.0, 2.0, 3.0], multiplier=[3, 0])  # the third pair: 2
    assert len(out) == 3 + 1 + 2  # pair 0: 0, two middles; pair 1 skipped; pair 2: 2, one middle, 3
    (bar,) = Bar.made
    assert bar.total == 3 and bar.updates == [1, 2, 3]


def test_rife_reports_its_middle_frames_by_batch(pack: dict[str, Any]) -> None:
    assert "vfi_models.rife.RIFE_VFI.vfi" in frame_progress.install()
    frames = torch.rand(6, 3, 4, 4)
    (out,) = pack["vfi_models.rife"].RIFE_VFI().vfi(ckpt_name="rife47.pth", frames=frames, multiplier=3,
                                                    batch_size=4)
    assert out.shape[0] == 6 + 10
    (bar,) = Bar.made
    assert bar.total == 10 and bar.updates == [4, 8, 10]  # 5 pairs x 2 middle frames, in batches of 4
    assert not torch.nn.modules.module._global_forward_hooks  # the hook is there only while the node runs
    pack["vfi_models.rife"].RIFE_VFI().vfi("rife47.pth", frames, 10, 2, optional_interpolation_states=States([0, 4]))
    assert (Bar.made[-1].total, Bar.made[-1].updates) == (3, [1, 2, 3])


def test_a_loop_of_another_shape_is_left_alone(pack: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    def other(frames, multiplier):  # noqa: ANN001, ANN202
        return frames

    pack["vfi_utils"]._generic_frame_loop = other
    pack["vfi_models.rife"].RIFE_VFI.vfi = lambda self, frames: (frames,)
    with caplog.at_level(logging.INFO, logger=frame_progress.__name__):
        done = frame_progress.install()
        frame_progress.install()
    assert "vfi_utils._generic_frame_loop" not in done and "vfi_models.rife.RIFE_VFI.vfi" not in done
    assert pack["vfi_utils"]._generic_frame_loop is other
    said = [r.getMessage() for r in caplog.records if "left alone" in r.getMessage()]
    assert len(said) == 2  # one line each, not one per install
    assert pack["vfi_models.rife"].RIFE_VFI().vfi([1]) == ([1],)


def test_a_failing_bar_never_breaks_the_loop(pack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(total: int) -> Bar:
        raise RuntimeError("no hook")

    monkeypatch.setattr(frame_progress, "make_bar", broken)
    frame_progress.install()
    assert len(pack["vfi_models.cain"].CAIN_VFI().vfi([0.0, 1.0, 2.0])) == 5
    assert pack["vfi_models.rife"].RIFE_VFI().vfi("rife47.pth", torch.rand(2, 3, 4, 4))[0].shape[0] == 3


def test_without_the_pack_nothing_is_patched(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(frame_progress, "_said", set())
    with caplog.at_level(logging.INFO, logger=frame_progress.__name__):
        assert frame_progress.install({}, quiet=True) == []
        assert frame_progress.install({}) == [] and frame_progress.install({}) == []
    assert len([r for r in caplog.records if "not loaded" in r.getMessage()]) == 1
    assert frame_progress._on_prompt({"prompt": {}}) == {"prompt": {}}  # a prompt passes through untouched
