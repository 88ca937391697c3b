import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO


def _cpu_env() -> dict[str, str]:
    """The environment of a CPU torchrun child: one thread, no GPU, and the caller's PYTHONPATH kept (the
    package may come from src/ rather than an install)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun_two_gloo_ranks(script: str, out, port: int) -> list[dict[str, torch.Tensor]]:
    """Run ``tests/SCRIPT OUT`` as two CPU processes through torchrun (never a home-made launcher); returns
    what each rank saved as ``OUT/rank{r}.safetensors``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "tests" / script), str(out)]
    proc = subprocess.run(cmd, env=_cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]


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
