"""onnx-eprune: structured channel pruning of ONNX CNNs by entropic sparse regression.

The one entry point is :func:`prune`::

    import onnx_eprune
    result = onnx_eprune.prune("model.onnx", "calib.npy", sparsity=0.5)
    onnx.save(result.model, "model.pruned.onnx")
"""

__version__ = "0.1.0"

import os as _os

# OpenBLAS's idle worker threads spin for about 2**28 cycles before they sleep, taking the
# cores from onnxruntime and from the solvers' own threads between the statistics' products
# (ResNet-18 sequential: 117 -> 93 s of user CPU, 85 -> 76 s wall). It reads this variable
# when it loads, so it must be set before numpy is first imported; the user's value wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import EPruneError, UsageError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .inspection import inspect  # noqa: E402
from .pipeline import PruneConfig, PruneResult, calibrate, prune  # noqa: E402
from .sweep import SweepPoint, sweep  # noqa: E402

__all__ = ["prune", "calibrate", "sweep", "inspect", "evaluate", "PruneConfig", "PruneResult", "SweepPoint",
           "EPruneError", "UsageError", "__version__"]
