"""Bad input ends in one line naming the problem and the fix, never a traceback (each case used to be one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from semivit.cli import main

TINY = ["--model", "vit_nano", "--set", "model.depth=1", "--steps", "1", "-q"]


def _one_line(capsys, code: int, *said: str) -> None:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("semivit")]
    assert code == 2 and len(err) == 1, err
    for text in said:
        assert text in err[0], err[0]


@pytest.fixture
def npz(tmp_path):
    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    return tmp_path


def test_a_truncated_npz(npz, capsys):
    data = (npz / "ok.npz").read_bytes()
    (npz / "cut.npz").write_bytes(data[: len(data) // 2])
    _one_line(capsys, main(["train", "--data", str(npz / "cut.npz"), "--out", str(npz), *TINY]),
              "truncated or damaged")


def test_an_npz_of_object_arrays_for_images_and_for_video(npz, capsys):
    np.savez(npz / "obj.npz", x=np.array([np.zeros((8, 8)), "a"], dtype=object), y=np.arange(2))
    _one_line(capsys, main(["train", "--data", str(npz / "obj.npz"), "--out", str(npz), *TINY]),
              "object arrays", "never unpickles")
    from semivit.errors import SemivitError
    from semivit.video.data import load_videos

    np.savez(npz / "clips.npz", videos=np.array([1, "x"], dtype=object), labels=np.arange(2),
             classes=np.array(["a", "b"]))
    with pytest.raises(SemivitError, match="object arrays"):
        load_videos(str(npz / "clips.npz"))


@pytest.mark.parametrize("size", ["0", "-4"])
def test_a_batch_size_of_zero_or_less(size, capsys, tmp_path):
    _one_line(capsys, main(["train", "--data", "digits", "--batch-size", size, "--out", str(tmp_path), *TINY]),
              f"train.batch_size must be ≥ 1, got {size}")


def test_data_with_a_single_class_is_refused(npz, capsys):
    np.savez(npz / "one.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20, int))
    _one_line(capsys, main(["train", "--data", str(npz / "one.npz"), "--labels", "2-per-class", "--out", str(npz),
                            *TINY]), "the data has 1 class", "needs at least 2")


def test_a_test_label_out_of_range_is_named(npz, capsys):
    y = np.arange(20) % 2
    test = y.copy()
    test[3] = 99
    np.savez(npz / "oor.npz", x_train=np.zeros((20, 8, 8), np.uint8), y_train=y,
             x_test=np.zeros((20, 8, 8), np.uint8), y_test=test)
    _one_line(capsys, main(["train", "--data", str(npz / "oor.npz"), "--labels", "2-per-class", "--out", str(npz),
                            *TINY]), "label 99", "not a class of the training part")


def test_evaluate_on_data_with_more_classes_than_the_model(npz, capsys):
    assert main(["train", "--data", str(npz / "ok.npz"), "--labels", "2-per-class", "--out", str(npz), "--name",
                 "r", *TINY]) == 0
    capsys.readouterr()
    _one_line(capsys, main(["evaluate", str(npz / "r"), "--data", "digits"]), "model predicts 2 classes")


def test_evaluate_reads_the_runs_own_data_by_default(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--labels", "2-per-class", "--out", str(tmp_path), "--name", "r",
                 *TINY]) == 0
    capsys.readouterr()
    from semivit.cli_evaluate import _run_data

    assert _run_data(str(tmp_path / "r"), None) == ("digits", None)
    npz = tmp_path / "own.npz"
    np.savez(npz, x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 2,
             x_test=np.zeros((6, 8, 8), np.uint8), y_test=np.arange(6) % 2)
    assert main(["train", "--data", str(npz), "--labels", "2-per-class", "--out", str(tmp_path), "--name", "own",
                 *TINY]) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["evaluate", str(tmp_path / "own"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["n"] == 6  # its own 6 test images, not digits' 360
    assert _run_data(str(tmp_path / "own"), None) == (str(npz), None)


def test_a_forged_shard_index_table(npz, capsys):
    assert main(["shards", str(npz / "ok.npz"), str(npz / "sh")]) == 0
    table = next((npz / "sh").glob("*.idx.json"))
    data = json.loads(table.read_text())
    data["samples"][0] = [-5, 10**15, "png", 0, "x"]
    table.write_text(json.dumps(data))
    capsys.readouterr()
    _one_line(capsys, main(["train", "--data", str(npz / "sh"), "--out", str(npz), *TINY]),
              "row 0 points outside the tar", "delete it")


def test_a_zero_byte_frame_strip(tmp_path, capsys):
    for c in "ab":
        (tmp_path / "vid" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 32, 3), np.uint8)).save(tmp_path / "vid" / c / f"clip{i}.png")
    (tmp_path / "vid" / "a" / "empty.png").write_bytes(b"")
    _one_line(capsys, main(["video", "train", "--data", str(tmp_path / "vid"), "--frame-width", "8", "--out",
                            str(tmp_path / "out"), "--steps", "1"]), "empty.png", "empty or not an image")


def test_a_refused_weights_file_is_one_line_without_torchs_advice(tmp_path):
    """A crafted .pth (pickle protocol 5, with code in it): one error line, no torch warning, no suggestion to
    retry with weights_only=False (which would run the file's code), and no timm log lines."""
    import os
    import pickle
    import subprocess
    import sys

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"a": RunsCode()}, protocol=5))
    done = subprocess.run([sys.executable, "-m", "semivit.cli", "train", "--data", "digits", "--pretrained",
                           str(tmp_path / "evil.pth"), "--out", str(tmp_path), *TINY], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and err[-1].startswith("semivit: error: cannot read") and "evil.pth" in err[-1]
    assert not [line for line in err if "Warning" in line or "weights_only=False" in line or "Traceback" in line]
    assert not (tmp_path / "pwned").exists()
