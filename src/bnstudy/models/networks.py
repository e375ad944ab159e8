"""The networks: a VGG for 32x32 images, He et al.'s CIFAR ResNet, the deep linear network, the 2015
MLP.

Every network is built of `Block`s (conv or linear layer -> normalisation variant -> non-linearity)
and ends in a plain output layer. Blocks are the paper's "layers": block i, in the order the input
meets them, is layer #i of the figures (1-based). The training loop and the analyses reach
activations through `model.blocks` and parameters through `model.layer_groups()`; models know
nothing of logging or tracking.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..config.architectures import mlp_widths, resnet_widths, vgg_channels
from ..data.batches import step_generator
from .norms import make_norm
from ..config.variants import VARIANTS
from ..config.spec import RunSpec

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


def filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """||w_i|| of each output filter (row of a linear layer, output channel of a conv)."""
    return torch.linalg.vector_norm(weight.flatten(1), dim=1)


class WeightNormed:
    """WeightNorm (Salimans & Kingma 2016) for a conv or linear layer: each output filter's weight
    is gain_i * v_i / ||v_i||. `weight` holds v (the layer's main weight, W_i of the analyses) and
    `gain` the learned norms, initialised to ||v_i|| so the layer starts as it would without it."""

    def init_gain(self) -> None:
        with torch.no_grad():
            self.gain.copy_(filter_norms(self.weight))

    def normed_weight(self) -> torch.Tensor:
        scale = self.gain / filter_norms(self.weight)
        return self.weight * scale.view(-1, *([1] * (self.weight.dim() - 1)))


class WNConv2d(WeightNormed, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WNLinear(WeightNormed, nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.normed_weight(), self.bias)


def conv3x3(spec: RunSpec, channels: int, width: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """The variant's 3x3 convolution (weight-normed for WeightNorm)."""
    cls = WNConv2d if VARIANTS[spec.norm.variant].norm == "weight" else nn.Conv2d
    return cls(channels, width, 3, stride=stride, padding=1, bias=bias)


def linear(spec: RunSpec, fan_in: int, fan_out: int, bias: bool = True, normalise: bool = True) -> nn.Linear:
    """The variant's hidden linear layer (weight-normed for WeightNorm, if it is normalised)."""
    weight_norm = normalise and VARIANTS[spec.norm.variant].norm == "weight"
    return (WNLinear if weight_norm else nn.Linear)(fan_in, fan_out, bias=bias)


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
        """The normalised layers in the order the input meets them (also inside residual blocks)."""
        return [m for m in self.features.modules() if isinstance(m, Block)]

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
        conv = conv3x3(spec, channels, width, bias=m.bias)
        features.append(_block(conv, width, True, spec, noise))
        channels = width
    features.append(nn.Flatten())
    dim = channels * size * size
    for hidden in m.head:
        features.append(_block(linear(spec, dim, hidden, m.bias), hidden, False, spec, noise))
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
    for hidden in mlp_widths(m.hidden, m.hidden_layers):
        features.append(_block(linear(spec, dim, hidden, m.bias), hidden, False, spec, noise))
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
    normalised = [i < m.depth - 1 or m.norm_last for i in range(m.depth)]
    blocks = [
        _block(linear(spec, d, d, bias=False, normalise=normalise), d, False, spec, noise, act="identity",
               normalise=normalise)
        for normalise in normalised
    ]
    return Network(blocks, nn.Identity())


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A for CIFAR: the identity where a stage halves the resolution and widens
    the channels, by taking every second position and padding the new channels with zeros (no
    parameters, so every parameter of the network belongs to a normalised layer or the output)."""

    def __init__(self, channels: int, width: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, width - channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class Residual(nn.Module):
    """He et al.'s basic block: two normalised 3x3 convolutions, the second's non-linearity (ReLU)
    applied after adding the shortcut."""

    def __init__(self, first: Block, second: Block, shortcut: nn.Module):
        super().__init__()
        self.first, self.second, self.shortcut = first, second, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.second(self.first(x)) + self.shortcut(x))


def resnet(spec: RunSpec, noise: bool) -> Network:
    """He et al. 2016's CIFAR ResNet (depth 6n + 2: ResNet-20, -56, ...): a normalised 3x3 stem,
    three stages of n basic blocks at 16, 32 and 64 channels (times `width`), the first block of
    stages 2 and 3 halving the resolution, identity shortcuts (option A), global average pooling
    and a linear classifier. Any variant fills the norm slots; layer #1 is the stem, then each
    block's two convolutions in order (`architectures.resnet_layer_names`)."""
    m = spec.model
    blocks_per_stage = (m.depth - 2) // 6
    channels = spec.dataset.shape[0]
    stem_width, *_ = widths = resnet_widths(m.width)
    features: list[nn.Module] = [_block(conv3x3(spec, channels, stem_width, bias=m.bias), stem_width, True,
                                        spec, noise)]
    channels = stem_width
    for stage, width in enumerate(widths):
        for index in range(blocks_per_stage):
            stride = 2 if stage and not index else 1
            first = _block(conv3x3(spec, channels, width, stride, m.bias), width, True, spec, noise)
            second = _block(conv3x3(spec, width, width, 1, m.bias), width, True, spec, noise, act="identity")
            shortcut = nn.Identity() if stride == 1 and channels == width else \
                ZeroPadShortcut(channels, width, stride)
            features.append(Residual(first, second, shortcut))
            channels = width
    features += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if m.dropout:
        features.append(SeededDropout(m.dropout))
    return Network(features, nn.Linear(channels, spec.dataset.classes, bias=m.bias))


ARCHITECTURES = {"vgg": vgg, "resnet": resnet, "mlp": mlp, "dln": dln}


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
        if isinstance(module, WeightNormed):
            module.init_gain()


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


MASK_STREAM = 3  # step_generator stream of random_matched's draw (0: epochs, 1: augmentation, 2: noise)


def affine_parameters(model: Network) -> list[nn.Parameter]:
    """The normalisers' affine parameters (gamma and beta of every block's norm module), in the
    order of `model.parameters()`; none for the standard network and WeightNorm (spec.has_affine)."""
    ids = {id(p) for block in model.blocks for p in block.norm.parameters()}
    return [p for p in model.parameters() if id(p) in ids]


def training_masks(model: Network, spec: RunSpec) -> list[torch.Tensor | bool | None] | None:
    """What SGD may change of each parameter of `model` (in `model.parameters()` order) under
    `optim.train_only` (spec.TRAIN_ONLY): None for everything ("all"), else per parameter None
    (all of it), False (frozen) or a boolean mask of its entries (`bnstudy.train.sgd.SGD`'s `masks`).

    bn_affine: the normalisers' gamma and beta, nothing else (Frankle, Schwab & Morcos 2021: every
    other weight, the output layer's too, stays at its random initialisation). random_matched: the
    same number of scalars, drawn uniformly without replacement from the entries of all other
    parameters taken together (so a layer gets a share proportional to its size), gamma and beta
    frozen. The draw is a pure function of the run's seed and the architecture: a torch.Generator of
    its own on the CPU (never the global RNG), so a resumed run and every device get the same mask.
    """
    mode = spec.optim.train_only
    if mode == "all":
        return None
    params = list(model.parameters())
    affine = {id(p) for p in affine_parameters(model)}
    if not affine:
        raise ValueError(f"optim.train_only {mode!r}: variant {spec.norm.variant} has no normaliser affine parameters")
    if mode == "bn_affine":
        return [None if id(p) in affine else False for p in params]
    if mode != "random_matched":
        raise ValueError(f"optim.train_only {mode!r}: use all, bn_affine or random_matched")
    count = sum(p.numel() for p in params if id(p) in affine)
    others = [p for p in params if id(p) not in affine]
    sizes = [p.numel() for p in others]
    if count > sum(sizes):
        raise ValueError(f"optim.train_only random_matched: {count} affine scalars, only {sum(sizes)} others")
    chosen = torch.randperm(sum(sizes), generator=step_generator(spec.seed, 0, MASK_STREAM))[:count]
    flat = torch.zeros(sum(sizes), dtype=torch.bool)
    flat[chosen] = True
    masks = {id(p): part.view(p.shape).to(p.device) for p, part in zip(others, flat.split(sizes))}
    return [False if id(p) in affine else masks[id(p)] for p in params]


def uses_channels_last(spec: RunSpec, device: torch.device | str) -> bool:
    """Whether the run's network computes in channels_last memory format on `device`.

    `runtime.channels_last: auto` turns it on for conv nets on CUDA and on the CPU: oneDNN's
    channels_last kernels made a VGG-11 x0.25 BatchNorm training step 1.5x faster on this
    project's 2-core Xeon (70 -> 48 ms, benchmarks/train_throughput.py). MPS stays NCHW.
    """
    want = spec.runtime.channels_last
    kind = torch.device(device).type
    return spec.model.arch in ("vgg", "resnet") and (want == "on" or (want == "auto" and kind in ("cuda", "cpu")))


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


def square_loss(classes: int, reduction: str):
    """Cohen et al. 2021's square loss for classification ("Gradient Descent on Neural Networks
    Typically Occurs at the Edge of Stability", arXiv 2103.00065; their code's SquaredLoss on
    one-hot labels): half the squared distance of the logits from the one-hot target, summed over
    the classes, 1/2 sum_c (f_c(x) - [c = y])^2 per sample; over a batch's samples averaged (their
    sum divided by the dataset size; `optim.loss_reduction: mean`, the default) or summed. The 1/2
    matters: it halves the Hessian, so the sharpness that meets 2/lr is theirs. The targets stay
    class indices (accuracy is the argmax), the one-hot rows are made here, in the logits' dtype."""
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(target, classes).to(out.dtype)
        per_sample = 0.5 * (out - one_hot).pow(2).sum(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()
    return loss


def loss_fn(spec: RunSpec):
    """The loss training descends, evaluation reports and every checkpoint analysis probes: for
    classification `optim.loss` (cross-entropy, or Cohen et al.'s square loss `mse`), for the deep
    linear network its squared error whatever `optim.loss` says (it is a regression; the spec
    drops the key there, see spec.applies); combined over a batch as `optim.loss_reduction` says
    (the config resolves the papers' choice)."""
    reduction = spec.optim.loss_reduction
    if spec.dataset.task == "regression":
        return squared_error(reduction)
    if spec.optim.loss == "mse":
        return square_loss(spec.dataset.classes, reduction)
    if spec.optim.loss != "cross_entropy":
        raise ValueError(f"optim.loss {spec.optim.loss!r}: use cross_entropy or mse")
    return functools.partial(nn.functional.cross_entropy, reduction=reduction)
