"""Hugging Face sources (save_to_disk folders, Parquet, imagefolder + metadata.csv, hf:ORG/NAME), read
through the datasets library from folders these tests write. No network: the hub path is tested with
datasets.load_dataset replaced, and the library runs offline."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivit.data.sources import load_source
from semivit.errors import SemivitError

datasets = pytest.importorskip("datasets")  # the 'hf' extra; CI installs it with the 'test' extra

NAMES = ["cat", "dog", "fox"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Every datasets cache in the test's folder, and the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache", raising=False)


def _pil(i: int, size: tuple[int, int] = (6, 5)) -> Image.Image:
    return Image.new("RGB", size, (30 * i % 256, 100, 7 * i % 256))


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    _pil(i).save(buf, "PNG")
    return buf.getvalue()


def test_save_to_disk_with_splits_and_class_names(tmp_path):
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})

    def split(n: int, start: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"img": [_pil(start + i) for i in range(n)],
                                           "label": [(start + i) % 3 for i in range(n)]}, features=feats)

    datasets.DatasetDict({"train": split(9, 0), "validation": split(3, 20), "test": split(4, 40)}).save_to_disk(
        str(tmp_path / "ds"))
    b = load_source(str(tmp_path / "ds"))
    assert b.train.classes == NAMES and b.train.images.shape == (12, 3, 5, 6) and len(b.test) == 4
    assert b.train.labels.tolist()[:9] == [i % 3 for i in range(9)]
    assert b.val_index.tolist() == [9, 10, 11] and b.train.ids[9] == "val/validation/0"
    assert b.train.images[4, :, 0, 0].tolist() == [120, 100, 28]  # row 4's colour, decoded exactly
    assert b.test.labels.tolist() == [(40 + i) % 3 for i in range(4)]
    streamed = load_source(str(tmp_path / "ds"), stream_threshold=2)
    assert not streamed.train.in_memory and torch.equal(streamed.train.get(torch.tensor([4])), b.train.images[4:5])
    read = pickle.loads(pickle.dumps(streamed.train.read))  # DataLoader workers carry it
    assert torch.equal(read(10), b.train.images[10])  # a validation row, through the chained read
    from semivit.data.shard_writer import write_shards

    assert write_shards(str(tmp_path / "ds"), tmp_path / "sh", 5) == {"train": 2, "test": 1, "val": 1}
    s = load_source(str(tmp_path / "sh"))  # the rows' PNG bytes copied: the same pixels, classes, parts
    assert torch.equal(s.train.images, b.train.images) and s.train.classes == NAMES
    assert s.val_index.tolist() == [9, 10, 11] and torch.equal(s.test.images, b.test.images)


def test_parquet_bytes_and_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq" / "data").mkdir(parents=True)
    labels = ["dog", "cat", None, "dog"]
    pq.write_table(pa.table({"image": [{"bytes": _png(i), "path": None} for i in range(4)], "label": labels}),
                   tmp_path / "pq" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"image": [{"bytes": _png(9), "path": None}], "label": ["cat"]}),
                   tmp_path / "pq" / "data" / "test-00000-of-00001.parquet")
    b = load_source(str(tmp_path / "pq"))
    assert b.train.classes == ["cat", "dog"] and b.train.labels.tolist() == [1, 0, -1, 1]
    assert len(b.test) == 1 and b.test.labels.tolist() == [0]
    # plain binary column, one file; and a column of file paths relative to the Parquet file
    pq.write_table(pa.table({"png": [_png(i) for i in range(3)], "fine_label": [2, 0, 1]}), tmp_path / "one.parquet")
    b = load_source(str(tmp_path / "one.parquet"))
    assert b.train.labels.tolist() == [2, 0, 1] and b.train.classes == ["0", "1", "2"]
    for i in range(2):
        _pil(i, (4, 4)).save(tmp_path / f"im {i}.png")
    pq.write_table(pa.table({"file_name": ["im 0.png", "im 1.png"], "label": [1, 0]}), tmp_path / "paths.parquet")
    assert load_source(str(tmp_path / "paths.parquet")).train.images.shape == (2, 3, 4, 4)


def test_imagefolder_with_metadata_csv(tmp_path):
    root = tmp_path / "imf"
    root.mkdir()
    rows = ["file_name,label"]
    for i in range(5):
        _pil(i).save(root / f"{i}.png")
        rows.append(f"{i}.png,{NAMES[i % 2]}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    b = load_source(str(root))
    assert b.train.classes == ["cat", "dog"] and sorted(b.train.labels.tolist()) == [0, 0, 0, 1, 1]
    assert b.train.images.shape == (5, 3, 5, 6)


def test_hub_name_goes_through_load_dataset(monkeypatch):
    calls = []
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    pool = datasets.Dataset.from_dict({"image": [_pil(i) for i in range(4)]},
                                      features=datasets.Features({"image": datasets.Image()}))
    local = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": [_pil(i) for i in range(3)], "label": [0, 1, 2]}, features=feats), "unlabeled": pool})

    def fake(name, config=None, **kw):
        calls.append((name, config))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake)
    b = load_source("hf:someone/pets:small")
    assert calls == [("someone/pets", "small")] and b.train.classes == NAMES and b.name == "someone/pets:small"
    assert b.train.labels.tolist() == [0, 1, 2, -1, -1, -1, -1] and b.train.ids[3] == "unlabeled/0"

    def offline(name, config=None, **kw):
        raise ConnectionError("Couldn't reach 'someone/pets' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SemivitError, match="cannot read 'hf:someone/pets'.*HF_HUB_OFFLINE") as err:
        load_source("hf:someone/pets")
    assert "\n" not in str(err.value)


def test_no_image_column_and_missing_library(tmp_path, monkeypatch):
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(str(tmp_path / "txt"))
    with pytest.raises(SemivitError, match="no image column"):
        load_source(str(tmp_path / "txt"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(SemivitError, match=r"pip install 'semivit\[hf\]'") as err:
        load_source(str(tmp_path / "txt"))
    assert "\n" not in str(err.value)


def test_corrupt_rows_are_skipped(tmp_path):
    feats = datasets.Features({"png": datasets.Value("binary"), "label": datasets.Value("int64")})
    rows = {"png": [_png(0), b"garbage", _png(2)], "label": [0, 1, 1]}
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "c"))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\)"):
        b = load_source(str(tmp_path / "c"))
    assert b.train.ids == ["train/0", "train/2"] and np.array_equal(b.train.labels.numpy(), [0, 1])
    with pytest.raises(SemivitError, match="on_corrupt=skip"):
        load_source(str(tmp_path / "c"), on_corrupt="fail")


def test_unused_path_is_not_claimed(tmp_path):
    assert not (Path(tmp_path) / "metadata.csv").exists()
    (tmp_path / "a").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "a" / "x.png")
    assert load_source(str(tmp_path)).train.classes == ["a"]  # a plain class folder stays a folder
