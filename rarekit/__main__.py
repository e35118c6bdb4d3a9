"""``python -m rarekit COMMAND ...``: the ``rarekit`` command line."""
from rarekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
