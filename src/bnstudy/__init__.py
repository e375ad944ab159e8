"""bnstudy: how does BatchNorm help optimisation? A reproducible study as a Snakemake workflow."""

__version__ = "0.1.0"
