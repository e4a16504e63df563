"""`python -m ploomes <command>`: see `ploomes.cli`."""

import sys

from ploomes.cli import main

if __name__ == "__main__":
    sys.exit(main())
