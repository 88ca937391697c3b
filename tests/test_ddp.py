import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # torchrun with 2 processes: the full tier (make test), not make test-fast


def _cpu_env() -> dict[str, str]:
    """The environment of a CPU torchrun child: one thread, no GPU, and the caller's PYTHONPATH kept (the
    package may come from src/ rather than an install)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun_two_gloo_ranks(script: str, out, port: int, *args: str,
                            expect: str | None = "rank{r}.safetensors") -> list[dict[str, torch.Tensor]]:
    """Run ``tests/SCRIPT OUT ARGS`` as two CPU processes through torchrun (never a home-made launcher);
    returns what each rank saved as ``OUT/rank{r}.safetensors`` (``expect``; None: nothing to read)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "tests" / script), str(out), *args]
    proc = subprocess.run(cmd, env=_cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [load_file(str(out / expect.format(r=r))) for r in range(2)] if expect else []


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    a, b = torchrun_two_gloo_ranks("ddp_worker.py", tmp_path, 29517)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # rank 0 wrote the run folder
    assert (tmp_path / "run" / "checkpoints" / "model.safetensors").is_file()


@pytest.mark.slow
def test_nt_xent_gathered_over_two_ranks_equals_one_process(tmp_path):
    from semivit.methods.losses import nt_xent

    ranks = torchrun_two_gloo_ranks("nt_xent_worker.py", tmp_path, 29518)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 6, generator=g).requires_grad_(True)
    z2 = torch.randn(8, 6, generator=g).requires_grad_(True)
    loss, _ = nt_xent(z1, z2, temperature=0.5)
    loss.backward()
    assert float(ranks[0]["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert torch.allclose(torch.cat([r["grad1"] for r in ranks]), z1.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["grad2"] for r in ranks]), z2.grad, atol=1e-6)


@pytest.mark.slow
def test_noisy_student_balancing_counts_agree_over_two_ranks(tmp_path):
    a, b = torchrun_two_gloo_ranks("balance_worker.py", tmp_path, 29519)
    assert a["counts"].tolist() == b["counts"].tolist() == [4.0, 3.0, 1.0]  # both ranks' labels, summed
    share = torch.tensor([4 / 8, 3 / 8, 1 / 8])
    assert torch.allclose(a["weights"], (1 / (3 * share))[torch.tensor([0, 0, 1, 0])])


@pytest.mark.slow
def test_two_nodes_over_c10d_rendezvous_agree_and_draw_disjoint_shards(tmp_path):
    """``torchrun --nnodes 2`` as two processes on 127.0.0.1 (one "node" each, c10d rendezvous, gloo): the
    README's multi-node recipe, run for real."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29531", "--rdzv_id", "semivit-test",
           str(REPO / "tests" / "multinode_worker.py"), str(tmp_path)]
    nodes = [subprocess.Popen(cmd, env=_cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    drawn_a, drawn_b = a.pop("drawn"), b.pop("drawn")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not set(drawn_a.tolist()) & set(drawn_b.tolist())  # each node reads its own shard of the pool
    assert len(set(drawn_a.tolist())) == len(drawn_a) and len(drawn_a) == len(drawn_b) > 0


@pytest.mark.slow
def test_every_registered_method_trains_under_two_gloo_ranks_and_the_ranks_agree(tmp_path):
    """Each method a few steps under torchrun (MAE, PAWS and SimCLR used to stop at step 2: their unused
    classifier head and DDP's find_unused_parameters=False); weights and buffers end the same on both ranks."""
    from semivit.methods import METHODS
    from tests.ddp_methods_worker import MULTILABEL

    torchrun_two_gloo_ranks("ddp_methods_worker.py", tmp_path, 29520, expect=None)
    for name in sorted(METHODS) + sorted(MULTILABEL):  # and the methods that train on multi-label data
        a, b = (load_file(str(tmp_path / name / f"rank{r}.safetensors")) for r in range(2))
        assert a.keys() == b.keys() and a, name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs between the ranks"
    # SSMAE's pseudo-label memory holds every rank's acceptances (DDP broadcasts rank 0's buffers before each
    # forward: a memory written from one rank's acceptances lost the other's a step later)
    memory = load_file(str(tmp_path / "ssmae" / "rank0.safetensors"))["method.memory"]
    taken = [load_file(str(tmp_path / "ssmae" / f"accepted{r}.safetensors"))["accepted"] for r in range(2)]
    union = {int(i): int(y) for i, y in torch.cat(taken).tolist()}
    assert set(taken[1][:, 0].tolist()) - set(taken[0][:, 0].tolist())  # rank 1 accepted images of its own
    assert {i: int(memory[i]) for i in torch.nonzero(memory >= 0).flatten().tolist()} == union


@pytest.mark.slow
def test_first_steps_of_every_shipped_recipe_under_two_gloo_ranks(tmp_path):
    """Every stage of every recipe for 2 steps under torchrun (half the recipes used to stop at their first
    pre-training stage); both ranks end each recipe with the same weights."""
    from semivit.pipeline import RECIPES
    from semivit.video.train import RECIPES as VIDEO_RECIPES

    torchrun_two_gloo_ranks("ddp_recipes_worker.py", tmp_path, 29521, expect=None)
    folders = [p.stem for p in sorted(RECIPES.glob("*.yaml"))] + [f"video-{p.stem}" for p in
                                                                   sorted(VIDEO_RECIPES.glob("*.yaml"))]
    for name in folders:
        a, b = (load_file(str(tmp_path / name / f"rank{r}.safetensors")) for r in range(2))
        assert a.keys() == b.keys() and a, name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs between the ranks"
