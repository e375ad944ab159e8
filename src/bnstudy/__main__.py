"""`python -m bnstudy <command>`: what the Snakemake rules run (bnstudy.cli)."""

from .cli import main

main()
