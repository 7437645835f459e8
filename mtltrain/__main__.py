"""`python -m mtltrain`: the same as the `mtltrain` command."""

from mtltrain.cli import main

if __name__ == "__main__":
    main()
