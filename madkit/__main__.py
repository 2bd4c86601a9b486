"""`python -m madkit ...` (and `torchrun -m madkit ...`) run the CLI."""

from madkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
