import json

import pytest
import torch

from semivit.data.imageset import ImageSet
from semivit.data.splits import load_split, make_split, save_split
from semivit.errors import SemivitError


def toy_set(per_class=(20, 20, 20), unlabeled=10) -> ImageSet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)] + [torch.full((unlabeled,), -1)])
    n = len(labels)
    return ImageSet(labels, [f"img{i:03d}.png" for i in range(n)], ["a", "b", "c"], 1, (4, 4),
                    images=torch.zeros(n, 1, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("spec,expected", [("4-per-class", [4, 4, 4]), ("7", [3, 2, 2]), ("10%", [2, 2, 2]),
                                           ("all", [20, 20, 20])])
def test_label_specs_are_class_balanced(spec, expected):
    data = toy_set()
    split = make_split(data, spec, "0", seed=1)
    counts = torch.bincount(data.labels[split.labeled], minlength=3).tolist()
    assert counts == expected


def test_split_is_seeded_and_disjoint():
    data = toy_set()
    a, b, c = make_split(data, "4-per-class", "2-per-class", 0), make_split(data, "4-per-class",
                                                                              "2-per-class", 0), \
        make_split(data, "4-per-class", "2-per-class", 1)
    assert torch.equal(a.labeled, b.labeled) and torch.equal(a.val, b.val)
    assert not torch.equal(a.labeled, c.labeled)
    assert not set(a.labeled.tolist()) & set(a.val.tolist())
    assert torch.bincount(data.labels[a.val], minlength=3).tolist() == [2, 2, 2]
    # the unlabeled pool is every training image except the validation split (hidden labels included)
    assert set(a.unlabeled.tolist()) == set(range(len(data))) - set(a.val.tolist())
    assert (data.labels[a.unlabeled] == -1).sum() == 10


def test_auto_val_split():
    split = make_split(toy_set(per_class=(100, 100, 100)), "4-per-class", "auto", 0)
    assert len(split.val) == 3 * 9  # 10% of the 96 left per class


def test_too_few_labels_are_errors():
    data = toy_set()
    with pytest.raises(SemivitError, match="fewer labels \\(2\\) than classes \\(3\\)"):
        make_split(data, "2")
    with pytest.raises(SemivitError, match="asks for 25 images of class 0"):
        make_split(data, "25-per-class")
    with pytest.raises(SemivitError, match="cannot read --labels"):
        make_split(data, "lots")


def test_split_file_round_trip(tmp_path):
    data = toy_set()
    split = make_split(data, "3-per-class", "1-per-class", 5)
    save_split(split, data, tmp_path / "split.json", {"seed": 5})
    again = load_split(str(tmp_path / "split.json"), data)
    assert torch.equal(again.labeled, split.labeled) and torch.equal(again.val, split.val)
    assert json.loads((tmp_path / "split.json").read_text())["labeled"][0].startswith("img")


def test_list_file_of_labeled_names(tmp_path):
    data = toy_set()
    (tmp_path / "1percent.txt").write_text("img000.png\nimg021.png\nimg045.png\n")
    split = load_split(str(tmp_path / "1percent.txt"), data, "1-per-class")
    assert split.labeled.tolist() == [0, 21, 45]
    assert len(split.val) == 3 and not set(split.val.tolist()) & {0, 21, 45}
    (tmp_path / "bad.txt").write_text("nope.png\n")
    with pytest.raises(SemivitError, match="names 1 images not in the training data"):
        load_split(str(tmp_path / "bad.txt"), data)
