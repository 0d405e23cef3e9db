"""``python -m slem``: the command line (what ``torchrun -m slem`` starts on every rank)."""

from slem.cli.app import main

if __name__ == "__main__":
    main()
