"""``python -m baichuan13b`` is the ``baichuan`` command (so ``torchrun -m baichuan13b ...`` works)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
