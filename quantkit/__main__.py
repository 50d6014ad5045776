"""`python -m quantkit ...`: the same as the `quantkit` command (see quantkit.cli)."""

from quantkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
