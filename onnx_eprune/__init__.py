"""onnx-eprune: structured channel pruning of ONNX CNNs by entropic sparse regression.

The entry point is :func:`prune`::

    import onnx_eprune
    result = onnx_eprune.prune("model.onnx", "calib.npy", sparsity=0.5)
    result.save("model.pruned.onnx")

:func:`calibrate` computes its statistics in shards, :func:`sweep` prunes at several
targets, :func:`search` finds the largest target within an accuracy or fidelity tolerance,
:func:`inspect` and :func:`evaluate` do what the commands of the same name do.
"""

__version__ = "0.1.0"
"""The package version, as ``onnx-eprune --version`` prints it."""

import importlib  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from .errors import EPruneError, UsageError  # noqa: E402

if TYPE_CHECKING:
    from .config import PruneConfig
    from .evaluate import evaluate
    from .inspection import inspect
    from .pipeline import PruneResult, calibrate, prune
    from .search import SearchResult, search
    from .sweep import SweepPoint, sweep

# the public names, imported on first use: onnx and onnxruntime take about a second to load,
# which the command line spends inside its own error handling (an early Ctrl-C is one line)
_LAZY = {"prune": ".pipeline", "calibrate": ".pipeline", "PruneResult": ".pipeline", "sweep": ".sweep",
         "SweepPoint": ".sweep", "search": ".search", "SearchResult": ".search", "inspect": ".inspection", "evaluate": ".evaluate", "PruneConfig": ".config"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package module: the subpackage ``calibrate`` and the modules ``evaluate``,
    ``search`` and ``sweep`` share a name with a public function, which keeps it when the import system
    binds the submodule on its first load."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = ["prune", "calibrate", "sweep", "search", "inspect", "evaluate", "PruneConfig", "PruneResult", "SweepPoint",
           "SearchResult", "EPruneError", "UsageError", "__version__"]
