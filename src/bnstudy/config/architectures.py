"""What the config needs to know about each network before anything is built (no torch).

The config checks use these facts to stop a bad config before any job starts: a VGG depth that
has no layer table, a figure layer beyond the network's normalised layers, images too small for
the VGG's five poolings. `bnstudy.models.networks` builds the networks from the same tables.
"""

from __future__ import annotations

VGG_CONFIGS = {  # torchvision's VGG configs: channels, "M" = 2x2 max-pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
VGG_POOLS = 5  # every config halves the image five times: 32x32 inputs end at 1x1


def vgg_channels(depth: int, width: float) -> list[int | str]:
    """The conv widths (and "M" pools) of a VGG at a channel multiplier."""
    return [item if item == "M" else max(1, round(item * width)) for item in VGG_CONFIGS[depth]]


RESNET_WIDTHS = (16, 32, 64)  # He et al.'s CIFAR stages


def resnet_widths(width: float) -> list[int]:
    """The channels of a CIFAR ResNet's three stages at a width multiplier."""
    return [max(1, round(c * width)) for c in RESNET_WIDTHS]


def resnet_depth_ok(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def resnet_layer_names(depth: int) -> list[str]:
    """The normalised layers of a CIFAR ResNet by stage and block: "stem", then "s2 b1 c2" for
    stage 2, block 1, its second convolution (layer #1 is the stem)."""
    n = (depth - 2) // 6
    return ["stem"] + [f"s{stage} b{block} c{conv}" for stage in (1, 2, 3) for block in range(1, n + 1)
                       for conv in (1, 2)]


def mlp_widths(hidden, hidden_layers: int | None) -> list[int]:
    """An MLP's hidden widths: `hidden` as listed, or (`hidden_layers` set: Yang et al. 2019's
    depth grids of equal-width layers) `hidden_layers` layers as wide as hidden[0]."""
    return [hidden[0]] * hidden_layers if hidden_layers else list(hidden)


def layer_widths(model: dict) -> list[int]:
    """The number of units (channels or features) of each normalised layer, in order."""
    arch = model["arch"]
    if arch == "vgg":
        return [c for c in vgg_channels(model["depth"], model["width"]) if c != "M"] + list(model["head"])
    if arch == "resnet":
        n = (model["depth"] - 2) // 6
        widths = resnet_widths(model["width"])
        return [widths[0]] + [w for w in widths for _ in range(2 * n)]
    if arch == "mlp":
        return mlp_widths(model["hidden"], model.get("hidden_layers"))
    return [model.get("dim", 0)] * model["depth"]


def normalised_layers(model: dict) -> int:
    """How many normalised layers ("blocks", the paper's layer #1..#n) a model config has."""
    arch = model["arch"]
    if arch == "resnet":
        return 1 + 2 * 3 * ((model["depth"] - 2) // 6)
    if arch == "vgg":
        return sum(1 for item in VGG_CONFIGS[model["depth"]] if item != "M") + len(model["head"])
    if arch == "mlp":
        return len(mlp_widths(model["hidden"], model.get("hidden_layers")))
    if arch == "dln":
        return model["depth"]
    raise ValueError(f"unknown architecture {arch!r}")
