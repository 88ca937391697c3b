"""SSMAE: the validation gate, the acceptance rule, the pseudo-label memory across resume, and that the
test set is never read while training."""

from __future__ import annotations

import pytest
import torch

from semivit.data import prepare_data
from semivit.engine.checkpoint import load_checkpoint
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
    trainer = Trainer(ssmae_config(tmp_path, **{"train.steps": 1}))
    method = SSMAE(trainer._build_model(), trainer.params, 3, 10)
    labels = torch.tensor([0, 1])
    wrong = torch.tensor([[0, 9.0, 0], [9.0, 0, 0]])
    right = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])
    assert method.on_validation(1, wrong, labels)["open"] == 0.0
    assert method.on_validation(2, right, labels)["open"] == 1.0
    assert method.on_validation(3, wrong, labels)["open"] == 1.0  # latched
    method.params.gate_latch = False
    assert method.on_validation(4, wrong, labels)["open"] == 0.0


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
    real_finish = Trainer._finish

    def finish(self, *args, **kwargs):
        training["on"] = False  # the final report may read it
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_finish", finish)
    result = train(cfg, data)
    rows = (result.run_dir / "metrics.csv").read_text()
    assert "gate/open" in rows  # the gate was checked (on validation) during training
    assert result.metrics["test_top1"] is not None
