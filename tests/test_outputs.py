"""Output paths are checked before the work: a folder where a file goes, a path under a file, or a missing
folder (created) are handled the same way in predict, evaluate and export, in one line."""

from __future__ import annotations

import pytest

from semivit.cli import main
from semivit.engine.trainer import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    return train(tiny_config(out, **{"train.steps": 2, "train.eval_every": 0})).run_dir


def _image(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_bad_output_path_is_one_line_before_any_work(run, tmp_path, capsys, monkeypatch, command):
    import semivit.engine.checkpoint as checkpoint

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(checkpoint, "load_model", never)  # no work may start
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    flag = {"predict": ["-o"], "evaluate": ["--data", "digits", "--json"], "export": ["--format", "onnx", "-o"]}
    head = {"predict": ["predict", str(run), str(_image(tmp_path))], "evaluate": ["evaluate", str(run)],
            "export": ["export", str(run)]}[command]
    for bad, said in [(tmp_path, "is a folder: name a file"), (blocker / "out.csv", "is a file, not a folder")]:
        code = main([*head, *flag[command], str(bad)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and said in err[0], err


def test_a_missing_output_folder_is_created(run, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "predictions.csv"
    assert main(["predict", str(run), str(_image(tmp_path)), "-o", str(target)]) == 0
    assert target.is_file()
    report = tmp_path / "reports" / "eval.json"
    assert main(["evaluate", str(run), "--data", "digits", "--json", str(report)]) == 0
    assert report.is_file()
