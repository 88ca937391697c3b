"""Continual semi-supervised learning (NNCSL): the CSL and NND losses against the paper's / reference's
formulas on hand-made tensors, the task sequence, label shares, the replay buffer, the metrics, and a tiny
end-to-end `semivit continual` run on digits that writes the matrix and resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semivit.cli import main
from semivit.continual.buffer import ReplayBuffer, balanced_counts
from semivit.continual.metrics import forgetting, seen_class_accuracy, summary
from semivit.continual.tasks import label_shares, make_tasks, task_split
from semivit.errors import SemivitError
from semivit.methods.nncsl import csl_loss, nnd_loss, subset_targets


# ------------------------------------------------------------------------------------- formulas, by hand
def _snn_by_hand(q: list[list[float]], s: list[list[float]], y: list[list[float]], tau: float) -> list[list[float]]:
    """π(z) = Σ_i softmax_i(ẑ·ẑ_i / τ) y_i, written out with loops (PAWS Eq. 1)."""
    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    out = []
    for z in q:
        zq = unit(z)
        sims = [sum(a * b for a, b in zip(zq, unit(si))) / tau for si in s]
        m = max(sims)
        w = [math.exp(v - m) for v in sims]
        total = sum(w)
        out.append([sum(w[i] / total * y[i][k] for i in range(len(s))) for k in range(len(y[0]))])
    return out


def _sharpen_by_hand(p: list[float], t: float) -> list[float]:
    powered = [v ** (1 / t) for v in p]
    return [v / sum(powered) for v in powered]


def test_subset_targets_are_smoothed_one_hot_over_the_task_classes():
    y = subset_targets(torch.tensor([7, 3, 7]), torch.tensor([3, 7]), smoothing=0.1)
    assert torch.allclose(y, torch.tensor([[0.05, 0.95], [0.95, 0.05], [0.05, 0.95]]))


def test_csl_loss_matches_the_paws_formulas_by_hand():
    torch.manual_seed(0)
    b, tau, t = 2, 0.5, 0.25
    supports = torch.randn(4, 3)
    support_y = subset_targets(torch.tensor([2, 2, 5, 5]), torch.tensor([2, 5]), 0.1)
    anchors = torch.randn(2 * b + b, 3)  # 2 large views of 2 images, then 1 small view each
    target_views = torch.randn(2 * b, 3)
    loss, entropy, probs = csl_loss(anchors, supports, target_views, supports, support_y, 2 * b, tau, t)

    p = _snn_by_hand(anchors.tolist(), supports.tolist(), support_y.tolist(), tau)
    swapped = target_views[b:].tolist() + target_views[:b].tolist()  # view 1 learns view 2's target, and back
    targets = [_sharpen_by_hand(r, t) for r in _snn_by_hand(swapped, supports.tolist(), support_y.tolist(), tau)]
    targets += [[(targets[i][k] + targets[b + i][k]) / 2 for k in range(2)] for i in range(b)]  # small views
    targets = [[v if v >= 1e-4 else 0.0 for v in r] for r in targets]
    ce = sum(-sum(tk * math.log(pk) for tk, pk in zip(tr, pr)) for tr, pr in zip(targets, p)) / len(p)
    sharp = [_sharpen_by_hand(r, t) for r in p]
    mean = [sum(r[k] for r in sharp) / len(sharp) for k in range(2)]
    h = -sum(m * math.log(m) for m in mean)
    assert torch.allclose(probs, torch.tensor(p), atol=1e-5)
    assert entropy.item() == pytest.approx(h, abs=1e-5)
    assert loss.item() == pytest.approx(ce - h, abs=1e-5)


def test_csl_gradient_reaches_anchors_and_supports_not_targets():
    torch.manual_seed(1)
    anchors, supports = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    target_views = torch.randn(4, 3, requires_grad=True)
    y = subset_targets(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1]), 0.1)
    loss, _, _ = csl_loss(anchors, supports, target_views, supports.detach(), y, 4)
    loss.backward()
    assert anchors.grad.abs().sum() > 0 and supports.grad.abs().sum() > 0
    assert target_views.grad is None  # targets carry no gradient (PAWS Eq. 2)


def test_nnd_loss_is_the_cross_entropy_of_old_to_new_snn_predictions():
    torch.manual_seed(2)
    tau = 0.2
    new_q, new_s = torch.randn(5, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    old_q, old_s = torch.randn(5, 4, requires_grad=True), torch.randn(3, 4)
    y = subset_targets(torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 0.1)
    loss = nnd_loss(new_q, new_s, old_q, old_s, y, tau)
    p_new = _snn_by_hand(new_q.tolist(), new_s.tolist(), y.tolist(), tau)
    p_old = _snn_by_hand(old_q.tolist(), old_s.tolist(), y.tolist(), tau)
    by_hand = sum(-sum(o * math.log(n) for o, n in zip(ro, rn)) for ro, rn in zip(p_old, p_new)) / 5
    assert loss.item() == pytest.approx(by_hand, abs=1e-5)
    loss.backward()
    assert new_q.grad.abs().sum() > 0 and new_s.grad.abs().sum() > 0
    assert old_q.grad is None  # the previous task's model is frozen
    # H(p_old, p_new) ≥ H(p_old, p_old): the loss is smallest when the new model predicts as the old one
    same = nnd_loss(old_q.detach(), old_s, old_q.detach(), old_s, y, tau)
    entropy = sum(-sum(o * math.log(o) for o in r) for r in p_old) / 5
    assert same.item() == pytest.approx(entropy, abs=1e-5) and same.item() < loss.item()


# ------------------------------------------------------------------------------ tasks, shares, buffer
def test_tasks_split_classes_in_order():
    assert make_tasks(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [len(t) for t in make_tasks(10, 3)] == [4, 3, 3]
    assert make_tasks(10, 1) == [list(range(10))]
    for bad in (0, 11):
        with pytest.raises(SemivitError, match="--tasks"):
            make_tasks(10, bad)


def test_task_split_sees_only_its_classes_and_the_buffer():
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2, 3])
    labeled = torch.tensor([0, 1, 2, 3])  # one label per class
    split = task_split(labels, labeled, [2, 3], buffer=torch.tensor([0]))
    assert split.labeled.tolist() == [0, 2, 3]  # the task's labels + the buffer's class-0 exemplar
    assert split.unlabeled.tolist() == [2, 3, 6, 7, 8, 9]  # every image of classes 2 and 3, no other
    assert len(split.val) == 0
    with pytest.raises(SemivitError, match="no labeled image"):
        task_split(labels, torch.tensor([0, 1]), [2, 3], torch.zeros(0, dtype=torch.long))


def test_label_shares_report_what_each_task_used():
    labels = torch.arange(4).repeat(50)  # 4 classes × 50 images
    labeled = torch.tensor([0, 1, 2, 3, 4, 5])  # classes 0,1,2,3,0,1
    shares = label_shares(labels, labeled, [[0, 1], [2, 3]])
    assert [s["labeled"] for s in shares] == [4, 2]
    assert shares[0]["share"] == pytest.approx(4 / 100) and shares[1]["labeled_per_class"] == 1


def test_balanced_counts_water_fill():
    assert balanced_counts({0: 10, 1: 10}, 6) == {0: 3, 1: 3}
    assert balanced_counts({0: 1, 1: 10}, 6) == {0: 1, 1: 5}  # what class 0 lacks goes to class 1
    assert balanced_counts({0: 2, 1: 2}, 10) == {0: 2, 1: 2}  # everything fits: keep all
    assert balanced_counts({2: 5, 3: 5, 0: 5}, 7) == {2: 3, 3: 2, 0: 2}  # leftover to the first classes


def test_buffer_stays_within_size_balanced_and_keeps_old_exemplars():
    labels = torch.arange(4).repeat_interleave(10)  # 4 classes × 10 labeled images
    idx = torch.arange(40)
    buffer = ReplayBuffer(8)
    first = idx[labels < 2]
    buffer.update(first, labels[first], [0, 1], seed=0)
    assert len(buffer) == 8 and buffer.classes() == [0, 1]
    kept_before = {c: list(v) for c, v in buffer.by_class.items()}
    second = idx[labels >= 2]
    buffer.update(second, labels[second], [2, 3], seed=1)
    assert len(buffer) == 8 and buffer.classes() == [0, 1, 2, 3]
    assert all(len(v) == 2 for v in buffer.by_class.values())
    for c in (0, 1):  # an old class keeps a prefix of what it held: nothing new enters for it
        assert buffer.by_class[c] == kept_before[c][:2]
    assert all(int(labels[i]) == c for c, v in buffer.by_class.items() for i in v)
    state = buffer.state_dict()
    again = ReplayBuffer(0)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.indices().tolist() == buffer.indices().tolist()
    none = ReplayBuffer(0)
    none.update(first, labels[first], [0, 1], seed=0)
    assert len(none) == 0


# -------------------------------------------------------------------------------------------- metrics
def test_seen_class_accuracy_ignores_classes_not_seen_yet():
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[1.0, 0, 0, 9], [0, 1.0, 0, 9], [0, 0, 1.0, 9], [0, 0, 0, 9.0]])
    row, overall = seen_class_accuracy(logits, labels, [[0, 1], [2, 3]], upto=0)
    assert row == [1.0, None] and overall == 1.0  # class 3's large logit does not count before task 2
    row, overall = seen_class_accuracy(logits, labels, [[0, 1], [2, 3]], upto=1)
    assert row == [0.0, 0.5] and overall == 0.25


def test_forgetting_and_average_incremental_accuracy():
    matrix = [[0.9, None, None], [0.6, 0.8, None], [0.7, 0.5, 0.9]]
    # task 1: best 0.9 → 0.7 (0.2); task 2: best 0.8 → 0.5 (0.3)
    assert forgetting(matrix) == pytest.approx(0.25)
    s = summary(matrix, [0.9, 0.7, 0.7])
    assert s["final_accuracy"] == 0.7 and s["average_incremental_accuracy"] == pytest.approx(2.3 / 3)
    assert forgetting(matrix[:1]) is None


# ------------------------------------------------------------------------------------ end to end (CLI)
TINY = ["--data", "digits", "--labels", "5%", "--buffer", "20", "--steps", "3", "--device", "cpu", "-q",
        "--set", "model.depth=1", "--set", "model.embed_dim=24", "--set", "model.num_heads=2",
        "--set", "train.batch_size=16", "--set", "train.ckpt_every=2"]


def test_continual_cli_writes_the_matrix_and_resumes(tmp_path, capsys):
    args = ["continual", "--method", "nncsl", "--tasks", "3", "--out", str(tmp_path), "--name", "run", *TINY,
            "--set", "method.images_per_class=2"]
    assert main(args) == 0
    root = tmp_path / "run"
    results = json.loads((root / "results.json").read_text())
    assert results["tasks_done"] == 3 and results["task_classes"] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    matrix = results["matrix"]
    assert [sum(v is not None for v in row) for row in matrix] == [1, 2, 3]  # lower-triangular
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row if v is not None)
    assert "average incremental accuracy" in (root / "results.md").read_text()
    assert "forgetting" in capsys.readouterr().out
    # NND runs from the second task on (the previous task's model as teacher), never in the first
    assert "loss_nnd" not in (root / "task1" / "metrics.csv").read_text().splitlines()[0]
    assert "loss_nnd" in (root / "task2" / "metrics.csv").read_text().splitlines()[0]
    state = json.loads((root / "continual.json").read_text())
    assert state["rows"][1]["labeled_pool"] > state["label_shares"][1]["labeled"]  # the buffer joined task 2

    # the same folder again without --resume is refused; with other settings too
    with pytest.raises(SemivitError, match="--resume"):
        from semivit.continual.loop import run_continual
        run_continual("nncsl", 3, 20, {"data.source": "digits", "train.out": str(tmp_path), "train.name": "run"})
    assert main([*args, "--resume", "--buffer", "10"]) == 2
    assert "buffer=20" in capsys.readouterr().err

    # stopped after task 1: task 2 resumes from its own checkpoint (at its last step), task 3 trains again
    # from scratch; a CPU run is deterministic, so the numbers are the same
    state["rows"] = state["rows"][:1]
    (root / "continual.json").write_text(json.dumps(state))
    for f in (root / "task3").rglob("*"):
        if f.is_file():
            f.unlink()
    assert main([*args, "--resume"]) == 0
    again = json.loads((root / "results.json").read_text())
    assert again["tasks_done"] == 3
    assert again["matrix"] == matrix


def test_continual_baselines_run(tmp_path):
    for method in ("finetune", "joint"):
        assert main(["continual", "--method", method, "--tasks", "2", "--out", str(tmp_path), "--name", method,
                     *TINY]) == 0
    joint = json.loads((tmp_path / "joint" / "results.json").read_text())
    assert joint["tasks_done"] == 1 and joint["forgetting"] is None
    assert all(v is not None for v in joint["matrix"][0])  # one model judged on every class group
    finetune = json.loads((tmp_path / "finetune" / "results.json").read_text())
    assert finetune["buffer"] == 0 and finetune["tasks_done"] == 2


def test_continual_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["continual", "--tasks", "11", "--out", str(tmp_path), *TINY]) == 2
    assert "--tasks 11" in capsys.readouterr().err
    assert main(["continual", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 2
    assert "--steps" in capsys.readouterr().err


def test_cifar10_label_shares_follow_the_paper(shared_data):
    zipped = shared_data / "cifar10_jpeg.zip"
    if not zipped.is_file():
        pytest.skip(f"{zipped} is absent")
    from semivit.config import DataConfig
    from semivit.data import prepare_data

    data = prepare_data(DataConfig(source=str(zipped), labels="0.8%", val="0"), seed=0)
    shares = label_shares(data.train.labels, data.split.labeled, make_tasks(10, 5))
    assert [s["labeled"] for s in shares] == [80] * 5  # 0.8% of 5,000 images per class = 40 per class
    assert all(s["share"] == pytest.approx(0.008) for s in shares)


# ------------------------------------------------------------------------------------ the method's step
def _tiny_nncsl(tmp_path, **params):
    from semivit.engine.checkpoint import export_weights
    from semivit.methods.nncsl import NNCSL, NNCSLParams
    from semivit.models.factory import create_model

    def build(p):
        torch.manual_seed(0)
        model = create_model("vit_nano", 4, 1, 8, depth=1, embed_dim=24, num_heads=2)
        return NNCSL(model, NNCSLParams(images_per_class=2, proj_hidden=16, proj_dim=8, **p), 4, 10)

    old = build({})
    export_weights(old.model, tmp_path / "old.safetensors", old.model.spec.to_dict())
    return build({"teacher": str(tmp_path / "old.safetensors"), "init": str(tmp_path / "old.safetensors"),
                  **params}), old


def _batch(labels: list[int]):
    from semivit.data.loaders import Batch

    g = torch.Generator().manual_seed(3)
    x = {name: torch.rand(len(labels), 1, 8, 8, generator=g) for name in ("large", "large:2")}
    u = {name: torch.rand(6, 1, 8, 8, generator=g) for name in ("large", "large:2")}
    return Batch(x=x, y=torch.tensor(labels), u=u, u_true=torch.tensor([0, 1, 0, 1, 0, 1]))


@pytest.mark.parametrize("mask,width", [(True, 2), (False, 4)])
def test_nncsl_step_masks_csl_supports_and_distils_over_the_buffer(tmp_path, monkeypatch, mask, width):
    import semivit.methods.nncsl as nncsl

    seen = {}
    real_csl, real_nnd = nncsl.csl_loss, nncsl.nnd_loss

    def spy_csl(anchors, supports, *rest, **kw):
        seen["csl"] = (len(supports), rest[2].shape[1])  # supports kept, label columns
        return real_csl(anchors, supports, *rest, **kw)

    def spy_nnd(*args, **kw):
        seen["nnd"] = (len(args[1]), args[4].shape[1])
        return real_nnd(*args, **kw)

    monkeypatch.setattr(nncsl, "csl_loss", spy_csl)
    monkeypatch.setattr(nncsl, "nnd_loss", spy_nnd)
    method, old = _tiny_nncsl(tmp_path, classes=[0, 1], old_classes=[2, 3], distill_classes=[2, 3], mask=mask)
    # init loaded the previous task's weights, projector included
    assert all(torch.equal(a, b) for a, b in zip(method.model.state_dict().values(), old.model.state_dict().values()))
    batch = _batch([0, 1, 2, 3])  # 2 current-task labels, 2 buffer exemplars; 2 views each
    out = method.training_step(batch, 0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and "loss_nnd" in out.metrics
    # CSL: the current task's supports only (mask) or every seen class; NND: the buffer's exemplars
    assert seen["csl"] == ((4, 2) if mask else (8, 4)) and seen["csl"][1] == width
    assert seen["nnd"] == (4, 2)
    assert all(p.grad is None for p in method.teacher.parameters())  # the old model stays frozen
    assert method.classifier.weight.grad.abs().sum() > 0  # the linear classifier learns from the labels
