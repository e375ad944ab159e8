"""Stage 2, the models: a run spec -> the network it trains.

Takes a `RunSpec`; gives the network (`networks.build_model`: VGG, ResNet, the deep linear
network, the MLP, each made of normalised `Block`s) and its loss. The normalisation variants'
modules (`norms`, with the CPU noise kernel of noisy BatchNorm in `noise_kernel`) and the layer
shapes (`architectures`, plain Python, read by the config checks and the figures too).

This file imports nothing, so importing the package stays light (torch loads with `networks`
and `norms`).
"""
