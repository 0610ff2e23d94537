"""Import a script of ``tools/`` as a module of its own, for the tests that call or patch its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(stem: str, name: str) -> ModuleType:
    """``tools/STEM.py`` executed afresh as module ``name``, registered in ``sys.modules``
    (dataclasses look their module up there); ``sys.path`` is left as it was, although some
    tools put their own folder on it to import their siblings."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module
