"""``python -m onnx_eprune``: the ``onnx-eprune`` command line."""

import sys

from .entry import main

sys.exit(main())
