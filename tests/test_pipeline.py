import pytest

from semivit.config import load_yaml
from semivit.errors import SemivitError
from semivit.pipeline import RECIPES, find_recipe, run_recipe, stage_configs

RECIPE = """
name: tiny
model: {name: vit_nano, depth: 1, embed_dim: 32, num_heads: 2}
train: {batch_size: 8, eval_every: 0, log_every: 2, progress: false, tensorboard: false}
stages:
  - method: mae
    train: {steps: 3}
  - method: supervised
    train: {steps: 3}
  - method: ema_teacher
    params: {mu: 2, pseudo_mixup: cutmix}
    train: {steps: 3}
"""


def test_stages_chain_and_resume_skips_finished(tmp_path, caplog):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    overrides = {"data.labels": "2-per-class", "train.out": str(tmp_path)}
    result = run_recipe(recipe, overrides)
    root = tmp_path / "tiny"
    assert [p.name for p in sorted(root.iterdir())] == ["stage1-mae", "stage2-supervised", "stage3-ema_teacher"]
    stage3_config = (root / "stage3-ema_teacher" / "config.yaml").read_text()
    assert "stage2-supervised/checkpoints/model.safetensors" in stage3_config  # started from stage 2
    assert result.metrics["method"] == "ema_teacher"
    (root / "stage3-ema_teacher" / "results.json").unlink()  # as if stage 3 had been interrupted
    caplog.set_level("INFO", logger="semivit")
    again = run_recipe(recipe, {**overrides, "train.resume": True})
    assert "stage 1 (mae) already finished" in caplog.text and "stage 2 (supervised) already finished" in caplog.text
    assert again.metrics["method"] == "ema_teacher"


def test_command_line_settings_override_every_stage():
    recipe = {"stages": [{"method": "mae", "train": {"steps": 5}}, {"method": "supervised"}]}
    _, configs = stage_configs(recipe, {"train.seed": 3, "train.steps": 7})
    assert [c.train.steps for c in configs] == [7, 7] and all(c.train.seed == 3 for c in configs)


def test_bad_recipes_are_clear():
    with pytest.raises(SemivitError, match="needs a non-empty 'stages'"):
        stage_configs({"name": "x"}, {})
    with pytest.raises(SemivitError, match="unknown keys"):
        stage_configs({"stages": [{"method": "mae", "step": 3}]}, {})
    with pytest.raises(SemivitError, match="recipe 'nope' not found"):
        run_recipe("nope")


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_are_valid(recipe):
    from semivit.methods import method_params

    _, configs = stage_configs(load_yaml(find_recipe(recipe)), {})
    for cfg in configs:
        method_params(cfg.train.method, cfg.method)  # raises on an unknown or badly typed key


def test_stages_do_not_share_sections():
    _, configs = stage_configs({"stages": [{"method": "supervised"}, {"method": "distill"}]}, {})
    configs[0].model.pretrained = "stage1.safetensors"
    assert configs[1].model.pretrained == "auto"  # the default, untouched by the first stage


def test_stage_table_scores_pretraining_by_knn_and_shows_balanced_accuracy_when_skewed(tmp_path):
    import json

    from semivit.pipeline import stage_table

    for name, metrics in {"stage1-mae": {"steps": 10, "test_top1": 0.11, "test_knn_top1": 0.62},
                          "stage2-fixmatch": {"steps": 20, "test_top1": 0.75, "test_balanced_accuracy": 0.61,
                                              "test_macro_f1": 0.6}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(metrics))
    mae, fixmatch = stage_table(tmp_path).splitlines()[1:]
    assert "0.6200" in mae and "k-NN" in mae and "0.1100" not in mae  # its classifier is untrained
    assert "0.7500" in fixmatch and "balanced acc 0.6100, macro-F1 0.6000" in fixmatch
