"""onnx-eprune: structured channel pruning of ONNX CNNs by entropic sparse regression.

The entry point is :func:`prune`::

    import onnx_eprune
    result = onnx_eprune.prune("model.onnx", "calib.npy", sparsity=0.5)
    result.save("model.pruned.onnx")

:func:`calibrate` computes its statistics in shards, :func:`sweep` prunes at several
targets, :func:`inspect` and :func:`evaluate` do what the commands of the same name do.
"""

__version__ = "0.1.0"
"""The package version, as ``onnx-eprune --version`` prints it."""

from .errors import EPruneError, UsageError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .inspection import inspect  # noqa: E402
from .config import PruneConfig  # noqa: E402
from .pipeline import PruneResult, calibrate, prune  # noqa: E402
from .sweep import SweepPoint, sweep  # noqa: E402

__all__ = ["prune", "calibrate", "sweep", "inspect", "evaluate", "PruneConfig", "PruneResult", "SweepPoint",
           "EPruneError", "UsageError", "__version__"]
