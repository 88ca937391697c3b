"""Nothing is lost: Ctrl-C checkpoints at a whole step and resumes exactly; a full disk or an unwritable
output folder is one line and the last good checkpoint stays loadable."""

from __future__ import annotations

import errno
import signal

import pytest
import torch

from semivit.engine import checkpoint as ckpt_module
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
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 4 of 12.*--resume"):
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
    assert code == 130 and err[-1].startswith("semivit: interrupted at step 1 of 5") and "--resume" in err[-1]


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
