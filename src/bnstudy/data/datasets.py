"""Datasets as one cached tensor file (rule prepare_data), and how jobs load it.

Every source (synthetic, cifar10, imagefolder, gaussian, mnist) is turned once into a single
`.pt` file holding uint8 images (or float vectors for the deep linear network), int64 labels and
metadata (class names, normalisation statistics, a checksum). Training and the analyses then keep
these tensors on their device and draw batches by index (`bnstudy.data.batches`), in the style of
airbench: no per-sample Python, no worker processes, no image decoding in the training loop.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import DataError  # noqa: F401  (raised here; defined without torch)

FORMAT_VERSION = 1


@dataclass
class Prepared:
    """A prepared dataset: inputs and targets for both splits plus metadata."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    meta: dict

    @property
    def task(self) -> str:
        return self.meta["task"]

    def to(self, device: torch.device | str) -> "Prepared":
        return Prepared(self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                        self.test_y.to(device), self.meta)


# ----------------------------------------------------------------------------------------------
# sources


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def synthetic_images(cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Procedural CIFAR-shaped classification data, deterministic from `cfg['seed']`.

    Each class is a mixture of a few oriented plane waves with class-specific frequencies and
    colours (its "texture"). A sample is its class texture at a random translation and amplitude,
    blended with the texture of a random other class (a distractor) and pixel noise. Translation
    makes convolutions the right tool; the distractor and noise keep it from being trivial, so a
    small VGG lands between chance and 100% in a demo budget, and normalisation changes how fast
    it gets there.
    """
    g = seeded_generator(cfg["seed"])
    k, c, s = cfg["classes"], cfg["channels"], cfg["image_size"]
    waves = 3
    freq = 0.5 + 3.5 * torch.rand(k, waves, generator=g)  # cycles per image
    angle = math.pi * torch.rand(k, waves, generator=g)
    colour = torch.randn(k, waves, c, generator=g)
    colour = colour / colour.norm(dim=-1, keepdim=True)
    grid = torch.arange(s, dtype=torch.float32) / s

    def render(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = labels.numel()
        shift = torch.rand(n, 2, generator=gen)  # random translation, in image units
        phase = 2 * math.pi * torch.rand(n, waves, generator=gen)
        amp = 0.6 + 0.8 * torch.rand(n, waves, generator=gen)
        fx = (freq[labels] * torch.cos(angle[labels]))  # n, waves
        fy = (freq[labels] * torch.sin(angle[labels]))
        u = grid.view(1, 1, s, 1) + shift[:, 0].view(n, 1, 1, 1)
        v = grid.view(1, 1, 1, s) + shift[:, 1].view(n, 1, 1, 1)
        arg = 2 * math.pi * (fx.view(n, waves, 1, 1) * u + fy.view(n, waves, 1, 1) * v) + phase.view(n, waves, 1, 1)
        wave = amp.view(n, waves, 1, 1) * torch.sin(arg)  # n, waves, s, s
        return torch.einsum("nwhv,nwc->nchv", wave, colour[labels])

    def split(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % k  # exactly class-balanced
        labels = labels[torch.randperm(n, generator=gen)]
        other = (labels + 1 + torch.randint(0, k - 1, (n,), generator=gen)) % k
        x = render(labels, gen) + cfg["distractor"] * render(other, gen)
        x = x + cfg["noise"] * torch.randn(x.shape, generator=gen)
        x = (128 + 48 * x).round().clamp(0, 255).to(torch.uint8)
        return x, labels

    train_x, train_y = split(cfg["n_train"], seeded_generator(cfg["seed"] + 1))
    test_x, test_y = split(cfg["n_test"], seeded_generator(cfg["seed"] + 2))
    return train_x, train_y, test_x, test_y, [f"class{i}" for i in range(k)]


def gaussian_regression(cfg: dict) -> tuple[torch.Tensor, ...]:
    """The deep linear network's data: x ~ N(0, I_d), targets A x for a fixed Gaussian A."""
    g = seeded_generator(cfg["seed"])
    d = cfg["dim"]
    a = torch.randn(d, d, generator=g)
    train_x = torch.randn(cfg["n_train"], d, generator=g)
    test_x = torch.randn(cfg["n_test"], d, generator=g)
    return train_x, train_x @ a.T, test_x, test_x @ a.T, a


def _torchvision_split(cls, cfg: dict, key: str, train: bool):
    root = cfg.get("root")
    if not root:
        raise DataError(f"datasets.{key}.root is not set: give the folder that holds (or should "
                        f"receive) {cls.__name__}, or use source: synthetic")
    try:
        ds = cls(root=root, train=train, download=bool(cfg.get("download")))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"{cls.__name__} not found or corrupt under datasets.{key}.root={root!r} ({err}). Fix: "
            f"set download: true where the network allows, point root at an existing copy, or use "
            f"source: imagefolder (class folders) or synthetic") from err
    except OSError as err:  # network errors when downloading
        raise DataError(f"could not download {cls.__name__} into {root!r} ({err}); this machine may "
                        f"be offline: point datasets.{key}.root at an existing copy") from err
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST NHW, CIFAR NHWC
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def torchvision_dataset(cfg: dict, key: str):
    """CIFAR-10 or MNIST through torchvision (downloaded where allowed, else read from root)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST}[cfg["source"]]
    train_x, train_y, classes = _torchvision_split(cls, cfg, key, True)
    test_x, test_y, _ = _torchvision_split(cls, cfg, key, False)
    return train_x, train_y, test_x, test_y, classes


def image_folder(cfg: dict, key: str):
    """`root/train/<class>/*` and `root/test/<class>/*` images, decoded once (Pillow)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    root = Path(cfg.get("root") or "")
    if not cfg.get("root") or not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"datasets.{key}.root={cfg.get('root')!r} must hold train/<class>/ and "
                        f"test/<class>/ image folders (e.g. the extracted cifar10-jpeg.tar.gz)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders under {root / 'train'}")
    mode = "L" if cfg["channels"] == 1 else "RGB"

    def load(split: str):
        images, labels = [], []
        for label, name in enumerate(classes):
            folder = root / split / name
            if not folder.is_dir():
                raise DataError(f"missing class folder {folder} (train/ has it)")
            for path in sorted(folder.iterdir()):
                try:
                    with Image.open(path) as im:
                        img = torch.from_numpy(np.array(im.convert(mode))).reshape(
                            im.height, im.width, -1).permute(2, 0, 1)
                except (OSError, UnidentifiedImageError) as err:
                    raise DataError(f"cannot decode image {path}: {err}; delete or replace it") from err
                if img.shape[1:] != (cfg["image_size"], cfg["image_size"]):
                    raise DataError(f"{path} is {tuple(img.shape[1:])}, expected "
                                    f"datasets.{key}.image_size={cfg['image_size']}")
                images.append(img)
                labels.append(label)
        if not images:
            raise DataError(f"no images under {root / split}")
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    train_x, train_y = load("train")
    test_x, test_y = load("test")
    return train_x, train_y, test_x, test_y, classes


def balanced_subset(y: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of size n (all indices, shuffled, if n is None)."""
    g = seeded_generator(seed)
    order = torch.randperm(y.numel(), generator=g)
    if n is None or n >= y.numel():
        return order
    classes = int(y.max()) + 1
    # rank of each sample within its class, in the shuffled order; take ranks round-robin
    ys = y[order]
    rank = torch.zeros_like(ys)
    for c in range(classes):
        mask = ys == c
        rank[mask] = torch.arange(int(mask.sum()))
    keep = order[torch.argsort(rank * classes + ys, stable=True)[:n]]
    return keep[torch.randperm(n, generator=g)]


# ----------------------------------------------------------------------------------------------
# prepare / load


def prepare(cfg: dict, key: str, out: Path, record: Path | None = None) -> dict:
    """Build dataset `key` from its config and write it atomically to `out`. Returns its metadata.

    `record` gets the source it was made from and its metadata as JSON, written after the tensor
    file. The workflow puts both in place as results/data/<key>.pt and .json (rules prepare_data,
    install_data); the config check reads the record without torch (`bnstudy.config.load.check_dataset`)
    to know whether a changed source needs its raw data."""
    source = cfg["source"]
    if source == "gaussian":
        train_x, train_y, test_x, test_y, a = gaussian_regression(cfg)
        meta = {"task": "regression", "dim": cfg["dim"], "classes": [], "matrix": a.tolist()}
    else:
        if source == "synthetic":
            train_x, train_y, test_x, test_y, classes = synthetic_images(cfg)
        elif source in ("cifar10", "mnist"):
            train_x, train_y, test_x, test_y, classes = torchvision_dataset(cfg, key)
        elif source == "imagefolder":
            train_x, train_y, test_x, test_y, classes = image_folder(cfg, key)
        else:  # the schema rejects this first; kept for direct callers
            raise DataError(f"datasets.{key}.source={source!r} is not one of synthetic, cifar10, "
                            f"imagefolder, gaussian, mnist")
        tr = balanced_subset(train_y, cfg.get("n_train"), cfg["seed"])
        te = balanced_subset(test_y, cfg.get("n_test"), cfg["seed"] + 1)
        train_x, train_y, test_x, test_y = train_x[tr], train_y[tr], test_x[te], test_y[te]
        pixels = train_x.to(torch.float64) / 255
        meta = {
            "task": "classification",
            "classes": classes,
            "mean": pixels.mean(dim=(0, 2, 3)).tolist(),
            "std": pixels.std(dim=(0, 2, 3)).tolist(),
            "shape": list(train_x.shape[1:]),
        }
    digest = hashlib.sha256()
    for t in (train_x, train_y, test_x, test_y):
        digest.update(t.contiguous().numpy().tobytes())
    meta.update(name=key, source=source, format=FORMAT_VERSION, sha256=digest.hexdigest(),
                n_train=int(train_x.shape[0]), n_test=int(test_x.shape[0]))
    blob = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "meta": meta}
    atomic_torch_save(blob, out)
    if record is not None:
        described = {k: v for k, v in meta.items() if k != "matrix"}
        atomic_write(Path(record), lambda tmp: tmp.write_text(json.dumps(
            {"prepared_from": cfg, **described}, indent=2, sort_keys=True) + "\n"))
    return meta


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through a temporary file and a rename: never a half-written file.

    Saved through a file object, not the temporary path: given a path, torch.save names the
    archive's root folder after it, and the random temporary name would make every preparation of
    the same data different bytes. The same bytes let Snakemake see (by checksum) that a dataset
    prepared again is unchanged, so nothing that reads it reruns."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    atomic_write(path, save)


def load_prepared(path: Path | str) -> Prepared:
    """Load a prepared dataset, with an error naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared dataset {path} does not exist: run `snakemake {path}` "
                        f"(rule prepare_data) first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{path} has format {meta.get('format')}, expected {FORMAT_VERSION}: "
                            f"delete it and rerun prepare_data")
        return Prepared(blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], meta)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"prepared dataset {path} is corrupt ({type(err).__name__}: {err}): delete "
                        f"it and rerun prepare_data") from err
