"""``python -m agentlocks._demo [options]``: the same as ``agentlocks demo [options]``."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
