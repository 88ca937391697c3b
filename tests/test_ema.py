"""EMA momenta follow the stage length (issue 19, finding 2): a momentum declared for K_ref steps becomes
m^(K_ref/K) in a stage of K steps, so the average moves as far from its start in a shortened stage."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from semivit.data import prepare_data
from semivit.engine.checkpoint import load_checkpoint
from semivit.engine.ema import ModelEMA, effective_config, half_life, scaled_momentum
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.methods.pseudo_label import EMATeacher, PseudoLabelParams
from semivit.models.factory import create_model
from tests.conftest import tiny_config


def test_scaled_momentum_keeps_the_share_of_the_start():
    assert scaled_momentum(0.999, 5000, 700) == pytest.approx(0.999 ** (5000 / 700))
    assert scaled_momentum(0.99, None, 50) == 0.99  # no reference length: a per-step momentum, as given
    assert scaled_momentum(0.99, 300, 300) == 0.99
    for steps in (7, 70, 700, 7000):  # m_eff^K = m^K_ref at any length; the half-life is the same share
        m = scaled_momentum(0.999, 5000, steps)
        assert m ** steps == pytest.approx(0.999 ** 5000, rel=1e-9)
        assert half_life(m) / steps == pytest.approx(half_life(0.999) / 5000, rel=1e-9)
    with pytest.raises(SemivitError, match="train.ema must be in"):
        scaled_momentum(1.5, 10, 10, "train.ema")
    with pytest.raises(SemivitError, match="positive"):
        scaled_momentum(0.9, 0, 10)


def test_a_shortened_teacher_moves_as_far_as_the_full_one():
    """The student jumps to new weights; after its stage the teacher holds m^K of its start. The old code
    used 0.999 per step whatever K: 0.999^700 = 50% of the start left in a 700-step stage, 0.7% at 5000."""
    moved = {}
    for steps in (5000, 700):
        model = create_model("vit_nano", 3, 1, 8, depth=1)
        method = EMATeacher(model, PseudoLabelParams(ema=0.999, ema_ref_steps=5000), 3, steps)
        start = method.teacher.module.backbone.head.weight.clone()
        with torch.no_grad():
            model.backbone.head.weight.add_(1.0)
        for k in range(steps):
            method.on_step_end(k)
        moved[steps] = float((method.teacher.module.backbone.head.weight - start).mean())
    assert moved[700] == pytest.approx(moved[5000], rel=1e-4)
    assert moved[700] == pytest.approx(1 - 0.999 ** 5000, rel=1e-4)


def _teacher_travel(tmp_path, data, steps: int) -> tuple[float, dict]:
    """Train an ema_teacher stage of ``steps`` steps whose momentum is declared for 40; return how far the
    teacher moved from the start relative to the student, and the run's saved config."""
    cfg = tiny_config(tmp_path, **{"train.method": "ema_teacher", "train.steps": steps, "train.name": f"s{steps}",
                                   "train.eval_every": 0, "train.ckpt_every": steps, "train.log_every": steps,
                                   "method.mu": 2, "method.ema": 0.9, "method.ema_ref_steps": 40,
                                   "method.threshold": 0.7, "optim.warmup": 0.0})
    trainer = Trainer(cfg, data)
    start = {k: v.detach().clone() for k, v in trainer.build_model().named_parameters()}
    result = trainer.fit()
    teacher = result.model.state_dict()  # the exported network is the teacher (eval_with: teacher)
    student = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["method"]
    t_move = sum(float((teacher[k] - v).norm() ** 2) for k, v in start.items()) ** 0.5
    s_move = sum(float((student[f"model.{k}"] - v).norm() ** 2) for k, v in start.items()) ** 0.5
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    return t_move / s_move, saved


def test_shortened_ema_teacher_stage_moves_its_teacher_as_far(tmp_path):
    """Real training: a 40-step stage and the same stage shortened to 8 steps. The teacher's travel, as a
    share of the student's, is the same (0.9^40 of the start is left in both); the old code kept 0.9 per
    step, leaving 0.9^8 = 43% of the start in the short stage against 1.5% in the full one."""
    data = prepare_data(tiny_config(tmp_path).data, 0)
    full, _ = _teacher_travel(tmp_path, data, 40)
    short, saved = _teacher_travel(tmp_path, data, 8)
    assert short == pytest.approx(full, rel=0.2), (short, full)
    assert short > 0.75  # with 0.9 per step the short stage's teacher would lag far behind (~0.5)
    # the run's config records the momentum it used, declared at its own length
    assert saved["method"]["ema"] == pytest.approx(0.9 ** (40 / 8))
    assert saved["method"]["ema_ref_steps"] == 8


def test_evaluation_ema_is_scaled_and_written_to_the_config(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.steps": 6, "train.eval_every": 0, "train.ema": 0.99,
                                   "train.ema_ref_steps": 60})
    written = effective_config(cfg, {}, 6)
    assert written.train.ema == pytest.approx(0.99 ** 10) and written.train.ema_ref_steps == 6
    assert cfg.train.ema == 0.99  # the declared config is not changed
    seen = {}
    real_init = ModelEMA.__init__

    def spy(self, model, decay):
        seen["decay"] = decay
        real_init(self, model, decay)

    from unittest import mock

    with mock.patch.object(ModelEMA, "__init__", spy):
        result = Trainer(cfg).fit()
    assert seen["decay"] == pytest.approx(0.99 ** 10)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["train"]["ema"] == pytest.approx(0.99 ** 10) and saved["train"]["ema_ref_steps"] == 6
    results = json.loads((result.run_dir / "results.json").read_text())  # and the results say it too
    assert results["effective"]["train.ema"] == pytest.approx(0.99 ** 10)
    # without a reference length the momentum is used as given and written unchanged
    plain = effective_config(tiny_config(tmp_path, **{"train.ema": 0.99}), {}, 6)
    assert plain.train.ema == 0.99 and plain.train.ema_ref_steps is None
