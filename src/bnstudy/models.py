"""The networks of both papers: a VGG for 32x32 images, the deep linear network, the 2015 MLP.

Every network is a stack of `Block`s (conv or linear layer -> normalisation variant -> non-linearity)
followed by a plain output layer. Blocks are the paper's "layers": block i is layer #i of the figures
(1-based). The training loop and the analyses reach activations through `model.blocks` and
parameters through `model.layer_groups()`; models know nothing of logging or tracking.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .architectures import vgg_channels
from .norms import make_norm
from .spec import RunSpec

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


class SeededDropout(nn.Module):
    """Dropout that draws from its own generator (set each step by the training loop), so runs are
    reproducible and resumable without touching torch's global RNG."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator,
                          device=self.generator.device if self.generator else x.device)
        return x * (keep.to(x.device) >= self.p).to(x.dtype) / (1 - self.p)


class Block(nn.Module):
    """One normalised layer: `layer` (conv/linear) -> `norm` (the variant) -> `act`."""

    def __init__(self, layer: nn.Module, norm: nn.Module, act: nn.Module):
        super().__init__()
        self.layer, self.norm, self.act = layer, norm, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.layer(x)))


class Network(nn.Module):
    """`features` (blocks, pools, flatten, dropout) then `output` (the final linear layer)."""

    def __init__(self, features: list[nn.Module], output: nn.Module):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.output = output

    @property
    def blocks(self) -> list[Block]:
        return [m for m in self.features if isinstance(m, Block)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))

    def layer_groups(self) -> list[list[str]]:
        """Per normalised layer (entry i-1 = layer #i): its parameter names, main weight first."""
        names = {id(p): n for n, p in self.named_parameters()}
        groups = []
        for block in self.blocks:
            params = [block.layer.weight] + [p for n, p in block.named_parameters()
                                             if p is not block.layer.weight]
            groups.append([names[id(p)] for p in params])
        return groups


def _block(layer: nn.Module, features: int, spatial: bool, spec: RunSpec, noise: bool,
           act: str | None = None, normalise: bool = True) -> Block:
    norm = make_norm(spec.norm.variant if normalise else "standard", features, spatial, spec.norm,
                     noise_enabled=noise)
    return Block(layer, norm, ACTIVATIONS[act or spec.model.activation]())


def vgg(spec: RunSpec, noise: bool) -> Network:
    m = spec.model
    channels, size = spec.dataset.shape[0], spec.dataset.shape[1]
    features: list[nn.Module] = []
    for width in vgg_channels(m.depth, m.width):
        if width == "M":
            features.append(nn.MaxPool2d(2))
            size //= 2
            continue
        conv = nn.Conv2d(channels, width, 3, padding=1, bias=m.bias)
        features.append(_block(conv, width, True, spec, noise))
        channels = width
    features.append(nn.Flatten())
    dim = channels * size * size
    for hidden in m.head:
        features.append(_block(nn.Linear(dim, hidden, bias=m.bias), hidden, False, spec, noise))
        if m.dropout:
            features.append(SeededDropout(m.dropout))
        dim = hidden
    if m.dropout and not m.head:
        features.append(SeededDropout(m.dropout))
    return Network(features, nn.Linear(dim, spec.dataset.classes, bias=m.bias))


def mlp(spec: RunSpec, noise: bool) -> Network:
    """Ioffe & Szegedy's MNIST network: fully connected hidden layers (3 x 100 sigmoid units)."""
    m = spec.model
    dim = math.prod(spec.dataset.shape)
    features: list[nn.Module] = [nn.Flatten()]
    for hidden in m.hidden:
        features.append(_block(nn.Linear(dim, hidden, bias=m.bias), hidden, False, spec, noise))
        if m.dropout:
            features.append(SeededDropout(m.dropout))
        dim = hidden
    return Network(features, nn.Linear(dim, spec.dataset.classes, bias=m.bias))


def dln(spec: RunSpec, noise: bool) -> Network:
    """Santurkar et al.'s deep linear network: `depth` square `width`x`width` linear layers.

    Normalisation follows every layer but the last (the paper leaves the placement open; a
    normalised output could not fit the targets A x), so the DLN's "layers" are its `depth` linear
    maps; the last block has no normaliser and the output layer is the identity.
    """
    m = spec.model
    d = spec.dataset.dim
    blocks = [
        _block(nn.Linear(d, d, bias=False), d, False, spec, noise, act="identity",
               normalise=i < m.depth - 1 or m.norm_last)
        for i in range(m.depth)
    ]
    return Network(blocks, nn.Identity())


ARCHITECTURES = {"vgg": vgg, "mlp": mlp, "dln": dln}


def initialise(model: nn.Module, scheme: str, scale: float, generator: torch.Generator) -> None:
    """Initialise every conv/linear weight with `scheme` times `scale`; biases at zero.

    glorot_* is Santurkar et al.'s choice for every variant; `normal` (std = scale) is Ioffe &
    Szegedy's "small random Gaussian"; he_normal is the common ReLU choice.
    """
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        w = module.weight
        if scheme == "glorot_uniform":
            nn.init.xavier_uniform_(w, gain=scale, generator=generator)
        elif scheme == "glorot_normal":
            nn.init.xavier_normal_(w, gain=scale, generator=generator)
        elif scheme == "he_normal":
            nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
            w.data.mul_(scale)
        elif scheme == "normal":
            nn.init.normal_(w, std=scale, generator=generator)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(spec: RunSpec, noise: bool = True) -> Network:
    """The network of a run spec, initialised from the run's seed (no global RNG).

    `noise=False` builds noisy variants with Algorithm 1's noise switched off (the analyses probe
    the deterministic loss unless configured otherwise).
    """
    m = spec.model
    # torch's layer constructors draw a default init from the global RNG; we overwrite it below
    # from the run's own generator, and fork_rng keeps the caller's global RNG untouched
    with torch.random.fork_rng(devices=[]):
        model = ARCHITECTURES[m.arch](spec, noise)
    initialise(model, m.init, m.init_scale, torch.Generator().manual_seed(spec.seed))
    return model


def uses_channels_last(spec: RunSpec, device: torch.device | str) -> bool:
    """Whether the run's network computes in channels_last memory format on `device`.

    `runtime.channels_last: auto` turns it on for conv nets on CUDA and on the CPU: oneDNN's
    channels_last kernels made a VGG-11 x0.25 BatchNorm training step 1.5x faster on this
    project's 2-core Xeon (70 -> 48 ms, benchmarks/train_throughput.py). MPS stays NCHW.
    """
    want = spec.runtime.channels_last
    kind = torch.device(device).type
    return spec.model.arch == "vgg" and (want == "on" or (want == "auto" and kind in ("cuda", "cpu")))


def set_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Give every random module (noise, dropout) the generator for the coming step."""
    for module in model.modules():
        if hasattr(module, "generator"):
            module.generator = generator


def squared_error(reduction: str):
    """The deep linear network's loss ||W x - A x||^2, summed over outputs; over the samples of a
    batch summed (Santurkar et al. A.1: ||W_k...W_1 X - A X||^2 over the 1000 samples, so the
    paper's lr 1e-6 moves the network) or averaged (`optim.loss_reduction: mean`)."""
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = (out - target).pow(2).sum(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()
    return loss


def loss_fn(spec: RunSpec):
    """Cross-entropy for classification, squared error for the deep linear network, combined over
    a batch as `optim.loss_reduction` says (the config resolves the papers' choice)."""
    reduction = spec.optim.loss_reduction
    if spec.dataset.task == "regression":
        return squared_error(reduction)
    return functools.partial(nn.functional.cross_entropy, reduction=reduction)
