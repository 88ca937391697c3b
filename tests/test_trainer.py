import json
from dataclasses import dataclass

import pytest
import torch

from semivit.cli import _print_metrics
from semivit.engine.checkpoint import load_checkpoint, read_weights
from semivit.engine.trainer import train
from semivit.errors import NonFiniteLossError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.supervised import Supervised
from tests.conftest import tiny_config


def test_run_folder_contents(tmp_path):
    result = train(tiny_config(tmp_path))
    run = result.run_dir
    for name in ("config.yaml", "split.json", "metrics.csv", "results.json", "checkpoints/last.pt",
                 "checkpoints/model.safetensors", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert result.metrics["steps"] == 12 and 0 <= result.metrics["test_top1"] <= 1
    assert "val/top1" in (run / "metrics.csv").read_text()


def test_resume_gives_the_same_weights(tmp_path, monkeypatch):
    straight = train(tiny_config(tmp_path / "a", **{"train.ema": 0.9})).model.state_dict()

    original = Supervised.on_step_end

    def interrupt(self, step):
        original(self, step)
        if step == 8:  # after the checkpoint at step 6, mid-way to the next one
            raise KeyboardInterrupt

    monkeypatch.setattr(Supervised, "on_step_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "b", **{"train.ema": 0.9}))
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.pt")["step"] == 6
    monkeypatch.setattr(Supervised, "on_step_end", original)
    resumed = train(tiny_config(tmp_path / "b", **{"train.ema": 0.9, "train.resume": True})).model.state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


@dataclass
class _NoParams:
    nan_at: int = 7


@register_method
class _NanAfter(Supervised):
    """A supervised method whose loss turns NaN at a chosen step (to test the guard)."""

    name = "_test_nan"
    Params = _NoParams
    labeled_views = ("weak",)

    def __init__(self, *args, **kwargs):
        Method.__init__(self, *args, **kwargs)

    def training_step(self, batch, step):
        logits = self.model(batch.x["weak"])
        loss = torch.nn.functional.cross_entropy(logits, batch.y)
        if step >= self.params.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # on CPU the loss is checked every step (a GPU checks at log and checkpoint steps, to avoid host syncs)
    cfg = tiny_config(tmp_path, **{"train.method": "_test_nan", "train.ckpt_every": 5, "train.device": "cpu"})
    with pytest.raises(NonFiniteLossError, match="NaN or infinite by step 8"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "checkpoints" / "model.safetensors").exists()


def test_exported_model_carries_its_spec(tmp_path):
    train(tiny_config(tmp_path))
    tensors, meta = read_weights(tmp_path / "run")
    assert meta["semivit_spec"]["num_classes"] == 10 and meta["semivit_spec"]["in_chans"] == 1
    assert "mean" in tensors


@pytest.mark.parametrize("val,counts", [
    # 'auto' validates on labeled images beyond --labels: 5 per class train, 13 more per class validate
    ("auto", (50, 130, 180, "extra")),
    # held out of the labels: '--labels 5-per-class' is every label the run sees
    ("1-per-class-of-labels", (40, 10, 50, "labels"))])
def test_results_and_summary_count_training_and_validation_labels(tmp_path, capsys, val, counts):
    result = train(tiny_config(tmp_path, **{"data.val": val, "train.steps": 3, "train.eval_every": 0}))
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert (saved["labeled"], saved["val_labeled"], saved["labels_total"], saved["val_from"]) == counts
    split = json.loads((result.run_dir / "split.json").read_text())
    assert (len(split["labeled"]), len(split["val"])) == counts[:2]
    _print_metrics(result.metrics, result.run_dir)
    train_n, val_n, total, _ = counts
    assert f"labels used: {total} = {train_n} training + {val_n} validation (" in capsys.readouterr().out


def test_compile_setting_compiles_the_trained_network(tmp_path, monkeypatch):
    """train.compile compiles the network in place (the eager backend here: inductor takes a minute on a CPU);
    checkpoints keep the plain module's keys, so a compiled run resumes and exports like any other."""
    compiled = []
    real = torch.nn.Module.compile

    def eager_compile(self, **kwargs):
        compiled.append(self)
        real(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    result = train(tiny_config(tmp_path, **{"train.compile": True, "train.steps": 4, "train.eval_every": 0}))
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is not None
    weights, _ = read_weights(result.run_dir / "checkpoints" / "model.safetensors")
    assert not any("_orig_mod" in k for k in weights)


@pytest.mark.parametrize("method,pool,per_step", [("supervised", "labeled", 16), ("fixmatch", "unlabeled", 16 * 3),
                                                 ("mae", "unlabeled", 16)])
def test_epochs_count_the_pool_the_method_learns_from(tmp_path, method, pool, per_step):
    from semivit.engine.trainer import Trainer
    from semivit.methods import method_class

    cfg = tiny_config(tmp_path, **{"train.method": method, "train.steps": None, "train.epochs": 2.0,
                                   "method": {"mu": 3} if method == "fixmatch" else {}})
    trainer = Trainer(cfg)
    n = len(getattr(trainer.data.split, pool))
    assert trainer._total_steps(method_class(method)) == -(-2 * n // per_step)  # ceil(2 n / per_step)
