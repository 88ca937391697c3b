"""Run under ``torchrun --nproc_per_node 2``: trains every registered method for a few steps with gloo DDP
(one process group, one run folder per method) and saves what each rank ended with:
``OUT/METHOD/rank{r}.safetensors`` holds the exported weights and the method's buffers (e.g. SSMAE's
pseudo-label memory), so the test can check that both ranks agree on everything."""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from semivit.core.distributed import cleanup
from semivit.engine.trainer import Trainer
from semivit.methods import METHODS
from semivit.video.train import video_config, video_trainer
from tests.conftest import TINY_VIDEO, tiny_config, tiny_sprites
from tests.test_multilabel import digit_mosaics

# settings a method needs to run at all on the tiny set (a teacher, PAWS's small support set, a gate
# that opens so its memory fills); everything else is the method's default
NEEDS: dict[str, dict] = {
    "distill": {"method.teacher": "TEACHER"},
    "noisy_student": {"method.teacher": "TEACHER", "method.balance": True},
    "feature_distill": {"method.teacher": "TEACHER"},
    "paws": {"train.batch_size": 8, "method.multicrop": 2, "method.images_per_class": 1},
    "nncsl": {"train.batch_size": 8, "method.multicrop": 2, "method.images_per_class": 1},
    "ssmae": {"method.gate": "open", "method.threshold": 0.0},
    "openmatch": {"method.start_fix": 0, "method.threshold": 0.0},  # its FixMatch on inliers from step 0
    "semiformer": {"model.name": "semiformer_tiny", "model.embed_dim": 32, "method.warmup_u": 0,
                   "method.threshold": 0.0},
}

# the methods that train on multi-label data, on 2×2 digit mosaics (fixmatch with CAP's per-class thresholds, whose
# running histogram the ranks share)
MULTILABEL: dict[str, dict] = {
    "ml-supervised": {"train.method": "supervised", "multilabel.loss": "asl"},
    "ml-fixmatch": {"train.method": "fixmatch", "multilabel.thresholds": "cap"},
    "ml-ema_teacher": {"train.method": "ema_teacher"},
}


def spy_on_ssmae_acceptances() -> list[torch.Tensor]:
    """Record the (index, label) pairs this rank accepts into SSMAE's memory, before any gathering."""
    from semivit.methods.ssmae import SSMAE

    seen: list[torch.Tensor] = []
    remember = SSMAE._remember

    def spy(self, index, accepted, label, truth):
        seen.append(torch.stack([index[accepted], label[accepted]], 1))
        return remember(self, index, accepted, label, truth)

    SSMAE._remember = spy
    return seen


if __name__ == "__main__":
    out = Path(sys.argv[1])
    accepted = spy_on_ssmae_acceptances()
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else sorted(METHODS) + sorted(MULTILABEL)
    common = {"train.steps": 3, "train.eval_every": 0, "train.log_every": 1, "train.device": "cpu",
              "data.val": "2-per-class", "train.batch_size": 16}
    teacher = Trainer(tiny_config(out, **common, **{"train.name": "teacher", "train.method": "supervised"})).fit()
    rank = torch.distributed.get_rank()
    assert torch.distributed.get_world_size() == 2
    for name in names:
        settings = {k: (str(teacher.run_dir) if v == "TEACHER" else v) for k, v in NEEDS.get(name, {}).items()}
        if name == "cvrl":  # trains on clips only (the video recipes run the others on clips too)
            clips = tiny_sprites(out / f"sprites{rank}.npz")  # the same seeded videos, each rank its own copy
            trainer = video_trainer(video_config({**TINY_VIDEO, **common, "data.source": str(clips),
                                                  "data.val": "0", "train.batch_size": 8, "train.out": str(out),
                                                  "train.method": name, "train.name": name}))
        elif name in MULTILABEL:
            mosaics = out / f"mosaics{rank}.npz"  # the same seeded mosaics, each rank its own copy
            x, y = digit_mosaics(300, 0)
            np.savez(mosaics, x=x, y=y)
            trainer = Trainer(tiny_config(out, **{**common, "data.source": str(mosaics), "data.labels": "10%",
                                                  "data.val": "5", "train.name": name, **MULTILABEL[name]}))
        else:
            trainer = Trainer(tiny_config(out, **{**common, "train.method": name, "train.name": name, **settings}))
        result = trainer.fit()
        state = {f"model.{k}": v for k, v in result.model.state_dict().items()}
        state.update({f"method.{k}": v for k, v in trainer.method.named_buffers()})
        (out / name).mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()},
                  str(out / name / f"rank{rank}.safetensors"))
    if accepted:
        save_file({"accepted": torch.cat(accepted)}, str(out / "ssmae" / f"accepted{rank}.safetensors"))
    cleanup()
