"""``python -m MedSAMSlicerLib.cli``: the same as the ``medsam-slicer`` command."""

import sys

from .main import main

sys.exit(main())
