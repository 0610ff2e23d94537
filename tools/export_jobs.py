"""The loop the export tools share (``export_timm.py``, ``export_torchvision.py``,
``export_thirdparty.py``; each runs in its own venv, so this module needs the standard
library only): skip what is exported already, export the rest, record what fails."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

# what a failed export may have left: the model, its sidecar and its external data
PARTIAL_FILES = (".onnx", ".json", ".onnx.data")


class ExportJob(NamedTuple):
    stem: str                      # file stem in the cache: STEM.onnx and its sidecar STEM.json
    arch: str
    exporter: str                  # label recorded with a failure
    export: Callable[[], dict]     # writes both files, returns the sidecar's metadata


def load_failures(cache: Path) -> dict:
    """The failures recorded in ``cache/export_failures.json`` so far (stem -> record)."""
    path = cache / "export_failures.json"
    return json.loads(path.read_text()) if path.exists() else {}


def export_each(cache: Path, jobs: Iterable[ExportJob], force: bool, failures: dict,
                catch: tuple[type[BaseException], ...] = (Exception,)) -> None:
    """Run ``jobs`` into ``cache``. A stem whose ``.onnx`` and ``.json`` both exist is
    skipped unless ``force``; an export that raises one of ``catch`` leaves no partial file
    and is recorded in ``failures`` (error line and traceback), which a later success of the
    stem clears. ``failures`` is written to ``cache/export_failures.json`` after every job."""
    path = cache / "export_failures.json"
    for job in jobs:
        if (cache / f"{job.stem}.onnx").exists() and (cache / f"{job.stem}.json").exists() and not force:
            failures.pop(job.stem, None)
            print(f"{job.stem}: exists", flush=True)
            continue
        try:
            meta = job.export()
            failures.pop(job.stem, None)
            print(f"{job.stem}: ok in {meta['export_seconds']} s (opset {meta['opset']}, input "
                  f"{meta['input_shape']})", flush=True)
        except catch as exc:  # record and go on
            for ext in PARTIAL_FILES:
                (cache / f"{job.stem}{ext}").unlink(missing_ok=True)
            msg = str(exc).strip().splitlines()
            failures[job.stem] = {"arch": job.arch, "exporter": job.exporter,
                                  "error": f"{type(exc).__name__}: {msg[0] if msg else ''}",
                                  "traceback": traceback.format_exc()[-3000:]}
            print(f"{job.stem}: FAILED {failures[job.stem]['error']}", flush=True)
        path.write_text(json.dumps(failures, indent=1) + "\n")
    path.write_text(json.dumps(failures, indent=1) + "\n")
