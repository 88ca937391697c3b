import json
from dataclasses import dataclass

import pytest
import torch

from semivit.cli import _print_metrics
from semivit.engine.checkpoint import load_checkpoint, read_weights
from semivit.engine.trainer import train
from semivit.errors import NonFiniteLossError
from semivit.methods.base import METHODS, Method, StepOutput, register_method
from semivit.methods.supervised import Supervised
from tests.conftest import tiny_config


def test_run_folder_contents(tmp_path):
    result = train(tiny_config(tmp_path))
    run = result.run_dir
    for name in ("config.yaml", "split.json", "metrics.csv", "results.json", "checkpoints/last.pt",
                 "checkpoints/model.safetensors", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert result.metrics["steps"] == 12
    assert "val/top1" in (run / "metrics.csv").read_text()
    # the one test pass: its top-1 is the exported model's on the test images, and test_report.json holds it
    from semivit.data import prepare_data
    from semivit.engine.checkpoint import load_model
    from semivit.engine.evaluate import predict_logits, top1

    model, _ = load_model(run / "checkpoints" / "model.safetensors")
    test = prepare_data(tiny_config(tmp_path).data, 0).test
    assert top1(predict_logits(model, test), test.labels) == pytest.approx(result.metrics["test_top1"], abs=1e-6)
    report = json.loads((run / "test_report.json").read_text())
    assert report["top1"] == result.metrics["test_top1"] and len(report["predictions"]["pred"]) == len(test)


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


@pytest.fixture
def nan_method():
    """Register the NaN method for one test only (a registration at import leaked into every later test's
    METHODS, e.g. the 2-rank test over every registered method)."""
    register_method(_NanAfter)
    yield _NanAfter
    METHODS.pop(_NanAfter.name)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nan_method):
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
    from semivit.engine.stage import total_steps
    from semivit.engine.trainer import Trainer
    from semivit.methods import method_class

    cfg = tiny_config(tmp_path, **{"train.method": method, "train.steps": None, "train.epochs": 2.0,
                                   "method": {"mu": 3} if method == "fixmatch" else {}})
    trainer = Trainer(cfg)
    n = len(getattr(trainer.data.split, pool))
    steps = total_steps(cfg, method_class(method), trainer.params, trainer.data, False)
    assert steps == -(-2 * n // per_step)  # ceil(2 n / per_step)


def test_imprint_classifier_is_the_nearest_normalised_class_mean():
    from semivit.models.heads import imprint_classifier

    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 4
    labels = torch.arange(3).repeat_interleave(5)
    feats = centres[labels] + torch.randn(15, 8)
    head = torch.nn.Linear(8, 4)
    untouched = head.weight[3].clone()
    assert imprint_classifier(head, feats, labels, temperature=0.1) == 3
    unit = torch.nn.functional.normalize(feats, dim=1)
    for c in range(3):  # each row points along its class's mean unit feature
        mean = torch.nn.functional.normalize(unit[labels == c].mean(0), dim=0)
        assert torch.allclose(torch.nn.functional.normalize(head.weight[c], dim=0), mean, atol=1e-6)
    assert torch.equal(head.weight[3], untouched) and torch.all(head.bias == 0)
    # a typical image's logit is its cosine / temperature
    assert head.weight[0].norm().item() == pytest.approx(1 / (0.1 * feats.norm(dim=1).median().item()), rel=1e-5)


def test_head_init_imprint_starts_fine_tuning_at_the_nearest_class_mean(tmp_path):
    """model.head_init=imprint: with the learning rate at 0 the fine-tuned model *is* its starting point, and its
    test top-1 equals a nearest-class-mean classifier computed by hand on the pre-trained features; a random
    head is at chance. A classifier that arrives trained is kept."""
    from semivit.data import prepare_data
    from semivit.engine.checkpoint import load_model, read_export_meta

    first = train(tiny_config(tmp_path, **{"train.name": "pre", "train.steps": 30, "train.method": "mae",
                                           "train.batch_size": 64}))
    weights = str(first.run_dir / "checkpoints" / "model.safetensors")
    assert read_export_meta(weights)["classifier_trained"] is False
    scores = {}
    for init in ("imprint", "random"):
        cfg = tiny_config(tmp_path, **{"train.name": f"ft-{init}", "model.pretrained": weights, "train.steps": 1,
                                       "optim.lr": 0.0, "model.head_init": init, "data.labels": "3-per-class",
                                       "model.drop_path": 0.0})
        scores[init] = train(cfg).metrics["test_top1"]
    pre, _ = load_model(weights)
    pre.eval()
    data = prepare_data(cfg.data, cfg.train.seed)
    labeled = torch.as_tensor(data.split.labeled)
    with torch.no_grad():
        unit = torch.nn.functional.normalize(pre.classifier_input(data.train.get(labeled).float() / 255), dim=1)
        test = torch.nn.functional.normalize(pre.classifier_input(data.test.get(torch.arange(len(data.test)))
                                                                  .float() / 255), dim=1)
    y = data.train.labels[labeled]
    means = torch.stack([unit[y == c].mean(0) for c in range(10)])
    ncm = ((test @ torch.nn.functional.normalize(means, dim=1).T).argmax(1) == data.test.labels).float().mean()
    assert scores["imprint"] == pytest.approx(float(ncm), abs=1e-6)
    assert scores["imprint"] > scores["random"] + 0.2
    # from a run that trained its classifier (the imprinted one, lr 0), imprint again over other labels: kept
    trained = str(tmp_path / "ft-imprint" / "checkpoints" / "model.safetensors")
    assert read_export_meta(trained)["classifier_trained"] is True
    again = train(tiny_config(tmp_path, **{"train.name": "again", "model.pretrained": trained, "train.steps": 1,
                                           "optim.lr": 0.0, "model.head_init": "imprint", "data.labels": "1-per-class",
                                           "model.drop_path": 0.0}))
    assert again.metrics["test_top1"] == pytest.approx(scores["imprint"], abs=1e-6)
    with pytest.raises(Exception, match="head_init"):
        train(tiny_config(tmp_path, **{"train.name": "bad", "model.head_init": "zeros"}))
