"""Prepared datasets: deterministic, class-balanced, atomic, clear errors on bad sources."""


import pytest
import torch

from bnstudy.data.batches import BatchSampler, analysis_batches, augment, step_generator
from bnstudy.data.datasets import DataError, balanced_subset, load_prepared, prepare

SYNTH = {"source": "synthetic", "seed": 3, "n_train": 200, "n_test": 100, "image_size": 32,
         "channels": 3, "classes": 10, "noise": 0.6, "distractor": 0.6}


def test_synthetic_is_deterministic_balanced_and_cifar_shaped(tmp_path):
    a = prepare(SYNTH, "images", tmp_path / "a.pt")
    b = prepare(SYNTH, "images", tmp_path / "b.pt")
    assert a["sha256"] == b["sha256"]
    assert a["sha256"] != prepare({**SYNTH, "seed": 4}, "images", tmp_path / "c.pt")["sha256"]
    data = load_prepared(tmp_path / "a.pt")
    assert data.train_x.dtype == torch.uint8 and tuple(data.train_x.shape) == (200, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [20] * 10
    assert torch.bincount(data.test_y).tolist() == [10] * 10
    assert len(data.meta["mean"]) == 3 and all(0 < s < 1 for s in data.meta["std"])


def test_synthetic_is_not_trivial_for_a_linear_probe(tmp_path):
    """A least-squares linear classifier on raw pixels stays far from 100% test accuracy
    (random translations make convolutions the right tool). That a convnet does learn it is
    tested in test_train.py."""
    prepare({**SYNTH, "n_train": 2000, "n_test": 500}, "images", tmp_path / "d.pt")
    d = load_prepared(tmp_path / "d.pt")
    x = d.train_x.flatten(1).double() / 255
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.linalg.lstsq(x, torch.nn.functional.one_hot(d.train_y, 10).double()).solution
    xt = torch.cat([d.test_x.flatten(1).double() / 255, torch.ones(len(d.test_x), 1, dtype=x.dtype)], 1)
    acc = ((xt @ w).argmax(1) == d.test_y).double().mean().item()
    assert acc < 0.5


def test_gaussian_targets_are_a_fixed_linear_map(tmp_path):
    meta = prepare({"source": "gaussian", "seed": 0, "dim": 10, "n_train": 1000, "n_test": 50},
                   "linear", tmp_path / "g.pt")
    d = load_prepared(tmp_path / "g.pt")
    a = torch.tensor(meta["matrix"])
    assert torch.allclose(d.train_y, d.train_x @ a.T, atol=1e-5)
    assert d.train_x.shape == (1000, 10) and meta["task"] == "regression"


def test_imagefolder_reads_class_folders_and_names_a_corrupt_file(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                value = 40 * i + (100 if c == "dog" else 0)
                Image.new("RGB", (8, 8), (value, value, value)).save(root / split / c / f"{i}.png")
    cfg = {"source": "imagefolder", "root": str(root), "seed": 0, "n_train": None, "n_test": None,
           "image_size": 8, "channels": 3, "classes": 2}
    meta = prepare(cfg, "folder", tmp_path / "f.pt")
    assert meta["classes"] == ["cat", "dog"] and meta["n_train"] == 6
    (root / "train" / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        prepare(cfg, "folder", tmp_path / "f2.pt")
    with pytest.raises(DataError, match="datasets.folder.root"):
        prepare({**cfg, "root": str(tmp_path / "missing")}, "folder", tmp_path / "f3.pt")


def test_cifar10_missing_gives_a_fix(tmp_path):
    cfg = {"source": "cifar10", "root": str(tmp_path / "nothing"), "download": False, "seed": 0,
           "n_train": None, "n_test": None, "classes": 10}
    with pytest.raises(DataError, match="download: true"):
        prepare(cfg, "cifar", tmp_path / "c.pt")


def test_corrupt_prepared_file_is_named(tmp_path):
    prepare(SYNTH, "images", tmp_path / "a.pt")
    blob = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="a.pt is corrupt"):
        load_prepared(tmp_path / "a.pt")
    with pytest.raises(DataError, match="does not exist"):
        load_prepared(tmp_path / "none.pt")


def test_batches_are_a_function_of_seed_and_step():
    s1, s2 = BatchSampler(100, 32, seed=1), BatchSampler(100, 32, seed=1)
    assert torch.equal(s1.indices(7), s2.indices(7))
    epoch = torch.cat([s1.indices(i) for i in range(3)])
    assert epoch.unique().numel() == 96  # one epoch: no index twice
    assert not torch.equal(s1.indices(0), BatchSampler(100, 32, seed=2).indices(0))
    assert BatchSampler(100, None, seed=0).indices(5).tolist() == list(range(100))


def test_balanced_subset():
    y = torch.arange(1000) % 10
    idx = balanced_subset(y, 50, seed=0)
    assert torch.bincount(y[idx], minlength=10).tolist() == [5] * 10


def test_augment_translates_and_flips_whole_batches():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    same = augment(x, 0, False, step_generator(0, 0, 1))
    assert torch.equal(same, x)
    flipped = augment(x, 0, True, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    moved = augment(x, 1, False, step_generator(0, 1, 1))
    assert moved.shape == x.shape
    a = augment(x, 1, True, step_generator(5, 9, 1))
    b = augment(x, 1, True, step_generator(5, 9, 1))
    assert torch.equal(a, b)


def test_analysis_batches_are_seeded(tmp_path):
    prepare(SYNTH, "images", tmp_path / "a.pt")
    d = load_prepared(tmp_path / "a.pt")
    a = analysis_batches(d, 16, 2, seed=0, device="cpu")
    b = analysis_batches(d, 16, 2, seed=0, device="cpu")
    assert len(a) == 2 and torch.equal(a[1][0], b[1][0]) and a[0][0].dtype == torch.float32
    assert abs(a[0][0].mean().item()) < 0.5


def test_install_data_puts_copies_in_place_that_share_no_inode_with_the_incoming_files(tmp_path):
    """Snakemake touches a job's outputs, then checks each is no older than every input: an output
    hard-linked to its input would let touching the record age the data file against it (the
    Slurm smoke DAG failed so on a loaded VM). Copies: same bytes, own inodes, and touching an
    installed file leaves the incoming one as it was."""
    import os
    import subprocess
    import sys

    incoming = [tmp_path / "incoming" / "d-1.pt", tmp_path / "incoming" / "d-1.json"]
    incoming[0].parent.mkdir()
    incoming[0].write_bytes(b"\x00tensor bytes" * 1000)
    incoming[1].write_text('{"source": "x"}')
    targets = [tmp_path / "data" / "d.pt", tmp_path / "data" / "d.json"]
    subprocess.run([sys.executable, "-m", "bnstudy", "install-data", "--from", *map(str, incoming),
                    "--to", *map(str, targets)], check=True)
    for source, target in zip(incoming, targets):
        assert target.read_bytes() == source.read_bytes()
        assert os.stat(target).st_ino != os.stat(source).st_ino
    before = os.stat(incoming[0]).st_mtime_ns
    os.utime(targets[0])
    assert os.stat(incoming[0]).st_mtime_ns == before
    assert not list((tmp_path / "data").glob(".*.tmp"))  # no temporary left behind
