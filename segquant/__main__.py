"""``python -m segquant``: the ``segquant`` command (also ``torchrun --nproc-per-node N -m segquant ...``)."""

import sys

from segquant.cli import main

sys.exit(main())
