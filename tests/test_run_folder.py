"""One run per folder: a second run with the same --name refuses at start (naming the other), a dead run's
lock is taken over, a finished run is never overwritten without --overwrite, and --resume of nothing stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from semivit.cli import main
from semivit.core.runlock import RunLock
from semivit.engine.trainer import train
from semivit.errors import SemivitError
from tests.conftest import tiny_config

TRAIN = ["train", "--data", "digits", "--labels", "2-per-class", "--model", "vit_nano", "--set", "model.depth=1",
         "--batch-size", "8", "-q"]


def test_a_held_folder_is_refused_naming_the_holder_and_freed_after(tmp_path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(SemivitError, match=rf"in use by another run \(pid {os.getpid()} on .*--name"):
            RunLock(tmp_path).__enter__()
        with pytest.raises(SemivitError, match="in use by another run"):
            train(tiny_config(tmp_path.parent, **{"train.name": tmp_path.name}))
    with RunLock(tmp_path) as lock:  # released at the end of the block
        assert lock.held


@pytest.mark.slow
def test_concurrent_cli_runs_refuse_and_a_killed_runs_folder_is_taken_over(tmp_path, capsys) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*TRAIN, "--steps", "100000", "--out", str(tmp_path), "--name", "run", "--set", "train.log_every=1",
            "--set", "train.ckpt_every=2"]
    first = subprocess.Popen([sys.executable, "-m", "semivit.cli", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
        end = time.monotonic() + 120
        while not checkpoint.is_file() and time.monotonic() < end:
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.2)
        assert checkpoint.is_file()
        code = main([*args, "--resume"])  # the same folder while the first run still trains
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert f"in use by another run (pid {first.pid} on " in err[0] and "--name" in err[0]
    finally:
        first.send_signal(signal.SIGKILL)  # dies without releasing anything by itself
        first.communicate(timeout=60)
    code = main([*TRAIN, "--steps", "3", "--out", str(tmp_path), "--name", "run", "--resume"])
    assert code == 0  # the dead run's lock was taken over


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path) -> None:
    cfg = {"train.steps": 2, "train.eval_every": 0}
    train(tiny_config(tmp_path, **cfg))
    results = tmp_path / "run" / "results.json"
    before = results.read_text()
    with pytest.raises(SemivitError, match=r"already holds a finished run: add --resume .* --overwrite"):
        train(tiny_config(tmp_path, **{**cfg, "train.seed": 1}))
    assert results.read_text() == before  # nothing was touched
    train(tiny_config(tmp_path, **{**cfg, "train.seed": 1, "train.overwrite": True}))
    assert results.read_text() != before


def test_resume_of_a_run_that_never_existed_says_so_and_stops(tmp_path, capsys) -> None:
    code = main([*TRAIN, "--steps", "2", "--out", str(tmp_path), "--name", "nothing", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"semivit: error: --resume: there is no run to continue in "
                                 f"'{tmp_path / 'nothing'}' (no checkpoint there): check --out and --name, or "
                                 f"drop --resume to start a new run"]
    assert not (tmp_path / "nothing" / "results.json").exists()
    code = main(["run", "semivit", "--data", "digits", "--out", str(tmp_path), "--name", "none", "--resume", "-q"])
    assert code == 2 and "there is no run to continue" in capsys.readouterr().err
