"""`python -m mtltrain`: the same as the `mtltrain` command (and what torchrun starts)."""

from mtltrain.cli import main

main()
