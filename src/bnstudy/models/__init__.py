"""Stage 2, the models: a run spec -> the network it trains.

Takes a `RunSpec`; gives the network (`networks.build_model`: VGG, ResNet, the deep linear
network, the MLP, each made of normalised `Block`s) and its loss. The normalisation variants'
modules (`norms`, with the CPU noise kernel of noisy BatchNorm in `noise_kernel`); the layer
shapes are the config stage's (`bnstudy.config.architectures`, plain Python).

This file imports nothing, so importing the package stays light (torch loads with `networks`
and `norms`).
"""
