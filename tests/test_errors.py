"""Every bad input the `bench` command refuses gets exactly one `bench: error:` line: no traceback, no usage text,
nothing printed before it (issue 28). Each case asserts the exit code, the one line and what it says.

In-process through `bench.cli.main` where that is cheap; one case runs as a user runs it, in a subprocess, because
Lightning's loggers write to the terminal the process started with (capsys does not see them).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_bench

RECORDS = Path(__file__).parent / "fixtures" / "records"
NO_GPU = not torch.cuda.is_available()
LOCAL = ["fit", "--data", "LocalFolder", "--data.data_dir", "{tmp}/data", "--trainer.logger", "false"]


def _absurd_npy(path: Path) -> None:
    """A .npy whose header promises 10^15 images of 8x8 bytes over 100 bytes of data."""
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000000, 8, 8), }"
    header += b" " * (118 - len(header)) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(100))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working folder holding what the cases name: a plain file, data files, a FIFO; each FIFO is unblocked after
    20 s, so code that wrongly opens one fails the test instead of hanging it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder\n")
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "images.npy", np.zeros((20, 8, 8), np.uint8))
    np.save(data / "labels.npy", np.arange(20) % 10)
    np.save(data / "no_images.npy", np.zeros((0, 8, 8), np.uint8))
    np.save(data / "no_labels.npy", np.zeros((0,), np.int64))
    np.save(data / "huge_labels.npy", np.full(20, 10**12, np.int64))
    _absurd_npy(data / "absurd.npy")
    fifos = [tmp_path / "fifo.yaml", data / "fifo.npy", tmp_path / "fifo_checkpoint"]
    for fifo in fifos:
        os.mkfifo(fifo)

    def unblock() -> None:
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody is reading it: as it should be
                pass

    timer = threading.Timer(20, unblock)
    timer.start()
    yield tmp_path
    timer.cancel()


def _assert_one_error_line(output: str, message: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("bench: error: ") and message in lines[0], lines[0]
    return lines[0]


CASES = {
    # Lightning's refusals of trainer settings
    "accelerator gpu without a GPU": (["fit", "--trainer.accelerator", "gpu"], 1, "use --trainer.accelerator cpu"),
    "strategy fsdp without a GPU": (["fit", "--trainer.strategy", "fsdp"], 1, "use --trainer.strategy auto"),
    "unwritable default_root_dir": (
        ["fit", "--trainer.default_root_dir", "{tmp}/a_file/runs"],
        1,
        "--trainer.default_root_dir {tmp}/a_file/runs is not writable",
    ),
    "a word for a number": (["fit", "--model.lr", "fast"], 2, "--model.lr: expected float or null, got 'fast'"),
    # configs that are not regular files are refused, not read
    "FIFO as --config": (["fit", "--config", "fifo.yaml"], 1, "config fifo.yaml is a FIFO (named pipe)"),
    "device as --config": (["fit", "--config", "/dev/zero"], 1, "config /dev/zero is a device"),
    "FIFO as evaluate --config": (["evaluate", "x.ckpt", "--config", "fifo.yaml"], 1, "is a FIFO"),
    "FIFO as a checkpoint": (["evaluate", "fifo_checkpoint"], 1, "checkpoint fifo_checkpoint is a FIFO (named pipe)"),
    # data files
    ".npy with an absurd header": (
        [*LOCAL, "--data.images", "absurd.npy", "--data.labels", "labels.npy"],
        1,
        "header promises shape (1000000000000000, 8, 8)",
    ),
    "zero images": ([*LOCAL, "--data.images", "no_images.npy", "--data.labels", "no_labels.npy"], 1, "holds no images"),
    "huge labels": (
        [*LOCAL, "--data.images", "images.npy", "--data.labels", "huge_labels.npy"],
        1,
        "1000000000001 classes (1 + the largest label) is more than 100,000",
    ),
    "FIFO as a data file": ([*LOCAL, "--data.images", "fifo.npy", "--data.labels", "labels.npy"], 1, "is a FIFO"),
    # bench evaluate on a machine without the device asked for
    "evaluate --device cuda without a GPU": (
        ["evaluate", "x.ckpt", "--device", "cuda"],
        1,
        "--device cuda: this machine has no usable GPU; use --device cpu",
    ),
    "evaluate --device not a device": (["evaluate", "x.ckpt", "--device", "gpu0"], 1, "--device gpu0: not a device"),
    # bench leaderboard: its output folder and its arguments
    "leaderboard --out a file": (
        ["leaderboard", "--records", str(RECORDS), "--out", "a_file"],
        1,
        "leaderboard folder a_file is a file",
    ),
    "leaderboard --out under a file": (
        ["leaderboard", "--records", str(RECORDS), "--out", "a_file/board"],
        1,
        "cannot create the leaderboard folder a_file/board",
    ),
    "leaderboard unknown option": (
        ["leaderboard", "--frobnicate"],
        2,
        "bench leaderboard: unrecognized arguments: --frobnicate",
    ),
    "leaderboard --records without a value": (
        ["leaderboard", "--records"],
        2,
        "argument --records: expected at least one",
    ),
    # bench sweep's arguments
    "sweep without a sweep": (["sweep"], 2, "bench sweep: the following arguments are required: sweep"),
    "sweep bad --slurm_parameters": (["sweep", "x", "--slurm_parameters", "[1]"], 2, "must be a JSON object"),
}
NEEDS_NO_GPU = {"accelerator gpu without a GPU", "strategy fsdp without a GPU", "evaluate --device cuda without a GPU"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, workspace, capsys):
    if case in NEEDS_NO_GPU and not NO_GPU:
        pytest.skip("the case is a machine without a GPU")
    args, expected_code, message = CASES[case]
    tmp = str(workspace)
    code, output = run_bench([arg.replace("{tmp}", tmp) for arg in args], capsys)
    assert code == expected_code, output[-3000:]
    _assert_one_error_line(output, message.replace("{tmp}", tmp))
    assert not list(workspace.rglob("*.json")) and not list(workspace.rglob("*.ckpt"))  # nothing was run


def test_lightning_refusal_is_the_only_thing_printed(tmp_path):
    """As a user runs it: Lightning's "Seed set to 0" and its own traceback used to come first."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }
    run = subprocess.run(
        [sys.executable, "-m", "bench.cli", "fit", "--trainer.max_epochs", "-5"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stdout == "", run.stdout + run.stderr
    refusal = "Lightning refused the trainer settings: `max_epochs` must be a non-negative integer"
    line = _assert_one_error_line(run.stderr, refusal)
    assert "change the --trainer option it names" in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_checkpoint_written_on_a_gpu_is_read_on_the_cpu(tmp_path):
    """Storages tagged cuda:0 (as torch.save writes them on a GPU) are mapped to the CPU, not refused by torch."""
    from torch import serialization

    from bench.checkpoints import read_checkpoint

    def as_if_on_gpu(obj):
        return "cuda:0" if getattr(obj, "device", None) is not None and obj.device.type == "cpu" else None

    serialization.register_package(1, as_if_on_gpu, lambda obj, location: None)
    try:
        torch.save({"state_dict": {"weight": torch.ones(3)}}, tmp_path / "gpu.ckpt")
    finally:
        serialization._package_registry[:] = [
            entry for entry in serialization._package_registry if entry[1] is not as_if_on_gpu
        ]
    if NO_GPU:
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really names a GPU
            torch.load(tmp_path / "gpu.ckpt", weights_only=True)
    raw = read_checkpoint(str(tmp_path / "gpu.ckpt"))
    assert raw["state_dict"]["weight"].device.type == "cpu" and raw["state_dict"]["weight"].sum() == 3
