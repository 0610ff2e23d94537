"""``python -m onnx_eprune``: the ``onnx-eprune`` command line."""

import sys

from .cli import main

sys.exit(main())
