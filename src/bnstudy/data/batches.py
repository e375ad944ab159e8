"""Batches from a prepared dataset, on the device: what the training loop and the analyses draw.

A batch is a pure function of (seed, step): indices come from seeded per-epoch permutations and
every random draw of step t from a generator seeded by (seed, t, stream), so a run resumed from a
checkpoint draws exactly what an uninterrupted run would. Augmentation is done on the whole batch
at once with one gather (airbench style): no per-sample Python.
"""

from __future__ import annotations

import hashlib

import torch

from .datasets import Prepared, seeded_generator


class InputTransform:
    """uint8 images -> normalised float (on the device, per batch); identity for float inputs."""

    def __init__(self, meta: dict, device: torch.device, channels_last: bool = False):
        self.images = meta["task"] == "classification"
        self.channels_last = channels_last and self.images
        if self.images:
            self.mean = torch.tensor(meta["mean"], device=device).view(1, -1, 1, 1)
            self.inv_std = 1 / torch.tensor(meta["std"], device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.images:
            return x
        x = (x.float() / 255 - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def step_generator(seed: int, step: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose state is a pure function of (seed, step, stream).

    Seeding per step makes every random draw of step t independent of how the run got there,
    so a run resumed from a checkpoint draws exactly what an uninterrupted run would.
    """
    key = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(key, "little") >> 1)


class BatchSampler:
    """Batch t of a run, as a pure function of (seed, t): epochs are seeded permutations.

    `batch_size=None` is full-batch (the deep linear network's gradient descent).
    """

    def __init__(self, n: int, batch_size: int | None, seed: int,
                 device: torch.device | str = "cpu"):
        self.n, self.seed, self.device = n, seed, torch.device(device)
        self.batch_size = n if batch_size is None else min(batch_size, n)
        self.per_epoch = n // self.batch_size  # drop the ragged last batch, as is usual
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        """Batch `step`'s sample indices, on the sampler's device."""
        if self.batch_size == self.n:
            return torch.arange(self.n, device=self.device)
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            # drawn on the CPU (the same permutation on every device), moved once per epoch
            perm = torch.randperm(self.n, generator=step_generator(self.seed, epoch, 0))
            self._perm, self._epoch = perm.to(self.device), epoch
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]


def augment(x: torch.Tensor, crop: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `crop` pixels (reflect-padded crop) and horizontal flip, on the
    whole batch at once with one gather: no per-sample Python."""
    n, _, h, w = x.shape
    if crop:
        padded = torch.nn.functional.pad(x, (crop,) * 4, mode="reflect")
        dx = torch.randint(0, 2 * crop + 1, (n,), generator=gen, device=gen.device).to(x.device)
        dy = torch.randint(0, 2 * crop + 1, (n,), generator=gen, device=gen.device).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=gen.device).to(x.device) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(-1), x)
    return x


def analysis_batches(prepared: Prepared, batch_size: int | None, batches: int, seed: int,
                     device: torch.device | str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, seeded training batches for the checkpoint analyses (normalised, on `device`).

    Drawn from the training set, because the analyses probe the loss being optimised.
    """
    n = prepared.train_x.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    order = torch.randperm(n, generator=seeded_generator(seed))
    transform = InputTransform(prepared.meta, torch.device(device))
    out = []
    for b in range(batches):
        idx = order[(b * size) % n:][:size]
        if idx.numel() < size:  # wrap around for several full-size batches
            idx = torch.cat([idx, order[:size - idx.numel()]])
        out.append((transform(prepared.train_x[idx].to(device)), prepared.train_y[idx].to(device)))
    return out
