"""Skewed classes (issue 28): distribution alignment and class thresholds against hand-computed values, their
state across a state_dict round-trip and a seed, the skew metrics against scikit-learn, and the summaries."""

import json

import numpy as np
import pytest
import torch

from semivit.data.loaders import Batch
from semivit.engine.evaluate import balanced_accuracy, classification_report, is_skewed, macro_f1, summary_line
from semivit.errors import SemivitError
from semivit.methods.alignment import ClassThresholds, DistributionAlignment, RunningMean, align
from semivit.methods.pseudo_label import EMATeacher, FixMatch, PseudoLabelParams
from semivit.methods.uda import UDA, UDAParams
from semivit.models.factory import create_model


def test_align_is_remixmatch_rescaling():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    out = align(p, torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.5, 0.25, 0.25]))
    raw = torch.tensor([0.6 * 0.2 / 0.5, 0.3 * 0.3 / 0.25, 0.1 * 0.5 / 0.25])  # p · π / p̄ by hand
    assert torch.allclose(out, (raw / raw.sum()).unsqueeze(0), atol=1e-5)


def test_running_mean_is_bias_corrected():
    r = RunningMean(2, momentum=0.9)
    assert torch.equal(r.value, torch.tensor([0.5, 0.5]))  # before any update: 1/K
    r.update(torch.tensor([1.0, 0.0]))
    assert torch.allclose(r.value, torch.tensor([1.0, 0.0]))  # not 0.1·[1, 0] from the zero start
    r.update(torch.tensor([0.0, 1.0]))
    w = 0.9 * 0.1 + 0.1  # 1 − 0.9²
    assert torch.allclose(r.value, torch.tensor([0.9 * 0.1 / w, 0.1 / w]))


def test_uniform_and_labeled_targets():
    p = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    uniform = DistributionAlignment(2, "uniform", window=1)(p, torch.tensor([0, 1]))
    # p̄ = [0.8, 0.2]: row 1 = Normalize([0.9/0.8, 0.1/0.2]) = [1.125, 0.5] / 1.625
    assert torch.allclose(uniform[0], torch.tensor([1.125 / 1.625, 0.5 / 1.625]), atol=1e-5)
    assert torch.allclose(uniform.mean(0), torch.tensor([0.5, 0.5]), atol=0.05)
    labeled = DistributionAlignment(2, "labeled", window=1)
    out = labeled(p, torch.tensor([0, 0, 0, 1]))  # labeled frequencies [0.75, 0.25]
    assert torch.allclose(labeled.target_marginal(), torch.tensor([0.75, 0.25]))
    raw = torch.tensor([0.9 * 0.75 / 0.8, 0.1 * 0.25 / 0.2])
    assert torch.allclose(out[0], raw / raw.sum(), atol=1e-5)


def test_pool_target_is_one_em_step_of_saerens():
    da = DistributionAlignment(2, "pool", window=1)
    p = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    da(p, torch.tensor([0, 1]))  # π_L = [0.5, 0.5], π̂_U starts at [0.5, 0.5]: one EM step = the mean of p
    assert torch.allclose(da.p_pool.value, torch.tensor([0.6, 0.4]), atol=1e-5)
    da(p, torch.tensor([0, 1]))  # the second step reweights by π̂_U / π_L = [1.2, 0.8]
    rows = torch.tensor([[0.8 * 1.2, 0.2 * 0.8], [0.4 * 1.2, 0.6 * 0.8]])
    assert torch.allclose(da.p_pool.value, (rows / rows.sum(1, keepdim=True)).mean(0), atol=1e-5)


def test_freematch_thresholds_by_hand():
    th = ClassThresholds(3, "freematch", threshold=0.95, momentum=0.5)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    mask = th(probs)
    tau = 0.5 / 3 + 0.5 * 0.6  # λ·1/K + (1−λ)·mean(max p)
    p_bar = 0.5 / 3 + 0.5 * torch.tensor([0.6, 0.3, 0.1])
    expected = p_bar / p_bar.max() * tau
    assert torch.allclose(th.thresholds(), expected, atol=1e-6)
    assert mask.tolist() == [0.7 >= expected[0], 0.5 >= expected[0]] == [True, True]


def test_flexmatch_thresholds_and_memory_by_hand():
    th = ClassThresholds(3, "flexmatch", threshold=0.9)
    th.setup(5)
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.2, 0.7, 0.1]])
    mask = th(probs, torch.tensor([0, 3, 4]))
    assert mask.all()  # empty memory: every β = 0, so every threshold is 0 (FlexMatch's start)
    assert th.memory.tolist() == [0, -1, -1, 0, -1]  # only confidences ≥ τ enter the memory
    # σ = [2, 0, 0], 3 unused: β = [2/3, 0, 0]; τ_0 = M(2/3)·0.9 = 0.5·0.9
    assert torch.allclose(th.thresholds(), torch.tensor([0.45, 0.0, 0.0]), atol=1e-6)
    assert th(torch.tensor([[0.44, 0.3, 0.26], [0.46, 0.3, 0.24]]), torch.tensor([1, 2])).tolist() == [False, True]


def test_bad_settings_are_one_line_errors():
    model = create_model("vit_nano", 3, 1, 8, depth=1)
    for params, name in ((PseudoLabelParams(dist_align="prior"), "dist_align"),
                         (PseudoLabelParams(class_thresholds="adamatch"), "class_thresholds")):
        with pytest.raises(SemivitError, match=f"method.{name} must be") as err:
            FixMatch(model, params, 3, 10)
        assert "\n" not in str(err.value)
    with pytest.raises(SemivitError, match="method.dist_align must be off, uniform, labeled or pool"):
        UDA(model, UDAParams(dist_align="yes"), 3, 10)
    with pytest.raises(SemivitError, match="align_window"):
        DistributionAlignment(3, "uniform", window=0.5)


def _batch(seed: int = 0, n: int = 4, mu: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x, u = torch.rand(n, 1, 8, 8, generator=g), torch.rand(n * mu, 1, 8, 8, generator=g)
    return Batch(x={"weak": x}, y=torch.tensor([0, 1, 2, 0]), u={"weak": u, "strong": u.flip(-1)},
                 u_index=torch.arange(n * mu) + 4 * seed, u_true=torch.full((n * mu,), -1))


def _method(cls=FixMatch, **params):
    torch.manual_seed(0)
    model = create_model("vit_nano", 3, 1, 8, depth=1)
    if cls is UDA:
        method = UDA(model, UDAParams(mu=2, **params), 3, 10)
    else:
        method = cls(model, PseudoLabelParams(threshold=0.3, mu=2, **params), 3, 10)
    method.setup(40)
    return method


def _steps(method, steps: int = 3) -> list[float]:
    losses = []
    for step in range(steps):
        out = method.training_step(_batch(step), step)
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("cls,params", [
    (FixMatch, {"dist_align": "pool", "class_thresholds": "flexmatch"}),
    (FixMatch, {"dist_align": "labeled", "class_thresholds": "freematch"}),
    (EMATeacher, {"dist_align": "uniform", "class_thresholds": "freematch", "pseudo_mixup": "both"}),
    (UDA, {"dist_align": "pool"}),
])
def test_steps_are_deterministic_and_state_survives_a_round_trip(cls, params):
    a, b = _method(cls, **params), _method(cls, **params)
    torch.manual_seed(1)
    losses_a = _steps(a)
    torch.manual_seed(1)
    assert _steps(b) == losses_a  # the same seed: the same losses and the same statistics
    sa, sb = a.state_dict(), b.state_dict()
    stats = [k for k in sa if k.startswith(("aligner.", "thresholder."))]
    assert stats and all(torch.equal(sa[k], sb[k]) for k in stats)
    assert not torch.equal(a.aligner.p_model.value, torch.full((3,), 1 / 3))  # the statistics did move
    fresh = _method(cls, **params)
    fresh.load_state_dict(sa)  # a checkpoint's resume: the next step is the one the run would have taken
    torch.manual_seed(2)
    next_a = a.training_step(_batch(5), 5)
    torch.manual_seed(2)
    next_fresh = fresh.training_step(_batch(5), 5)
    assert float(next_a.loss.detach()) == float(next_fresh.loss.detach())
    assert all(torch.equal(a.state_dict()[k], fresh.state_dict()[k]) for k in stats)


def test_default_settings_add_no_state():
    method = _method()
    assert method.aligner is None and method.thresholder is None
    assert not [k for k in method.state_dict() if k.startswith(("aligner.", "thresholder."))]


def test_metrics_equal_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for trial in range(20):
        k = int(rng.integers(2, 6))
        labels = rng.integers(0, k, 50)
        pred = np.where(rng.random(50) < 0.5, labels, rng.integers(0, k + 1, 50))  # k: a class with no test image
        if trial == 0:
            labels[labels == 1] = 0  # a class absent from the labels
        t, p = torch.from_numpy(labels), torch.from_numpy(pred)
        with pytest.warns(UserWarning) if trial == 0 and (pred == 1).any() else _no_warning():
            assert balanced_accuracy(p, t) == pytest.approx(balanced_accuracy_score(labels, pred))
        assert macro_f1(p, t) == pytest.approx(f1_score(labels, pred, average="macro", zero_division=0))


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_skew_decides_what_the_summary_shows():
    assert not is_skewed(torch.tensor([0, 0, 0, 0, 1, 1, 1])) and is_skewed(torch.tensor([0, 0, 0, 1, 1, -1]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    skewed = classification_report(logits, torch.tensor([0, 0, 1, 1, 1, 1]), ["a", "b"])
    assert skewed["skewed"] and skewed["balanced_accuracy"] == pytest.approx(0.75)
    assert "balanced acc 0.7500" in summary_line(skewed) and "macro-F1" in summary_line(skewed)
    balanced = classification_report(logits[:4], torch.tensor([0, 0, 1, 1]), ["a", "b"])
    assert not balanced["skewed"] and "balanced acc" not in summary_line(balanced)


def _skewed_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images * 255 / 16).astype(np.uint8), d.target
    keep = (y < 3) & ((y == 0) | (np.arange(len(y)) % 3 == 0))  # class 0 whole, 1 and 2 at a third
    x, y = x[keep], y[keep]
    return {"x": x[:-60], "y": y[:-60], "x_test": x[-60:], "y_test": y[-60:]}


def test_fit_reports_skew_metrics_only_on_skewed_test_sets(tmp_path):
    import semivit

    tiny = {"model.depth": 1, "model.embed_dim": 32, "model.num_heads": 2, "train.tensorboard": False,
            "train.eval_every": 0, "method.dist_align": "pool", "method.class_thresholds": "flexmatch"}
    data = _skewed_digits()
    assert is_skewed(torch.from_numpy(data["y_test"]))
    run = semivit.fit(data, method="fixmatch", model="vit_nano", labels="3-per-class", steps=3, batch_size=6,
                      out=str(tmp_path), name="skewed", progress=False, settings=tiny)
    results = json.loads((run.folder / "results.json").read_text())
    report = json.loads((run.folder / "test_report.json").read_text())
    assert results["test_balanced_accuracy"] == pytest.approx(report["balanced_accuracy"])
    assert results["test_macro_f1"] == pytest.approx(report["macro_f1"])
    run = semivit.fit("digits", method="fixmatch", model="vit_nano", labels="3-per-class", steps=2, batch_size=6,
                      out=str(tmp_path), name="balanced", progress=False, settings=tiny)
    results = json.loads((run.folder / "results.json").read_text())
    assert "test_top1" in results and "test_balanced_accuracy" not in results


def test_cli_takes_the_settings_and_refuses_bad_ones(tmp_path, capsys):
    from semivit.cli import main

    args = ["train", "--data", "digits", "--method", "fixmatch", "--labels", "2-per-class", "--model", "vit_nano",
            "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set", "model.num_heads=2", "--steps", "2",
            "--batch-size", "8", "-q", "--set", "train.tensorboard=false", "--out", str(tmp_path)]
    assert main([*args, "--name", "ok", "--set", "method.dist_align=uniform",
                 "--set", "method.class_thresholds=freematch"]) == 0
    assert "dist_align: uniform" in (tmp_path / "ok" / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "--name", "bad", "--set", "method.class_thresholds=flexmach"]) == 2
    err = capsys.readouterr().err
    assert "method.class_thresholds must be one of off, freematch, flexmatch" in err
    assert len(err.strip().splitlines()) == 1


def _rank_batches(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s unlabeled probabilities, labeled labels and image indices (the DDP check below)."""
    g = torch.Generator().manual_seed(10 + rank)
    probs = torch.randn(6, 3, generator=g).mul(2).softmax(-1)
    return probs, torch.tensor([[0, 0, 1], [2, 0, 0]][rank]), torch.arange(6) + 6 * rank


def _statistics(probs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
    da = DistributionAlignment(3, "pool", window=4)
    free, flex = ClassThresholds(3, "freematch", 0.6, momentum=0.5), ClassThresholds(3, "flexmatch", 0.6)
    flex.setup(12)
    for _ in range(2):
        aligned = da(probs, labels)
        free(aligned)
        flex(aligned, index)
    return {"p_model": da.p_model.value, "p_pool": da.p_pool.value, "p_labeled": da.p_labeled.value,
            "free": free.thresholds(), "flex": flex.thresholds(), "memory": flex.memory.float()}


@pytest.mark.slow
def test_statistics_agree_over_two_gloo_ranks_and_equal_one_process(tmp_path):
    from tests.test_ddp import torchrun_two_gloo_ranks

    a, b = torchrun_two_gloo_ranks("test_imbalance.py", tmp_path, 29541)
    # one process seeing both ranks' batches (equal sizes: the mean of the ranks' means is the batch mean)
    parts = [_rank_batches(r) for r in range(2)]
    one = _statistics(*(torch.cat([p[i] for p in parts]) for i in range(3)))
    for key in one:
        assert torch.equal(a[key], b[key]), key
        assert torch.allclose(a[key], one[key], atol=1e-6), key


if __name__ == "__main__":  # one rank of the check above, under torchrun --nproc_per_node 2
    import sys
    from pathlib import Path

    import torch.distributed as dist
    from safetensors.torch import save_file

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    save_file(_statistics(*_rank_batches(rank)), str(Path(sys.argv[1]) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()
