"""``python -m minkseg``: the ``minkseg`` command, also as torchrun launches it
(``torchrun --nproc_per_node=N -m minkseg train CONFIG``)."""

import sys

from minkseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
