import csv
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from semivit.cli import main

TINY = ["--model", "vit_nano", "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set",
        "model.num_heads=2", "--steps", "4", "--batch-size", "8", "-q", "--set", "train.tensorboard=false"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "/no/such/folder"], "does not exist"),
    (["train", "--data", "digitz"], "did you mean 'digits'"),
    (["train", "--set", "optim.lrr=1"], "did you mean 'lr'"),
    (["train", "--labels", "500-per-class"], "asks for 500 images of class 0"),
    (["train", "--labels", "5"], "fewer labels (5) than classes (10)"),
    (["train", "--set", "model.patch_size=3"], "not divisible by patch size 3"),
    (["train", "--method", "fixmatchh"], "unknown method"),
    (["evaluate", "/no/such/model.safetensors"], "not found"),
])
def test_user_errors_are_one_line(args, message, capsys, tmp_path):
    code, out, err = run_cli([*args, "--out", str(tmp_path)] if args[0] == "train" else args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "semivit.cli", "train", "--data", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "semivit: error:" in proc.stderr


def test_train_evaluate_predict(tmp_path, capsys):
    code, out, _ = run_cli(["train", "--data", "digits", "--labels", "3-per-class", "--out", str(tmp_path),
                            "--name", "r", *TINY], capsys)
    assert code == 0 and '"test_top1"' in out
    code, out, _ = run_cli(["evaluate", str(tmp_path / "r"), "--data", "digits"], capsys)
    assert code == 0 and out.startswith("top-1 ")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    code, out, _ = run_cli(["predict", str(tmp_path / "r"), str(images), "-o", str(tmp_path / "p.csv")], capsys)
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 3 and {"path", "label", "confidence", "topk"} <= rows[0].keys()
    assert 0 <= float(rows[0]["confidence"]) <= 1 and rows[0]["topk"].count(":") == 5


@pytest.mark.slow
def test_demo_quick_writes_table_and_report(tmp_path, capsys):
    code, out, _ = run_cli(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "demo" / "results.csv")))
    assert [r["method"].split()[0] for r in rows] == ["supervised-only", "semivit"]
    assert set(rows[0]) == {"method", "labels", "test_top1", "seconds"}
    assert re.fullmatch(r"40 \+ \d+", rows[0]["labels"])  # the training labels and the validation labels
    assert (tmp_path / "demo" / "curves.png").is_file() and (tmp_path / "demo" / "report.html").is_file()
    assert (tmp_path / "demo" / "semivit" / "stage3-ema_teacher" / "results.json").is_file()
