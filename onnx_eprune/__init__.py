"""onnx-eprune: structured channel pruning of ONNX CNNs by entropic sparse regression.

The one entry point is :func:`prune`::

    import onnx_eprune
    result = onnx_eprune.prune("model.onnx", "calib.npy", sparsity=0.5)
    onnx.save(result.model, "model.pruned.onnx")
"""

__version__ = "0.1.0"

from .errors import EPruneError, UsageError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .inspection import inspect  # noqa: E402
from .pipeline import PruneConfig, PruneResult, calibrate, prune  # noqa: E402
from .sweep import SweepPoint, sweep  # noqa: E402

__all__ = ["prune", "calibrate", "sweep", "inspect", "evaluate", "PruneConfig", "PruneResult", "SweepPoint",
           "EPruneError", "UsageError", "__version__"]
