"""Tests for semivit.data.sources: every source kind, built offline from tiny generated files."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivit.data import sources
from semivit.data.sources import load_source, read_idx
from semivit.errors import SemivitError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _image(path: Path, size: tuple[int, int] = (8, 8), value: int = 200, mode: str = "RGB") -> Path:
    """Write a flat image (PNG or JPEG by suffix) of ``size`` (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, 0, 0) if mode == "RGB" else value).save(path)
    return path


def _tree(root: Path, layout: dict[str, int], **kw) -> Path:
    """Images ``root/<folder>/<i>.png`` for each folder -> count in ``layout``."""
    for folder, count in layout.items():
        for i in range(count):
            _image(root / folder / f"{i}.png", **kw)
    return root


def _write_idx(path: Path, arr: np.ndarray) -> None:
    data = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(data)


def _idx_dir(folder: Path, suffix: str = "", n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-format files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte{suffix}``; returns train x, y."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
    for part, m in (("train", n), ("t10k", 3)):
        _write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", x[:m])
        _write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", y[:m])
    return x.astype(np.uint8), y


# ------------------------------------------------------------------------------------------ built-ins


def test_digits_shapes_and_split():
    b = load_source("digits")
    assert (b.name, b.flip) == ("digits", False)
    assert b.train.images.shape == (1437, 1, 8, 8) and b.test.images.shape == (360, 1, 8, 8)
    assert b.train.images.dtype == torch.uint8 and int(b.train.images.max()) == 255
    assert b.train.labels.dtype == torch.int64 and set(b.test.labels.tolist()) == set(range(10))
    assert b.train.classes == [str(i) for i in range(10)] and b.train.channels == 1
    assert not set(b.train.ids) & set(b.test.ids)
    assert load_source("Digits").test.ids == b.test.ids  # fixed seed: the same split every time


def test_cifar10_offline_from_torchvision_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, 4)]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_NAMES}))
    b = load_source("cifar10", root=str(tmp_path))
    assert b.train.images.shape == (20, 3, 32, 32) and b.test.images.shape == (4, 3, 32, 32)
    assert b.train.classes == CIFAR_NAMES and b.flip
    assert torch.equal(b.test.images[1].flatten(), torch.from_numpy(batches["test_batch"]["data"][1]))
    assert b.test.labels.tolist() == batches["test_batch"]["labels"]


class _RunsCode:
    """What a crafted "CIFAR batch" holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_batch_is_refused_and_runs_no_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))  # the original files' protocol
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_NAMES}))
    assert len(load_source("cifar10", root=str(tmp_path)).train) == 10
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _RunsCode(marker), "labels": [0]}))
    with pytest.raises(SemivitError, match=r"refused to read '.*data_batch_3': it asks to run posix\.system"):
        load_source("cifar10", root=str(tmp_path))
    assert not marker.exists()  # pickle.load would have run it
    (folder / "data_batch_3").write_bytes(pickle.dumps(good)[:40])
    with pytest.raises(SemivitError, match="truncated"):
        load_source("cifar10", root=str(tmp_path))


def test_builtin_missing_files_says_how_to_download(tmp_path):
    with pytest.raises(SemivitError, match="data.download=true"):
        load_source("cifar10", root=str(tmp_path))
    with pytest.raises(SemivitError, match="data.download=true"):
        load_source("mnist", root=str(tmp_path))


def test_fashion_mnist_offline_matches_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(sources.builtin, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    x, y = _idx_dir(tmp_path / "FashionMNIST" / "raw")  # torchvision's own layout, uncompressed
    b = load_source("fashion_mnist", root=str(tmp_path))
    reference = FashionMNIST(str(tmp_path), train=True)  # torchvision reads the same fake files
    assert torch.equal(b.train.images[:, 0], reference.data)
    assert torch.equal(b.train.labels, reference.targets)
    assert b.name == "fashion-mnist" and b.train.classes[0] == "T-shirt/top" and len(b.test) == 3
    assert b.train.images.shape == (6, 1, 28, 28)


def test_fashion_mnist_falls_back_to_debian_dir(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _idx_dir(debian, ".gz")
    monkeypatch.setattr(sources.builtin, "DEBIAN_FASHION_MNIST", debian)
    b = load_source("fashionmnist", root=str(tmp_path / "empty"))
    assert len(b.train) == 6 and b.train.classes[-1] == "Ankle boot"


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dir(tmp_path, suffix):
    x, y = _idx_dir(tmp_path / "digits-idx", suffix)
    b = load_source(str(tmp_path / "digits-idx"))
    assert torch.equal(b.train.images[:, 0], torch.from_numpy(x)) and b.train.labels.tolist() == y.tolist()
    assert b.train.classes == [str(i) for i in range(6)] and not b.flip and len(b.test) == 3
    assert read_idx(tmp_path / "digits-idx" / f"t10k-labels-idx1-ubyte{suffix}").shape == (3,)


def test_idx_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(SemivitError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_debian_fashion_mnist_dir():
    if not sources.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is absent (apt-get install -y dataset-fashion-mnist)")
    b = load_source(str(sources.DEBIAN_FASHION_MNIST))
    assert b.train.images.shape == (60000, 1, 28, 28) and b.test.images.shape == (10000, 1, 28, 28)
    assert b.train.classes[0] == "T-shirt/top" and b.flip
    assert b.train.labels.bincount().tolist() == [6000] * 10


# -------------------------------------------------------------------------------------------- folders


def test_image_folder_train_test(tmp_path):
    _tree(tmp_path / "train", {"cat": 2}, size=(8, 6))
    _tree(tmp_path / "train", {"dog": 3}, size=(12, 10), mode="L")  # other size, grey: made RGB
    _tree(tmp_path / "test", {"cat": 1, "dog": 1}, size=(5, 5))
    b = load_source(str(tmp_path))
    # the most common size (3 of 5 images are 12×10) sets the size, and the cats are resized to it
    assert b.train.images.shape == (5, 3, 10, 12) and b.test.images.shape == (2, 3, 10, 12)
    assert b.train.classes == ["cat", "dog"] and b.train.labels.tolist() == [0, 0, 1, 1, 1]
    assert b.train.ids[0] == "cat/0.png" and b.test.ids == ["cat/0.png", "dog/0.png"]
    assert b.test.labels.tolist() == [0, 1] and b.train.in_memory
    assert load_source(str(tmp_path), image_size=16).test.images.shape == (2, 3, 16, 16)


def test_class_folders_with_test_argument(tmp_path):
    _tree(tmp_path / "data", {"cat": 2, "dog": 2}, mode="L")
    _tree(tmp_path / "val", {"dog": 2})  # only one class, RGB and default size
    b = load_source(str(tmp_path / "data"), test=str(tmp_path / "val"))
    assert b.test.labels.tolist() == [1, 1] and b.test.classes == ["cat", "dog"]
    assert b.test.images.shape == (2, 1, 8, 8)  # converted to the train part's channels
    assert load_source(str(tmp_path / "data")).test is None
    _tree(tmp_path / "other", {"bird": 1})
    with pytest.raises(SemivitError, match="bird"):
        load_source(str(tmp_path / "data"), test=str(tmp_path / "other"))


def test_unlabeled_folder(tmp_path):
    _tree(tmp_path, {"": 3}, mode="L")
    b = load_source(str(tmp_path))
    assert b.train.labels.tolist() == [-1, -1, -1] and b.train.classes == [] and b.train.channels == 1


def test_unlabeled_pool_is_appended(tmp_path):
    _tree(tmp_path / "train", {"a": 1, "b": 1}, size=(8, 8))
    _tree(tmp_path / "pool", {"": 2}, size=(5, 7), mode="L")
    b = load_source(str(tmp_path / "train"), unlabeled=str(tmp_path / "pool"))
    assert b.train.images.shape == (4, 3, 8, 8) and b.train.labels.tolist() == [0, 1, -1, -1]
    assert b.train.ids[2:] == ["unlabeled/0.png", "unlabeled/1.png"] and b.train.classes == ["a", "b"]


def test_streamed_folder(tmp_path):
    _tree(tmp_path / "train", {"a": 2, "b": 2}, size=(8, 6))
    _tree(tmp_path / "pool", {"": 3}, mode="L")
    b = load_source(str(tmp_path / "train"), unlabeled=str(tmp_path / "pool"), stream_threshold=2)
    assert not b.train.in_memory and len(b.train) == 7 and b.train.channels == 3
    assert b.train.get(torch.tensor([0, 6])).shape == (2, 3, 6, 8)
    read = pickle.loads(pickle.dumps(b.train.read))  # DataLoader workers need a picklable read
    assert read(6).dtype == torch.uint8 and read(6).shape == (3, 6, 8)


def test_zip_tree(tmp_path):
    _image(tmp_path / "x.jpg", size=(10, 10))
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for part, n in (("train", 3), ("test", 1)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    zf.write(tmp_path / "x.jpg", f"cifar10/{part}/{cls}/{i:04d}.jpg")
        zf.writestr("cifar10/README.txt", "not an image")
        zf.writestr("__MACOSX/cifar10/train/cat/._0000.jpg", b"resource fork")
    b = load_source(str(tmp_path / "set.zip"))
    assert b.name == "set" and b.train.images.shape == (6, 3, 10, 10) and len(b.test) == 2
    assert b.train.ids[0] == "cat/0000.jpg" and b.train.classes == ["cat", "dog"]
    streamed = load_source(str(tmp_path / "set.zip"), stream_threshold=1)
    assert torch.equal(streamed.train.read(5), b.train.images[5])



def test_zip_stream_in_forked_workers(tmp_path):
    """Workers forked after the parent opened the zip read their own members (no shared file offset)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for i in range(64):  # noise PNGs of ~12 kB: reads leave the file object's buffer and seek
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
            zf.writestr(f"train/{'ab'[i % 2]}/{i:02d}.png", buf.getvalue())
    part = load_source(str(tmp_path / "set.zip"), stream_threshold=1).train
    expected = [part.read(i) for i in range(len(part))]  # the parent's handle is open before the fork
    loader = torch.utils.data.DataLoader(range(len(part)), batch_size=None, num_workers=2,
                                         collate_fn=lambda i: (i, part.read(i)))
    for _ in range(4):
        for i, x in loader:
            assert torch.equal(x, expected[i])


# ----------------------------------------------------------------------------------------- csv, npz


def test_csv_names_ints_and_empty(tmp_path):
    for i in range(3):
        _image(tmp_path / "img" / f"{i}.png")
    absolute = tmp_path / "img" / "2.png"
    (tmp_path / "names.csv").write_text(f"path,label\nimg/0.png,dog\nimg/1.png,\n{absolute},cat\n")
    b = load_source(str(tmp_path / "names.csv"))
    assert b.train.classes == ["cat", "dog"] and b.train.labels.tolist() == [1, -1, 0]
    assert b.train.ids[0] == "img/0.png" and b.test is None
    (tmp_path / "ints.csv").write_text("path,label\nimg/0.png,3\nimg/1.png,0\nimg/2.png,\n")
    b = load_source(str(tmp_path / "ints.csv"))
    assert b.train.classes == ["0", "1", "2", "3"] and b.train.labels.tolist() == [3, 0, -1]
    (tmp_path / "neg.csv").write_text("path,label\nimg/0.png,-1\n")
    with pytest.raises(SemivitError, match="labels out of range"):
        load_source(str(tmp_path / "neg.csv"))


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, layout):
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)  # N×C×H×W reference
    stored = {"NHW": x[:, 0], "NHWC": x.transpose(0, 2, 3, 1), "NCHW": x}[layout]
    np.savez(tmp_path / "d.npz", x=stored, y=[0, 1, -1, 2, 1], x_test=stored[:2], y_test=[2, 0],
             classes=np.array(["a", "b", "c"]))
    b = load_source(str(tmp_path / "d.npz"))
    want = x[:, :1] if layout == "NHW" else x
    assert torch.equal(b.train.images, torch.from_numpy(want)) and b.train.labels.tolist() == [0, 1, -1, 2, 1]
    assert b.train.classes == ["a", "b", "c"]
    assert b.test.ids == ["0", "1"] and b.test.labels.tolist() == [2, 0]


def test_npz_label_out_of_range(tmp_path):
    x = np.zeros((2, 4, 4), np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=[0, 3], classes=np.array(["a", "b", "c"]))
    with pytest.raises(SemivitError, match=r"label 3 .*-1 \(unlabeled\) and 0\.\.2"):
        load_source(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=x, y=[0, -2])
    with pytest.raises(SemivitError, match="label -2"):
        load_source(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", x=x, y=[0, 1])
    assert load_source(str(tmp_path / "c.npz")).train.classes == ["0", "1"]


def test_npz_as_test_of_a_folder_is_resized(tmp_path):
    _tree(tmp_path / "train", {"0": 1, "1": 1}, size=(6, 6))
    np.savez(tmp_path / "t.npz", x=np.full((3, 10, 10), 9, np.uint8), y=[1, 0, 1])
    b = load_source(str(tmp_path / "train"), test=str(tmp_path / "t.npz"))
    assert b.test.images.shape == (3, 3, 6, 6) and int(b.test.images.max()) == 9


# ------------------------------------------------------------------------------------------------ errors


def test_corrupt_images_skip_and_fail(tmp_path):
    _tree(tmp_path / "c", {"a": 3})
    (tmp_path / "c" / "a" / "1.png").write_bytes(b"not an image at all")
    jpeg = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, "JPEG")
    (tmp_path / "c" / "a" / "2.jpg").write_bytes(jpeg.getvalue()[:1000])  # truncated: opens, cannot decode
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\).*1\.png"):
        b = load_source(str(tmp_path / "c"))
    assert b.train.ids == ["a/0.png", "a/2.png"]
    with pytest.raises(SemivitError, match=r"1\.png.*data\.on_corrupt=skip"):
        load_source(str(tmp_path / "c"), on_corrupt="fail")
    with pytest.raises(SemivitError, match="on_corrupt"):
        load_source(str(tmp_path / "c"), on_corrupt="ignore")
    with pytest.warns(UserWarning, match="skipped 1 "):  # streamed: only headers are checked up front
        streamed = load_source(str(tmp_path / "c"), stream_threshold=1).train
    with pytest.raises(SemivitError, match=r"2\.jpg"):
        streamed.read(streamed.ids.index("a/2.jpg"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SemivitError, match="no images found under"):
        load_source(str(tmp_path / "empty"))


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(SemivitError, match="did you mean 'digits'") as err:
        load_source("digitz")
    assert "\n" not in str(err.value) and ".npz" in str(err.value)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(SemivitError, match="unsupported data file"):
        load_source(str(tmp_path / "data.txt"))


@pytest.mark.slow
def test_real_cifar10_zip():
    path = SHARED_DATA / "cifar10_jpeg.zip"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    start = time.perf_counter()
    b = load_source(str(path))
    seconds = time.perf_counter() - start
    assert b.train.images.shape == (50000, 3, 32, 32) and b.test.images.shape == (10000, 3, 32, 32)
    assert b.train.classes == CIFAR_NAMES and b.train.labels.bincount().tolist() == [5000] * 10
    assert seconds < 60, f"loading took {seconds:.1f} s"


# ------------------------------------------------------------------------ npz conventions, provided validation


def test_npz_keras_keys(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8), rng.integers(0, 256, (2, 5, 5, 3),
                                                                                      dtype=np.uint8)
    np.savez(tmp_path / "keras.npz", x_train=x_train, y_train=np.array([[0], [1], [2], [0], [1], [2]]),
             x_test=x_test, y_test=np.array([2, 1]))  # Keras' CIFAR labels are N×1, MNIST's N
    b = load_source(str(tmp_path / "keras.npz"))
    assert torch.equal(b.train.images, torch.from_numpy(x_train.transpose(0, 3, 1, 2)))
    assert b.train.labels.tolist() == [0, 1, 2, 0, 1, 2] and b.test.labels.tolist() == [2, 1]
    assert b.train.classes == ["0", "1", "2"] and b.val_index is None


def _medmnist(path: Path, n_train: int = 12, n_val: int = 4, n_test: int = 3) -> None:
    rng = np.random.default_rng(2)
    parts = {}
    for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        parts[f"{part}_images"] = rng.integers(0, 256, (n, 7, 7), dtype=np.uint8)
        parts[f"{part}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)  # N×1, as MedMNIST
    np.savez(path, **parts)


def test_npz_medmnist_keys_and_validation_part(tmp_path):
    from semivit.config import DataConfig
    from semivit.data import prepare_data

    _medmnist(tmp_path / "pneumoniamnist.npz")
    b = load_source(str(tmp_path / "pneumoniamnist.npz"))
    assert b.train.images.shape == (16, 1, 7, 7) and len(b.test) == 3  # 12 train + 4 validation images
    assert b.val_index.tolist() == list(range(12, 16)) and b.train.ids[12] == "val/0"
    assert b.train.labels.tolist() == [0, 1] * 8
    cfg = DataConfig(source=str(tmp_path / "pneumoniamnist.npz"), labels="2-per-class")
    split = prepare_data(cfg, seed=0).split
    assert split.val.tolist() == list(range(12, 16))  # the provided validation part, not labels from train
    assert split.labeled.max() < 12 and len(split.labeled) == 4
    assert not set(split.unlabeled.tolist()) & set(split.val.tolist()) and len(split.unlabeled) == 12
    own = prepare_data(DataConfig(source=cfg.source, labels="2-per-class", val="1-per-class-of-labels"), 0).split
    assert len(own.val) == 2  # an explicit data.val wins; the provided part then is ordinary training data


def test_npz_unknown_keys_and_multilabel(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(SemivitError, match="x_train/y_train .Keras.") as err:
        load_source(str(tmp_path / "a.npz"))
    assert "\n" not in str(err.value)
    np.savez(tmp_path / "b.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 3, 2)))
    with pytest.raises(SemivitError, match="N×C multi-label"):
        load_source(str(tmp_path / "b.npz"))
    # N×C of 0/1 are multi-label targets (tests/test_multilabel.py)
    np.savez(tmp_path / "c.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.eye(2, 3))
    assert load_source(str(tmp_path / "c.npz")).train.multilabel


# ------------------------------------------------------------------------------- folders as users keep them


def test_messy_folder(tmp_path):
    root = tmp_path / "photos"
    _image(root / "cat" / "big cat.png", size=(40, 30))  # the first image: its size is the default size
    _image(root / "cat" / "grey.png", size=(10, 10), value=90, mode="L")
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(root / "cat" / "clear.png")  # transparent: on white
    pal = Image.new("P", (9, 9), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    (root / "dög").mkdir()
    pal.save(root / "dög" / "palette ünï.gif")
    _image(root / "dög" / "phôto 1.JPG", size=(16, 8))
    (root / "dög" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning) as record:
        b = load_source(str(root))
    lines = [str(w.message) for w in record]
    skipped = next(line for line in lines if line.startswith("skipped"))
    assert "1 unreadable image(s)" in skipped and "1 non-image file(s)" in skipped
    assert "1 hidden/system file(s)" in skipped
    assert any("5 sizes" in line and "30×40" not in line and "40×30" in line for line in lines)
    assert b.train.images.shape == (5, 3, 30, 40) and b.train.classes == ["cat", "dög"]
    assert "dög/phôto 1.JPG" in b.train.ids and "dög/palette ünï.gif" in b.train.ids
    clear = b.train.images[b.train.ids.index("cat/clear.png")]
    assert int(clear.min()) == 255  # alpha 0 composited on white, not the stored red
    grey = b.train.images[b.train.ids.index("cat/grey.png")]
    assert torch.equal(grey[0], grey[1]) and int(grey[0, 0, 0]) == 90
    palette = b.train.images[b.train.ids.index("dög/palette ünï.gif")]
    assert palette[:, 0, 0].tolist() == [10, 200, 30]
    assert load_source(str(root), image_size=16).train.images.shape == (5, 3, 16, 16)


def test_csv_missing_files_skip_or_fail(tmp_path):
    for i in range(2):
        _image(tmp_path / "img" / f"{i}.png")
    (tmp_path / "m.csv").write_text("path,label\nimg/0.png,a\nimg/gone.png,b\nimg/1.png,b\nimg/also gone.png,\n")
    with pytest.warns(UserWarning, match=r"skipped 2 missing file\(s\) under .*m\.csv \(first: 'img/gone\.png'\)"):
        b = load_source(str(tmp_path / "m.csv"))
    assert b.train.ids == ["img/0.png", "img/1.png"] and b.train.classes == ["a", "b"]
    assert b.train.labels.tolist() == [0, 1]
    with pytest.raises(SemivitError, match=r"names 2 file\(s\) that do not exist.*on_corrupt=skip") as err:
        load_source(str(tmp_path / "m.csv"), on_corrupt="fail")
    assert "\n" not in str(err.value)


def test_decode_bytes_matches_pil_resize_and_drafts_large_jpegs():
    """The loader's faster path (torchvision's resize, JPEG draft mode when shrinking ≥ 2×) stays within a
    few grey levels of PIL's full decode + bilinear resize."""
    from semivit.data.sources.common import decode_bytes

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    smooth = np.asarray(small.resize((400, 300), Image.BICUBIC))  # photo-like: smooth, 300×400
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(smooth).save(buf, fmt, quality=95)
        for size in ((64, 64), (120, 200), (300, 400), (600, 500)):
            arr, stored = decode_bytes(buf.getvalue(), size, "RGB")
            ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(size[::-1], Image.BILINEAR))
            assert arr.shape == (*size, 3) and arr.dtype == np.uint8 and stored == (400, 300)
            drafted = fmt == "JPEG" and size[0] * 2 <= 300 and size[1] * 2 <= 400  # DCT-scaled while decoding
            assert np.abs(arr.astype(int) - ref).mean() < (3 if drafted else 1), (fmt, size)
    grey, _ = decode_bytes(buf.getvalue(), (32, 32), "L")
    assert grey.shape == (32, 32, 1)
    with pytest.raises(OSError):
        decode_bytes(buf.getvalue()[: len(buf.getvalue()) // 2], (32, 32), "RGB")  # truncated


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (X-ray, microscopy) is scaled from 0–65535 to 0–255; PIL's conversion clipped it to 255."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + i * 7)
            Image.fromarray(ramp).save(tmp_path / c / f"{i}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode == "I;16"
    x = load_source(str(tmp_path)).train.images
    want = np.rint(np.arange(64).reshape(8, 8) * 1000 / 257).astype(np.uint8)
    assert x.dtype == torch.uint8 and x.shape[1] == 1
    assert np.array_equal(x[0, 0].numpy(), want) and int(x.max()) == round(63000 / 257)


def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) trains upright."""
    upright = np.zeros((8, 12, 3), np.uint8)
    upright[:2] = 255  # a white band at the top of the picture as seen
    stored = np.rot90(upright, 1)  # the camera stored it rotated 90° counter-clockwise: 12×8
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        img = Image.fromarray(np.ascontiguousarray(stored))
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(tmp_path / c / "0.jpg", exif=exif.tobytes(), quality=95)
    x = load_source(str(tmp_path)).train.images
    assert tuple(x.shape[2:]) == (8, 12)  # H×W as shown, not as stored
    assert x[0, :, :2].float().mean() > 200 and x[0, :, 4:].float().mean() < 50


def test_the_size_is_the_most_common_one_capped_not_the_first_files(tmp_path):
    """A huge scan sorted first no longer sets every image's size; the most common size does, its longest
    side capped at MAX_AUTO_SIDE with a warning."""
    from semivit.data.sources.common import MAX_AUTO_SIDE

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 20), 100, np.uint8)).save(tmp_path / c / f"{i + 1}.png")
    Image.fromarray(np.zeros((3000, 200), np.uint8)).save(tmp_path / "a" / "0.png")  # sorted first
    with pytest.warns(UserWarning, match="the most common size"):
        x = load_source(str(tmp_path)).train.images
    assert tuple(x.shape[2:]) == (16, 20)
    (tmp_path / "big").mkdir()
    for c in ("a", "b"):
        (tmp_path / "big" / c).mkdir()
        Image.fromarray(np.zeros((2048, 1536), np.uint8)).save(tmp_path / "big" / c / "0.png")
    with pytest.warns(UserWarning, match=f"longest side {MAX_AUTO_SIDE}"):
        x = load_source(str(tmp_path / "big")).train.images
    assert tuple(x.shape[2:]) == (1024, 768)


def test_a_fifo_named_png_and_links_out_of_the_folder_are_left_out_in_one_line(tmp_path):
    """A FIFO named *.png used to hang the run (reading it blocks); a link out of the given folder is not
    followed; a link inside it is."""
    import os

    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(root / c / "0.png")
    os.mkfifo(root / "a" / "pipe.png")
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    (root / "b" / "escape.png").symlink_to(outside)
    (root / "b" / "inside.png").symlink_to(root / "a" / "0.png")
    with pytest.warns(UserWarning, match=r"1 link\(s\) leading out of the folder.*1 special file\(s\)|"
                                         r"1 special file\(s\).*1 link\(s\) leading out of the folder"):
        b = load_source(str(root))
    assert len(b.train) == 3  # a/0, b/0 and b/inside
