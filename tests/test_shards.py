"""WebDataset-style tar shards: writing (semivit shards), reading, and the streamed training path across
DDP ranks and DataLoader workers (CPU, gloo), on shards the tests write."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import DataLoader

from semivit.data.loaders import BatchMaker, ShardImageStream
from semivit.data.shard_writer import write_shards
from semivit.data.sources import load_source
from semivit.data.sources.shards import ShardReader, ShardSampleStream, expand, index_shards
from semivit.errors import SemivitError


def _npz(path: Path, n: int = 23, test: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n + test, 6, 6, 3), dtype=np.uint8)
    y = np.arange(n + test) % 3
    y[::7] = -1  # some unlabeled images
    np.savez(path, x=x[:n], y=y[:n], x_test=x[n:], y_test=np.arange(test) % 3, classes=np.array(["a", "b", "c"]))
    return x


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("shards")
    _npz(tmp / "d.npz")
    counts = write_shards(str(tmp / "d.npz"), tmp / "out", shard_size=4)
    assert counts == {"train": 6, "test": 2}  # 23 samples in shards of 4; 5 test samples
    return tmp


def test_expand_braces_and_globs(tmp_path):
    assert expand("s/train-{000..002}.tar") == ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
    assert expand("{a,b}-{8..10}.tar")[-1] == "{a,b}-10.tar"  # only numeric ranges are braces
    assert expand("x-{1..2}-{0..1}.tar") == ["x-1-0.tar", "x-1-1.tar", "x-2-0.tar", "x-2-1.tar"]
    for i in range(3):
        (tmp_path / f"t-{i}.tar").write_bytes(b"")
    assert expand(str(tmp_path / "t-*.tar")) == [str(tmp_path / f"t-{i}.tar") for i in range(3)]


def test_roundtrip_from_arrays(shard_dir):
    ref = load_source(str(shard_dir / "d.npz"))
    out = shard_dir / "out"
    assert (out / "classes.txt").read_text().split() == ["a", "b", "c"]
    for spec in (str(out), str(out / "train-{000000..000005}.tar")):
        b = load_source(spec)
        assert torch.equal(b.train.images, ref.train.images)  # PNG is lossless
        assert b.train.labels.tolist() == ref.train.labels.tolist() and b.train.ids == ref.train.ids
        assert b.train.classes == ["a", "b", "c"]
    b = load_source(str(out))
    assert torch.equal(b.test.images, ref.test.images) and b.test.labels.tolist() == ref.test.labels.tolist()
    streamed = load_source(str(out), stream_threshold=0)
    assert not streamed.train.in_memory and isinstance(streamed.train.read, ShardReader)
    assert torch.equal(streamed.train.get(torch.tensor([22, 3])), ref.train.images[[22, 3]])


def test_roundtrip_from_files_keeps_original_bytes(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (9 + i, 7), (40 * i, 100, 0)).save(tmp_path / "imgs" / cls / f"ph oto {i}.jpg")
    write_shards(str(tmp_path / "imgs"), tmp_path / "sh", shard_size=100)
    with tarfile.open(tmp_path / "sh" / "train-000000.tar") as tar:
        names = tar.getnames()
        first = tar.extractfile(names[0]).read()
    assert names[:3] == ["000000000.jpg", "000000000.cls", "000000000.id"]
    assert first == (tmp_path / "imgs" / "cat" / "ph oto 0.jpg").read_bytes()
    a, b = load_source(str(tmp_path / "imgs"), image_size=8), load_source(str(tmp_path / "sh"), image_size=8)
    assert torch.equal(a.train.images, b.train.images) and a.train.ids == b.train.ids


def test_sidecar_index_matches_a_header_scan(shard_dir, tmp_path):
    import shutil

    shards = sorted(str(p) for p in (shard_dir / "out").glob("train-*.tar"))
    fast = index_shards(shards)
    copies = []
    for shard in shards:  # the same shards without their .idx.json: read by scanning the tar headers
        copies.append(shutil.copy(shard, tmp_path))
    scanned = index_shards(copies)
    assert fast.offset.tolist() == scanned.offset.tolist() and fast.size.tolist() == scanned.size.tolist()
    assert fast.labels == scanned.labels and fast.ids == scanned.ids and fast.ext == scanned.ext
    table = json.loads(Path(shards[0]).with_suffix(".idx.json").read_text())
    table["samples"] = [[off + 7, *rest] for off, *rest in table["samples"]]
    Path(copies[0]).with_suffix(".idx.json").write_text(json.dumps(table))
    assert index_shards(copies).offset[0] == scanned.offset[0] + 7  # a table for this very file is used
    table["tar_bytes"] += 1
    Path(copies[0]).with_suffix(".idx.json").write_text(json.dumps(table))
    assert index_shards(copies).offset.tolist() == scanned.offset.tolist()  # a stale table is not trusted


def test_bad_shards_one_line(tmp_path):
    (tmp_path / "bad-000.tar").write_bytes(b"this is no tar archive" * 40)
    with pytest.raises(SemivitError, match="not a readable tar") as err:
        load_source(str(tmp_path / "bad-000.tar"))
    assert "\n" not in str(err.value)
    with pytest.raises(SemivitError, match="does not exist"):
        load_source(str(tmp_path / "train-{000..003}.tar"))
    with pytest.raises(SemivitError, match="empty or new folder"):
        _npz(tmp_path / "d.npz")
        write_shards(str(tmp_path / "d.npz"), tmp_path / "o", 10)
        write_shards(str(tmp_path / "d.npz"), tmp_path / "o", 10)


def _epoch_samples(stream: ShardSampleStream, workers: int, epochs: int = 2) -> dict[int, list[int]]:
    """Indices delivered per epoch, iterating until every worker has moved past ``epochs`` epochs."""
    seen: dict[int, list[int]] = {}
    past: set[int] = set()
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    for idx, _images, ep, (w, _e, _p) in loader:
        for i, e in zip(idx.tolist(), ep.tolist()):
            seen.setdefault(e, []).append(i)
        if int(ep.min()) >= epochs:
            past.add(int(w))
        if len(past) == max(1, workers):
            break
    return seen


@pytest.mark.parametrize("shard_size", [4, 30])  # 6 shards for 2 workers; 1 shard: split by sample
def test_stream_every_sample_once_per_epoch(shard_dir, tmp_path, shard_size):
    out = tmp_path / "sh"
    write_shards(str(shard_dir / "d.npz"), out, shard_size=shard_size)
    part = load_source(str(out), stream_threshold=0).train
    pool = torch.tensor([i for i in range(len(part)) if i != 5])  # a validation image is left out
    part.read.raw(0)  # the parent holds an open handle: forked workers must not share its file offset
    stream = ShardSampleStream(part.read, pool, batch_size=3, seed=1, key=2, buffer=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sample misread as corrupt would be skipped with a warning
        seen = _epoch_samples(stream, workers=2)
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == pool.tolist()
    assert seen[0] != sorted(seen[0])  # shuffled


def _rank(rank: int, port: int, out: str, result: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    part = load_source(out, stream_threshold=0).train
    stream = ShardSampleStream(part.read, torch.arange(len(part)), batch_size=2, seed=3, key=2, rank=rank,
                               world=2, buffer=4)
    seen = _epoch_samples(stream, workers=2)
    gathered: list = [None, None]
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        torch.save(gathered, result)
    dist.destroy_process_group()


def test_two_gloo_ranks_two_workers_see_every_sample_once(shard_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = str(tmp_path / "seen.pt")
    # fork: spawn would re-import this module and torch in each rank (~10 s on a loaded 2-core machine)
    mp.start_processes(_rank, args=(port, str(shard_dir / "out"), result), nprocs=2, join=True, start_method="fork")
    by_rank = torch.load(result)
    for epoch in (0, 1):
        a, b = by_rank[0][epoch], by_rank[1][epoch]
        assert not set(a) & set(b) and len(a) == len(set(a)) and len(b) == len(set(b))
        assert sorted(a + b) == list(range(23))  # 6 shards over 4 slots: each sample once, by one slot


def test_resume_at_a_shard_boundary(shard_dir):
    part = load_source(str(shard_dir / "out"), stream_threshold=0).train
    pool = torch.arange(len(part))
    first = ShardImageStream(part, pool, batch_size=2, seed=0, key=2, rank=0, world=1, workers=0, buffer=3)
    consumed = [i for _ in range(5) for i in first.next()[0].tolist()]
    state = first.state_dict()
    (epoch, position), = state["shard_positions"].values()
    assert epoch == 0 and 0 < position < 6
    resumed = ShardImageStream(part, pool, batch_size=2, seed=0, key=2, rank=0, world=1, workers=0, buffer=3)
    resumed.load_state_dict(state)
    plan = ShardSampleStream(part.read, pool, 2, 0, 2)._plan(0, 0, 1)
    rest = sorted(i for shard in plan[position:] for i in shard.tolist())
    after = [i for _ in range((len(rest) + 1) // 2) for i in resumed.next()[0].tolist()][:len(rest)]
    assert sorted(after) == rest  # it restarts at the first shard not fully delivered and finishes the epoch
    done = sorted(i for shard in plan[:position] for i in shard.tolist())
    assert set(done) <= set(consumed)  # the shards before the resume point had been fully delivered
    assert set(consumed) | set(after) == set(range(23))


def test_batch_maker_streams_unlabeled_shards(shard_dir):
    part = load_source(str(shard_dir / "out"), stream_threshold=0).train
    maker = BatchMaker(part, torch.tensor([0, 1, 2, 4]), torch.arange(len(part)), labeled_views=("weak",),
                       unlabeled_views=("weak", "strong"), batch_size=2, unlabeled_batch_size=4,
                       device=torch.device("cpu"), seed=0, flip=True, workers=0)
    assert isinstance(maker.unlabeled, ShardImageStream)
    batch = maker.next(0)
    assert batch.u["strong"].shape == (4, 3, 6, 6) and batch.x["weak"].shape == (2, 3, 6, 6)
    assert len(batch.y) == 2 and set(batch.y.tolist()) <= set(part.labels[[0, 1, 2, 4]].tolist())
    assert "shard_positions" in maker.state_dict()["unlabeled"]


def test_cli_shards(tmp_path, capsys):
    from semivit.cli import main

    _npz(tmp_path / "d.npz")
    assert main(["shards", str(tmp_path / "d.npz"), str(tmp_path / "o"), "--shard-size", "10"]) == 0
    assert "3 train shard(s)" in capsys.readouterr().out
    assert len(load_source(str(tmp_path / "o")).train) == 23


def test_stream_threshold_and_shuffle_buffer_are_settings(shard_dir):
    from semivit.config import DataConfig
    from semivit.data import prepare_data

    source = str(shard_dir / "out")
    assert prepare_data(DataConfig(source=source), 0).train.images is not None  # 23 samples: in memory
    data = prepare_data(DataConfig(source=source, stream_threshold=0, labels="2-per-class", val="0"), 0)
    assert data.train.images is None  # streamed from the shards
    maker = BatchMaker(data.train, data.split.labeled, data.split.unlabeled, labeled_views=("weak",),
                       unlabeled_views=("weak",), batch_size=2, unlabeled_batch_size=4, device=torch.device("cpu"),
                       seed=0, flip=True, workers=0, shuffle_buffer=7)
    assert maker.unlabeled.buffer == 7
    with pytest.raises(SemivitError, match="shuffle_buffer"):
        prepare_data(DataConfig(source=source, shuffle_buffer=0), 0)


def test_short_side_shrinks_large_images_only(tmp_path):
    rng = np.random.default_rng(0)
    for cls, (w, h) in (("a", (120, 90)), ("b", (40, 30))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / "x.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / "imgs" / cls / "y.png")
    write_shards(str(tmp_path / "imgs"), tmp_path / "sh", shard_size=10, short_side=45)
    with tarfile.open(tmp_path / "sh" / "train-000000.tar") as tar:
        images = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith((".jpg", ".png"))]
    sizes = sorted(Image.open(io.BytesIO(data)).size for data in images)
    assert sizes == [(40, 30), (40, 30), (60, 45), (60, 45)]  # 120×90 → 60×45, aspect kept; 40×30 untouched
    assert (tmp_path / "imgs" / "b" / "x.jpg").read_bytes() in images  # a small image keeps its bytes
    assert len(load_source(str(tmp_path / "sh")).train) == 4
    with pytest.raises(SemivitError, match="short-side"):
        write_shards(str(tmp_path / "imgs"), tmp_path / "sh2", shard_size=10, short_side=2)


def test_link_members_of_a_shard_are_counted_and_said(tmp_path):
    """Symbolic and hard links in a tar used to vanish without a word."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("a", "b"):
            for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.cls", b"0" if key == "a" else b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for kind, name in ((tarfile.SYMTYPE, "c.png"), (tarfile.LNKTYPE, "d.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "a.png"
            tar.addfile(info)
    with pytest.warns(UserWarning, match=r"skipped 2 symbolic or hard link member\(s\) .*c\.png"):
        index = index_shards([str(shard)])
    assert len(index.labels) == 2
