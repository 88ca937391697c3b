import json

import pytest
import torch

from semivit.data.imageset import ImageSet
from semivit.data.splits import describe_label_counts, load_split, make_split, save_split
from semivit.errors import SemivitError


def toy_set(per_class=(20, 20, 20), unlabeled=10) -> ImageSet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)] + [torch.full((unlabeled,), -1)])
    n = len(labels)
    return ImageSet(labels, [f"img{i:03d}.png" for i in range(n)], ["a", "b", "c"][:len(per_class)], 1, (4, 4),
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


# ---------------------------------------------------------------------------------- honest label counts
def test_auto_validation_labels_are_counted_as_extra_labels():
    # the case: two classes, 10 labels per class; 'auto' validates on 50 *more* per class
    data = toy_set(per_class=(600, 600), unlabeled=0)
    split = make_split(data, "10-per-class", "auto", 0)
    assert split.label_counts() == {"labeled": 20, "val_labeled": 100, "labels_total": 120, "val_from": "extra"}
    assert describe_label_counts(split.label_counts()).startswith("labels used: 120 = 20 training + 100 validation "
                                                                  "(validation labels are extra, beyond --labels")


@pytest.mark.parametrize("val,train_per_class,val_per_class", [
    ("20%-of-labels", 8, 2), ("1-per-class-of-labels", 9, 1), ("3-of-labels", 9, 1),
    ("50%-OF-LABELS", 5, 5)])
def test_validation_held_out_of_the_labels(val, train_per_class, val_per_class):
    data = toy_set()
    split = make_split(data, "10-per-class", val, seed=3)
    assert torch.bincount(data.labels[split.labeled], minlength=3).tolist() == [train_per_class] * 3
    assert torch.bincount(data.labels[split.val], minlength=3).tolist() == [val_per_class] * 3
    # the validation images come out of the very labels '--labels 10-per-class' picks: 30 labels in all
    everything = make_split(data, "10-per-class", "0", seed=3).labeled
    assert set(split.labeled.tolist()) | set(split.val.tolist()) == set(everything.tolist())
    assert not set(split.labeled.tolist()) & set(split.val.tolist())
    assert split.label_counts() == {"labeled": 30 - len(split.val), "val_labeled": len(split.val),
                                    "labels_total": 30, "val_from": "labels"}
    assert set(split.unlabeled.tolist()) == set(range(len(data))) - set(split.val.tolist())
    assert "(validation held out of --labels)" in describe_label_counts(split.label_counts())


def test_a_held_out_share_keeps_a_training_label_per_class():
    data = toy_set()
    lone = make_split(data, "1-per-class", "20%-of-labels", 0)  # one label per class: nothing to validate
    assert len(lone.labeled) == 3 and len(lone.val) == 0
    assert lone.label_counts()["val_from"] == "none"
    assert describe_label_counts(lone.label_counts()) == "labels used: 3, all for training (no validation split)"
    two = make_split(data, "2-per-class", "90%-of-labels", 0)  # a share never takes a class's last label
    assert torch.bincount(data.labels[two.labeled], minlength=3).tolist() == [1, 1, 1]
    with pytest.raises(SemivitError, match="holds out 2 of the 2 labels of class 0"):
        make_split(data, "2-per-class", "2-per-class-of-labels", 0)
    with pytest.raises(SemivitError, match="nothing to train on"):
        make_split(data, "2-per-class", "all-of-labels", 0)
    with pytest.raises(SemivitError, match="cannot read data.val 'some'.*20%-of-labels"):
        make_split(data, "2-per-class", "some", 0)


def test_k_folds_partition_the_labels():
    data = toy_set(per_class=(7, 4, 1))
    k, labeled = 3, make_split(data, "all", "0", seed=2).labeled
    folds = [make_split(data, "all", f"fold-{i}-of-{k}", seed=2) for i in range(1, k + 1)]
    vals = [set(f.val.tolist()) for f in folds]
    for f in folds:
        assert set(f.labeled.tolist()) | set(f.val.tolist()) == set(labeled.tolist())
        assert not set(f.labeled.tolist()) & set(f.val.tolist())
        # every class keeps a training label; the class with a single label never validates
        assert torch.bincount(data.labels[f.labeled], minlength=3).min() >= 1
        assert f.label_counts()["labels_total"] == 12 and f.label_counts()["val_from"] == "labels"
    assert set().union(*vals) == set(labeled.tolist()) - {11}  # every label but the lone one validates once
    assert sum(len(v) for v in vals) == 11 and max(map(len, vals)) - min(map(len, vals)) <= 1
    # the partition is seeded: the same seed gives the same folds, another seed others
    assert torch.equal(make_split(data, "all", "fold-2-of-3", seed=2).val, folds[1].val)
    assert not all(torch.equal(make_split(data, "all", f"fold-{i}-of-3", seed=5).val, folds[i - 1].val)
                   for i in (1, 2, 3))
    with pytest.raises(SemivitError, match="2 or more folds"):
        make_split(data, "all", "fold-4-of-3", 0)


def test_split_file_keeps_where_validation_came_from(tmp_path):
    data = toy_set()
    split = make_split(data, "5-per-class", "20%-of-labels", 1)
    save_split(split, data, tmp_path / "split.json", {"seed": 1})
    saved = json.loads((tmp_path / "split.json").read_text())
    assert (saved["labeled"].__len__(), saved["val_labeled"], saved["labels_total"]) == (12, 3, 15)
    again = load_split(str(tmp_path / "split.json"), data)
    assert again.label_counts() == split.label_counts()
    # a split.json written before the counts were recorded could only hold extra validation labels
    del saved["val_from"]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert load_split(str(tmp_path / "old.json"), data).label_counts()["val_from"] == "extra"
    # a list file of labeled names can validate on a share of them
    (tmp_path / "list.txt").write_text("".join(f"img{i:03d}.png\n" for i in (0, 1, 20, 21, 40, 41)))
    listed = load_split(str(tmp_path / "list.txt"), data, "1-per-class-of-labels", 0)
    assert listed.label_counts() == {"labeled": 3, "val_labeled": 3, "labels_total": 6, "val_from": "labels"}


def test_flip_default_announced_once_per_data_set(caplog):
    from semivit import data
    from semivit.config import DataConfig
    from semivit.data import prepare_data

    data._ANNOUNCED.clear()  # other tests in this process may have prepared digits already
    caplog.set_level("INFO", logger="semivit")
    prepare_data(DataConfig(source="digits"), 0)
    prepare_data(DataConfig(source="digits"), 1)
    said = [r.getMessage() for r in caplog.records if "left-right" in r.getMessage()]
    assert len(said) == 1 and "does not flip 'digits'" in said[0] and "data.flip=true" in said[0]
    caplog.clear()
    assert prepare_data(DataConfig(source="digits", flip=True), 0).flip  # chosen: nothing to announce
    assert not [r for r in caplog.records if "left-right" in r.getMessage()]
