"""What the config needs to know about each network before anything is built (no torch).

The config checks use these facts to stop a bad config before any job starts: a VGG depth that
has no layer table, a figure layer beyond the network's normalised layers, images too small for
the VGG's five poolings. `bnstudy.models` builds the networks from the same tables.
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


def normalised_layers(model: dict) -> int:
    """How many normalised layers ("blocks", the paper's layer #1..#n) a model config has."""
    arch = model["arch"]
    if arch == "vgg":
        return sum(1 for item in VGG_CONFIGS[model["depth"]] if item != "M") + len(model["head"])
    if arch == "mlp":
        return len(model["hidden"])
    if arch == "dln":
        return model["depth"]
    raise ValueError(f"unknown architecture {arch!r}")
