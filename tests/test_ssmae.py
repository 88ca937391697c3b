"""SSMAE: the validation gate, the acceptance rule, the pseudo-label memory across resume, and that the
test set is never read while training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semivit.data import prepare_data
from semivit.data.loaders import Batch
from semivit.engine.checkpoint import load_checkpoint
from semivit.engine.stage_eval import StageEvaluation
from semivit.engine.trainer import Trainer, train
from semivit.methods.ssmae import SSMAE
from tests.conftest import tiny_config


def ssmae_config(tmp_path, **overrides):
    base = {"train.method": "ssmae", "train.batch_size": 8, "method.mu": 2, "method.decoder_dim": 32,
            "method.decoder_depth": 1, "method.decoder_heads": 2, "train.steps": 12}
    return tiny_config(tmp_path, **{**base, **overrides})


def test_gate_rule_counts_only_confident_validation_images():
    labels = torch.tensor([0, 1, 2, 0])
    sure, unsure = 10.0, 0.1
    # two confident predictions, one of them wrong: 50% < 70%, shut
    logits = torch.tensor([[sure, 0, 0], [0, 0, sure], [unsure, 0, 0], [0, unsure, 0]])
    assert SSMAE.gate_rule(logits, labels, 0.95, 0.70) == (False, 0.5, 2)
    # the confident ones right, the unconfident ones wrong: 100% ≥ 70%, open
    logits = torch.tensor([[sure, 0, 0], [0, sure, 0], [unsure, 0, 0], [0, unsure, 0]])
    assert SSMAE.gate_rule(logits, labels, 0.95, 0.70) == (True, 1.0, 2)
    # nothing confident: shut (min_confident 1)
    assert SSMAE.gate_rule(torch.zeros(4, 3), labels, 0.95, 0.70) == (False, 0.0, 0)


def test_acceptance_needs_agreement_and_two_confident_views():
    weak = torch.tensor([[9.0, 0, 0], [9.0, 0, 0], [9.0, 0, 0], [0.5, 0, 0]])
    strong = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0.5, 0, 0], [9.0, 0, 0]])
    accepted, label = SSMAE.accept(weak, strong, threshold=0.95)
    assert accepted.tolist() == [True, False, False, False]
    assert label[0] == 0


def test_gate_stays_shut_while_the_rule_fails_then_opens_and_latches(tmp_path):
    trainer = Trainer(ssmae_config(tmp_path, **{"train.steps": 1, "method.gate_latch": True}))
    method = SSMAE(trainer.build_model(), trainer.params, 3, 10)
    labels = torch.tensor([0, 1])
    wrong = torch.tensor([[0, 9.0, 0], [9.0, 0, 0]])
    right = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])
    assert method.on_validation(1, wrong, labels)["open"] == 0.0
    assert method.on_validation(2, right, labels)["open"] == 1.0
    assert method.on_validation(3, wrong, labels)["open"] == 1.0  # latched
    method.params.gate_latch = False
    assert method.on_validation(4, wrong, labels)["open"] == 0.0


def _val_logits(n: int, confident: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` validation images of 3 classes; the first ``confident`` are predicted with confidence ~1, the
    first ``right`` of those correctly; the rest are unconfident."""
    labels = torch.arange(n) % 3
    logits = torch.zeros(n, 3)
    for i in range(confident):
        logits[i, int(labels[i]) if i < right else (int(labels[i]) + 1) % 3] = 12.0
    return logits, labels


def test_gate_does_not_open_on_one_confident_image_and_is_rechecked(tmp_path):
    """Issue 19, finding 3: with the old defaults (at least 1 confident image, latched) a single confident
    validation image opened the gate for good. Now: at least 10 confident images (at most half the split),
    no check before `gate_start`, and every check re-sets the gate, as the reference re-checks every epoch
    (main.py L241–253)."""
    trainer = Trainer(ssmae_config(tmp_path, **{"train.steps": 1}))
    method = SSMAE(trainer.build_model(), trainer.params, 3, 1000)  # gate_start 0.1 → step 100
    assert (method.params.gate_min_confident, method.params.gate_latch, method.gate_start_step) == (10, False, 100)
    one = _val_logits(100, confident=1, right=1)
    assert method.on_validation(200, *one)["open"] == 0.0  # one right confident image is not enough
    many = _val_logits(100, confident=12, right=12)
    assert method.on_validation(50, *many)["open"] == 0.0  # before gate_start: shut
    assert method.on_validation(200, *many)["open"] == 1.0
    assert method.on_validation(300, *_val_logits(100, confident=12, right=6))["open"] == 0.0  # re-checked
    # a tiny validation split needs at most half of its images confident
    assert method.on_validation(400, *_val_logits(6, confident=3, right=3))["open"] == 1.0


def test_pseudo_labels_join_the_labeled_batch_on_weak_views_at_full_weight(tmp_path):
    """Issue 19, finding 3: the reference (main.py L290–324) appends each pseudo-labelled image's weak view
    to the labeled batch and takes one mean cross-entropy over both; the old code trained strong views and
    divided by all μB unlabeled images. Memory labels are used whether or not the gate is open now."""
    trainer = Trainer(ssmae_config(tmp_path, **{"train.steps": 1}))
    params = trainer.params
    params.rec_weight, params.gate = 0.0, "closed"  # only the classification loss; no new acceptance
    method = SSMAE(trainer.build_model(), params, 3, 10)
    method.setup(20)
    g = torch.Generator().manual_seed(0)
    x, u = torch.rand(4, 1, 8, 8, generator=g), torch.rand(8, 1, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    u_idx = torch.arange(8) + 10
    method.memory[u_idx[[1, 4, 6]]] = torch.tensor([2, 0, 1])  # three images were accepted earlier
    batch = Batch(x={"weak": x}, y=y, u={"weak": u, "strong": u.flip(-1)}, u_index=u_idx)
    method.train()
    out = method.training_step(batch, 0)
    used = torch.tensor([1, 4, 6])
    with torch.no_grad():  # the model is deterministic in training mode: MAE turned drop-path off
        expected = F.cross_entropy(method.model(torch.cat([x, u[used]])), torch.cat([y, torch.tensor([2, 0, 1])]))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.metrics["used"]) == pytest.approx(3 / 8)
    # λ_u weighs each pseudo-labelled image against a label
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(7, 3)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    per = F.cross_entropy(logits, targets, reduction="none")
    use = torch.tensor([True, False, True])
    got = SSMAE.classification_loss(logits, targets, 4, use, lambda_u=0.5)
    assert float(got) == pytest.approx(float((per[:4].sum() + 0.5 * (per[4] + per[6])) / 6))


def test_a_stored_pseudo_label_is_kept(tmp_path):
    """The reference never re-labels an image in its memory (main.py L291): acceptance only adds new ones."""
    trainer = Trainer(ssmae_config(tmp_path, **{"train.steps": 1}))
    params = trainer.params
    params.gate, params.threshold = "open", -1.0  # every image whose two views agree is accepted
    method = SSMAE(trainer.build_model(), params, 3, 10)
    method.setup(8)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(8, 1, 8, 8, generator=g)
    method.memory[0] = 2
    batch = Batch(x={"weak": u[:4]}, y=torch.tensor([0, 1, 2, 0]), u={"weak": u, "strong": u}, u_index=torch.arange(8))
    method.eval()  # identical views → they agree everywhere
    method.training_step(batch, 0)
    with torch.no_grad():
        pred = method.model(u).argmax(-1)
    assert int(method.memory[0]) == 2  # kept, whatever the model predicts now
    assert torch.equal(method.memory[1:], pred[1:])  # the others were accepted with the agreed class


def test_no_pseudo_labels_while_the_gate_is_shut(tmp_path):
    result = train(ssmae_config(tmp_path, **{"method.gate": "closed", "method.threshold": 0.0}))
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    used, memory = header.index("train/used"), header.index("train/memory")
    values = [r.split(",") for r in rows[1:] if r.split(",")[used]]
    assert values and all(float(v[used]) == 0 and float(v[memory]) == 0 for v in values)


def test_memory_survives_checkpoint_and_resume(tmp_path, monkeypatch):
    # gate open from step 0, any confidence accepted: the memory fills as soon as the two views agree
    cfg = {"method.gate": "open", "method.threshold": 0.0}
    straight = train(ssmae_config(tmp_path / "a", **cfg))
    straight_memory = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")["method"]["memory"]
    assert (straight_memory >= 0).sum() > 0

    original = SSMAE.on_step_end

    def interrupt(self, step):
        original(self, step)
        if step == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(SSMAE, "on_step_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(ssmae_config(tmp_path / "b", **cfg))
    saved = load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == 6 and (saved["method"]["memory"] >= 0).sum() > 0
    monkeypatch.setattr(SSMAE, "on_step_end", original)
    resumed = train(ssmae_config(tmp_path / "b", **cfg, **{"train.resume": True}))
    resumed_memory = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["method"]["memory"]
    assert torch.equal(straight_memory, resumed_memory)


def test_the_test_set_is_never_read_while_training(tmp_path, monkeypatch):
    cfg = ssmae_config(tmp_path, **{"method.gate_every": 3, "method.gate_accuracy": 0.0})
    data = prepare_data(cfg.data, cfg.train.seed)
    training = {"on": True}
    real_get = data.test.get

    def guarded(indices):
        if training["on"]:
            raise AssertionError("the test set was read during training")
        return real_get(indices)

    monkeypatch.setattr(data.test, "get", guarded)
    real_finish = StageEvaluation.finish

    def finish(self, *args, **kwargs):
        training["on"] = False  # the final report may read it
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(StageEvaluation, "finish", finish)
    result = train(cfg, data)
    rows = (result.run_dir / "metrics.csv").read_text()
    assert "gate/open" in rows  # the gate was checked (on validation) during training
    assert result.metrics["test_top1"] is not None
