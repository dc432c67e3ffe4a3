"""The progress parser on the real sd-scripts output captured in tests/data/sd_scripts (see SD_SCRIPTS.md)."""

import random
from pathlib import Path

import pytest

from orchestrator.training.core.progress import ProgressParser, TrainingEvent, clock_s
from orchestrator.training.runtime.runner import failure_text

DATA = Path(__file__).parent.parent / "data" / "sd_scripts"


def captured(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def parse(text: str, chunk: int | None = None, seed: int = 0) -> tuple[list[TrainingEvent], ProgressParser]:
    parser = ProgressParser()
    if chunk is None:
        return parser.feed(text) + parser.close(), parser
    rnd, events, i = random.Random(seed), [], 0
    while i < len(text):
        n = rnd.randint(1, chunk)
        events += parser.feed(text[i:i + n])
        i += n
    return events + parser.close(), parser


def of(events, kind):
    return [e for e in events if e.kind == kind]


def test_run1_progress_from_stderr():
    events, _ = parse(captured("run1.stderr.txt"))
    bars = of(events, "progress")
    assert [(e.step, e.total, e.loss) for e in bars] == [
        (0, 2, None), (1, 2, None), (1, 2, 1.09), (2, 2, 1.09), (2, 2, 1.13), (2, 2, 1.13)]
    first, second = bars[1], bars[2]
    assert first.loss is None  # avr_loss is absent from the first update
    assert first.rate == pytest.approx(1 / 1.21) and first.eta_s == 1.0  # "1.21s/it" -> steps per second
    assert second.loss == 1.09
    # the other tqdm bars (image sizes, captions, pipeline loading) are not training progress
    assert all(e.total == 2 for e in bars)
    warnings = [e.message for e in of(events, "log")]
    assert "WARNING: Failed to get git commit" in warnings


def test_run1_stdout_epoch_and_final_checkpoint():
    events, parser = parse(captured("run1.stdout.txt"))
    assert [(e.kind, e.step, e.total, e.path) for e in events] == [
        ("epoch", 1, 1, None), ("checkpoint", None, None, "RUN/out1/tinylora.safetensors")]
    assert parser.tail[-1] == "saving checkpoint: RUN/out1/tinylora.safetensors"


def test_run2_checkpoints_samples_epochs():
    events, parser = parse(captured("run2.stdout.txt"))
    assert [e.path for e in of(events, "checkpoint")] == [
        "RUN/out2/tl2-step00000003.safetensors", "RUN/out2/tl2-000001.safetensors",
        "RUN/out2/tl2-step00000006.safetensors", "RUN/out2/tl2.safetensors"]
    assert [e.step for e in of(events, "sample")] == [4, 8]
    assert [(e.step, e.total) for e in of(events, "epoch")] == [(1, 2), (2, 2)]
    assert parser.checkpoints[-1] == "RUN/out2/tl2.safetensors"


def test_run2_stderr_progress_between_sampling_bars():
    events, _ = parse(captured("run2.stderr.txt"))
    bars = of(events, "progress")
    assert [e.step for e in bars] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 8]
    assert {e.total for e in bars} == {8}  # the sampler's own 2-step bars are left out
    assert bars[-1].loss == 1.09 and bars[1].eta_s == 30.0 and bars[1].rate == pytest.approx(1 / 4.43)


@pytest.mark.parametrize("name", ["run1.stderr.txt", "run1.stdout.txt", "run2.stderr.txt", "run2.stdout.txt"])
@pytest.mark.parametrize("chunk", [1, 7, 300])
def test_chunking_does_not_matter(name, chunk):
    text = captured(name)
    whole, _ = parse(text)
    assert parse(text, chunk=chunk, seed=chunk)[0] == whole


def test_a_bar_is_reported_while_it_is_still_on_screen():
    parser = ProgressParser()
    assert parser.feed("\rsteps:  50%|#####     | 1/2 [00:01<00:01,  1.21s/it, avr_l") == []
    (event,) = parser.feed("oss=1.09]")  # complete: reported before the next \r arrives
    assert (event.step, event.loss) == (1, 1.09)
    assert parser.feed("\r") == []  # and not a second time when it is closed
    (done,) = parser.feed("steps: 100%|##########| 2/2 [00:02<00:00,  1.50it/s, avr_loss=1.13]")
    assert done.rate == 1.5 and done.eta_s == 0.0


def test_traceback_is_kept_and_the_launcher_error_passed_over():
    text = ("epoch 1/1\n"
            "Traceback (most recent call last):\n"
            '  File "train_network.py", line 10, in <module>\n'
            "    trainer.train(args)\n"
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
            "Traceback (most recent call last):\n"
            '  File "accelerate/commands/launch.py", line 1, in <module>\n'
            "subprocess.CalledProcessError: Command '['python', 'train_network.py']' returned non-zero exit "
            "status 1.\n")
    events, parser = parse(text)
    assert parser.traceback[-1] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert failure_text(parser, ProgressParser()).startswith("Traceback (most recent call last):")
    assert failure_text(ProgressParser(), parser).endswith(parser.traceback[-1])  # whichever stream has it
    assert "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in [e.message for e in of(events, "log")]


def test_chained_tracebacks_stay_together():
    text = ("Traceback (most recent call last):\n  x\nKeyError: 'a'\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  y\nValueError: b\n")
    _, parser = parse(text)
    assert parser.traceback[0] == "Traceback (most recent call last):" and parser.traceback[-1] == "ValueError: b"
    assert "KeyError: 'a'" in parser.traceback


def test_empty_dataset_message_is_a_log_event():
    events, parser = parse("No data found. Please verify arguments (train_data_dir must be the parent)\n")
    assert events[0].kind == "log" and events[0].message.startswith("No data found")
    assert failure_text(parser, ProgressParser()).startswith("No data found")


def test_failure_text_prefers_a_traceback_then_the_last_lines_of_both_streams():
    _, out = parse("epoch 1/1\nTraceback (most recent call last):\n  x\nValueError: out\n")
    _, err = parse("Traceback (most recent call last):\n  y\nKeyError: 'err'\n")
    assert failure_text(out, err).endswith("KeyError: 'err'")  # stderr's traceback first
    assert failure_text(out, ProgressParser()).endswith("ValueError: out")
    (_, a), (_, b) = parse("line a\n"), parse("line b\n")
    assert failure_text(a, b) == "line a\nline b"


def test_clock():
    assert clock_s("00:30") == 30 and clock_s("1:02:03") == 3723 and clock_s("?") is None


def test_a_multi_line_exception_message_is_kept():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
            "RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel:\n"
            "\tMissing key(s) in state_dict: \"down_blocks.2.attentions.0\".\n"
            "\tUnexpected key(s) in state_dict: \"up_blocks.1.x\".\n"
            "steps done\n\tnot part of it\n")
    _, parser = parse(text)
    assert parser.traceback[-2:] == ['\tMissing key(s) in state_dict: "down_blocks.2.attentions.0".',
                                     '\tUnexpected key(s) in state_dict: "up_blocks.1.x".']
