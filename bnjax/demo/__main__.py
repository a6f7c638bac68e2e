"""``python -m bnjax.demo``: reproduces Figure 1 (see the package docstring)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
