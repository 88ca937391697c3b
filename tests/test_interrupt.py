"""Nothing is lost: Ctrl-C checkpoints at a whole step and resumes exactly; a full disk or an unwritable
output folder is one line and the last good checkpoint stays loadable."""

from __future__ import annotations

import errno
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from semivit.core import checkpoint as ckpt_module
from semivit.engine.checkpoint import load_checkpoint
from semivit.engine.interrupt import TrainingInterrupted
from semivit.engine.trainer import train
from semivit.errors import SemivitError
from semivit.methods.supervised import Supervised
from tests.conftest import tiny_config


def test_ctrl_c_checkpoints_the_whole_step_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    straight = train(tiny_config(tmp_path / "a", **{"train.ema": 0.9})).model.state_dict()
    original = Supervised.on_step_end

    def press_ctrl_c(self, step):
        original(self, step)
        if step == 3:  # a real SIGINT in the middle of training, between two periodic checkpoints
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Supervised, "on_step_end", press_ctrl_c)
    with pytest.raises(TrainingInterrupted, match=r"interrupted \(SIGINT\) at step 4 of 12.*--resume"):
        train(tiny_config(tmp_path / "b", **{"train.ema": 0.9}))
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.pt")["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    monkeypatch.setattr(Supervised, "on_step_end", original)
    resumed = train(tiny_config(tmp_path / "b", **{"train.ema": 0.9, "train.resume": True})).model.state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_cli_reports_ctrl_c_in_one_line_with_exit_130(tmp_path, monkeypatch, capsys) -> None:
    from semivit.cli import main

    original = Supervised.on_step_end

    def press_ctrl_c(self, step):
        original(self, step)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Supervised, "on_step_end", press_ctrl_c)
    code = main(["train", "--data", "digits", "--labels", "2-per-class", "--model", "vit_nano", "--set",
                 "model.depth=1", "--steps", "5", "--batch-size", "8", "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1].startswith("semivit: interrupted (SIGINT) at step 1 of 5") and "--resume" in err[-1]


def _cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "semivit.cli", *args]


def _wait_for_step(run: Path, proc, step: int = 2, timeout: float = 120.0) -> None:
    """Until the run's metrics.csv shows ``step`` logged rows: training is under way."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        metrics = run / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) > step:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("training did not start")


TRAIN = ("train", "--data", "digits", "--labels", "2-per-class", "--model", "vit_nano", "--set", "model.depth=1",
         "--set", "train.log_every=1", "--set", "train.ckpt_every=100000", "--batch-size", "8", "-q")


@pytest.mark.slow
def test_sigterm_checkpoints_says_how_to_resume_and_exits_143(tmp_path) -> None:
    """A real SIGTERM (what timeout, Kubernetes and SLURM send) to a running ``semivit train``: it acts as
    Ctrl-C: one line, exit 128+15, a checkpoint at a whole step, and --resume finishes the run."""

    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _cli(*TRAIN, "--steps", "100000", "--out", str(tmp_path), "--name", "run")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err[-2000:]
    assert re.match(r"semivit: interrupted \(SIGTERM\) at step (\d+) of 100000; saved .*--resume", lines[-1])
    step = int(re.search(r"at step (\d+)", lines[-1]).group(1))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == step > 0
    done = subprocess.run(_cli(*TRAIN, "--steps", str(step + 2), "--out", str(tmp_path), "--name", "run",
                               "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from step {step}" in done.stderr


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_with_one_checkpoint(tmp_path) -> None:
    """torchrun passes SIGTERM on to its workers; the ranks agree at a log step and rank 0 writes one
    checkpoint for all of them, from which a resumed 2-rank run continues."""

    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541", "-m", "semivit.cli"]
    cmd = [sys.executable, *run, *TRAIN, "--steps", "100000", "--out", str(tmp_path), "--name", "run",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    said = re.findall(r"interrupted \(SIGTERM\) at step (\d+)", err)
    assert said, err[-3000:]
    step = int(said[0])
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == step > 0
    done = subprocess.run([sys.executable, *run, *TRAIN, "--steps", str(step + 2), "--out", str(tmp_path),
                           "--name", "run", "--device", "cpu", "--resume"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {step}" in done.stderr


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def fill_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second checkpoint (step 12) finds the disk full, half-way through
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", fill_disk)
    with pytest.raises(SemivitError, match="No space left on device.*previous last.pt is intact.*--resume"):
        train(tiny_config(tmp_path))
    folder = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(folder / "last.pt")["step"] == 6
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers


def test_unwritable_output_folder_is_one_line(tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder should go")
    with pytest.raises(SemivitError, match="cannot write to the run folder .*writable --out"):
        train(tiny_config(blocker))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MB filesystem (tmpfs, mounted as root), so a full disk is a full disk, not a mocked error."""
    import subprocess

    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Fill ``folder``'s filesystem to the last byte (unbuffered writes: nothing left to flush on close)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    for size in (65536, 1):
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
    os.close(fd)


def test_a_really_full_filesystem_keeps_the_last_good_checkpoint(small_tmpfs, monkeypatch) -> None:
    """torch's zip writer on a full tmpfs raises RuntimeError('[enforce fail at inline_container.cc] ...
    unexpected pos'), which used to pass through as a traceback."""
    original = Supervised.on_step_end

    def fill_after_the_first_checkpoint(self, step):
        original(self, step)
        if step == 7:
            _fill(small_tmpfs)

    monkeypatch.setattr(Supervised, "on_step_end", fill_after_the_first_checkpoint)
    cfg = {"train.steps": 20, "train.ckpt_every": 6, "train.log_every": 20, "train.eval_every": 0}
    with pytest.raises(SemivitError, match=r"cannot write .*last\.pt.*the previous last\.pt is intact.*--resume") as e:
        train(tiny_config(small_tmpfs, **cfg))
    assert "\n" not in str(e.value)
    assert load_checkpoint(small_tmpfs / "run" / "checkpoints" / "last.pt")["step"] == 6


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_not_a_traceback(tmp_path) -> None:
    """``ulimit -f``: a write past the limit fails with EFBIG (Python ignores SIGXFSZ); one line, exit 2."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    cmd = [sys.executable, "-m", "semivit.cli", "train", "--data", "digits", "--labels", "2-per-class", "--model",
           "vit_nano", "--steps", "2", "--out", str(tmp_path), "-q", "--set", "train.tensorboard=false"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].startswith("semivit: error: cannot write") and "Traceback" not in done.stderr
