"""The ``onnx-eprune`` command: prune, sweep, search, calibrate, inspect, evaluate, demo (their options:
``cli_parser``).

Exit status: 0 on success, 2 for usage errors, 1 for runtime errors, 130 when interrupted
(Ctrl-C), 143 when terminated (SIGTERM); failures print one line on stderr (a traceback
instead with ``--debug``, the exit status the same).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import math
import os
import pkgutil
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from .allocator import keep_freed_memory
from .cli_parser import IMAGE_OPTIONS, build_parser
from .errors import EPruneError, TooManyImages, UsageError, stopped
from .files import Replacing, forget_commits, output_path, outputs_committed, same_file
from .select.reconstruct import THIN
from .signals import raise_terminated, signals_held

# inspect probes the model on one zero sample: one above this many float32s (4 GiB) is a mistake
PROBE_ELEMENTS = 2 ** 30

log = logging.getLogger("onnx_eprune")


# the options that read a folder of images, and their attribute names
IMAGE_FOLDERS = {"--calib-images": "calib_images", "--data-images": "data_images"}


def _check_image_options(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in IMAGE_OPTIONS if getattr(args, name) is not None]
    readers = [option for option, attr in IMAGE_FOLDERS.items() if hasattr(args, attr)]
    if all(getattr(args, IMAGE_FOLDERS[option]) is None for option in readers):
        wrong = [o for o in given if o != "--size" or getattr(args, "calib_random", None) is None]
        if wrong:
            raise UsageError(f"{', '.join(wrong)} only appl{'ies' if len(wrong) == 1 else 'y'} with "
                             f"{' or '.join(readers)}")


def _image_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the image readers that the image options give."""
    return {"size": args.size, "scale": 1 / 255 if args.scale is None else args.scale,
            "mean": (0.0,) if args.mean is None else args.mean, "std": (1.0,) if args.std is None else args.std,
            "layout": args.layout, "channels": args.channels, "resize": args.resize or "crop"}


def _held_out(args: argparse.Namespace, model) -> tuple[object, object, list[str] | None]:
    """The held-out inputs and labels to measure on (sweep, search, evaluate): --data and
    --labels as given, or the --data-images images read for ``model`` and, with
    --folder-labels, the indices of their class folders, whose names come third (None
    otherwise); None, None, None without either. With --data-samples, that many of them,
    spread evenly (``model`` reads an array file's inputs then)."""
    if args.folder_labels and args.data_images is None:
        raise UsageError("--folder-labels needs --data-images: a folder with one subfolder of images per class")
    if args.labels and args.data is None and args.data_images is None:
        raise UsageError("--labels needs --data: the inputs they label")
    if args.data_samples is not None and args.data is None and args.data_images is None:
        raise UsageError("--data-samples needs --data or --data-images: the samples it takes some of")
    if args.data_images is None:
        if args.data is None or args.data_samples is None:
            return args.data, args.labels, None
        held_out = (*_spread(args.data, args.labels, args.data_samples, model), None)
    else:
        from .calibrate.images import list_images, load_image_folder, load_labelled_image_folder

        options = dict(_image_options(args), limit=args.data_samples)
        try:
            if args.folder_labels:  # its loader names --data-images in its errors
                held_out = load_labelled_image_folder(args.data_images, model, **options)
            else:
                list_images(args.data_images, "--data-images")  # a file given: named by this option, not --calib-images
                held_out = load_image_folder(args.data_images, model, **options), args.labels, None
        except TooManyImages as exc:
            raise UsageError(exc.described("--data-samples N")) from None
    first = held_out[0] if isinstance(held_out[0], np.ndarray) else next(iter(held_out[0].values()))
    if args.data_samples is not None and len(first) < args.data_samples:  # as --samples says of calibration data
        log.warning("--data-samples %d: the held-out data holds %d samples; using all %d", args.data_samples,
                    len(first), len(first))
    return held_out


def _spread(data: str, labels: str | None, n: int, model) -> tuple[dict, object]:
    """``n`` samples of the array file ``data``, evenly spaced, and their labels (of the
    labels file ``labels``, checked to hold one per sample first)."""
    from .calibrate.data import load_calibration
    from .evaluate import read_labels

    arrays = load_calibration(data, model, held_out=True).arrays
    total = len(next(iter(arrays.values())))
    rows = np.unique(np.arange(min(n, total)) * total // min(n, total))
    picked = {k: np.asarray(v[rows]) for k, v in arrays.items()}
    if labels is None:
        return picked, None
    y = read_labels(labels)
    if len(y) != total:
        raise UsageError(f"{len(y)} labels for {total} samples")
    return picked, y[rows]


def _input_model(path: str, weights: bool = True):
    """Load MODEL and check its structure before any work: a file that is not a complete,
    valid ONNX model is a usage error (exit 2). ``weights=False`` leaves external weight
    files unread (the commands that only need the inputs' names and shapes)."""
    from .graph.model_io import check_structure, load_model

    model = load_model(Path(path), weights)
    check_structure(model, Path(path))
    return model


class _Mute(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _calib_source(args: argparse.Namespace, model):
    """The calibration arrays to pass to prune()/calibrate(), read and checked against
    ``model`` up front: from --calib, from --calib-images, or random noise for
    --calib-random (with a warning); None with --stats."""
    if getattr(args, "exclude", None):  # a mistyped name is refused before the data is read
        from .graph.exclude import check_matches

        check_matches(model.graph.node, args.exclude)
    if getattr(args, "stats", None):
        return None
    from .calibrate.data import load_calibration

    if args.samples is not None and args.samples < 1:  # before --calib-images reads it as its image count
        raise UsageError(f"--samples must be at least 1, not {args.samples}")
    if args.calib_random is not None:
        from .calibrate.images import random_calibration

        if args.size is not None:
            _check_random_size(model, args.size)
        source = random_calibration(model, args.calib_random, args.seed or 0, size=args.size)
    elif args.calib_images is not None:
        from .calibrate.images import load_image_folder

        try:
            source = load_image_folder(args.calib_images, model, limit=args.samples, **_image_options(args))
        except TooManyImages as exc:
            raise UsageError(exc.described("--samples N")) from None
    else:
        source = args.calib
    mute = _Mute()
    log.addFilter(mute)  # the pipeline validates the arrays again and says the same things once
    try:
        data = load_calibration(source, model, samples=args.samples)
    finally:
        log.removeFilter(mute)
    if args.calib_random is not None:  # once the data is good: a failed run prints its error line alone
        log.warning("--calib-random calibrates on random noise, not real inputs: the pruned model's accuracy will "
                    "suffer; use --calib or --calib-images for real work")
    return data.arrays


def _check_random_size(model, size: tuple[int, int]) -> None:
    """--size with --calib-random fills the dynamic height and width of image (rank-4)
    inputs; refuse one that it cannot apply to or that the model fixes otherwise, as
    --calib-images does, rather than ignore it."""
    from .calibrate.data import model_inputs
    from .calibrate.images import batched_dims

    images = 0
    for vi in model_inputs(model):
        dims = batched_dims(model, vi) or []
        if len(dims) != 4:
            continue
        images += 1
        nhwc = dims[3] in (1, 3) and dims[1] not in (1, 3)  # the layout as random_calibration guesses it
        for axis, fixed, want in zip(("height", "width"), dims[1:3] if nhwc else dims[2:4], size):
            if fixed is not None and fixed != want:
                raise UsageError(f"--size {size[0]},{size[1]} disagrees with the model, whose input {vi.name!r} "
                                 f"fixes the {axis} to {fixed}")
    if not images:
        raise UsageError("--size sets the height and width of image inputs (rank 4), and the model has none")


def _run_config(args: argparse.Namespace, **target):
    from .config import PruneConfig

    if args.no_reconstruct and args.refit_ridge is not None:
        raise UsageError("--refit-ridge sets the ridge of the re-fit, which --no-reconstruct skips; drop one of them")
    config = PruneConfig(method=args.method, mode=args.mode, samples=args.samples, seed=args.seed,
                         device=args.device, batch_size=args.batch_size, positions=args.positions,
                         round_to=args.round_to, reconstruct=not args.no_reconstruct,
                         refit_ridge=THIN if args.refit_ridge is None else args.refit_ridge,
                         exclude=tuple(args.exclude), min_keep=args.min_keep, **target)
    config.check()
    return config


class _LineFormatter(logging.Formatter):
    """One line per message, ``onnx-eprune: warning: ...`` for warnings: line breaks in a
    path or a node's name are shown as escapes."""

    def format(self, record: logging.LogRecord) -> str:
        from .report import printable

        kind = "warning: " if record.levelno >= logging.WARNING else ""
        return f"onnx-eprune: {kind}{printable(record.getMessage())}"


def _load_libraries() -> None:
    """What the commands import (onnx, onnxruntime and this package's modules: about a
    second), loaded with Ctrl-C and SIGTERM held back; see signals.py. An interrupt inside
    the creation of one of the package's own classes is no better: Python reports it as
    "RuntimeError: Error calling __set_name__". Not before the command line parsed, so that
    ``--help`` and usage errors stay instant."""
    package = sys.modules[__package__]
    with signals_held():
        for name in ("onnx", "onnx.reference", "onnxruntime"):
            importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{__package__}."):
            if module.name != f"{__package__}.__main__":  # which would run the command line again
                importlib.import_module(module.name)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    # with stderr closed, messages go nowhere rather than into stdout's results
    handler = logging.StreamHandler(sys.stderr) if sys.stderr is not None else logging.NullHandler()
    handler.setFormatter(_LineFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if not args.verbose:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)


def _inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The files the command reads, each with how a message names it: no output may be one."""
    named = [("the input model", getattr(args, "model", None)), ("the --calib file", getattr(args, "calib", None)),
             ("the --data file", getattr(args, "data", None)), ("the --labels file", getattr(args, "labels", None))]
    named += [("a --stats file", path) for path in getattr(args, "stats", None) or []]
    if getattr(args, "model", None):
        from .graph.model_io import data_files

        named += [("a data file of the input model", path) for path in data_files(args.model)]
    for option, attr in IMAGE_FOLDERS.items():
        folder = getattr(args, attr, None)
        if folder:
            from .calibrate.images import list_images

            try:
                named += [(f"one of the {option} images", str(path)) for path in list_images(folder)]
            except UsageError:  # no folder, or no image in it: the loader says so, after the output checks
                pass
    return [(what, path) for what, path in named if path]


def _check_output(output: str, option: str, inputs: list[tuple[str, str]], created: Path | None = None) -> None:
    """Refuse before any work: an output that is one of ``inputs`` (by any path), that exists
    but is no regular file (a device or a pipe would be replaced by a file), or that cannot
    be written (a name too long for the file system, a folder that is gone: also the current
    one, deleted under the shell). ``created``: a folder the run creates (a new
    ``--report-dir``), where an output may go too."""
    if not output:
        raise UsageError(f"{option} is empty; give a file name")
    if output.endswith(("/", os.sep)):  # Path() would drop the slash that says "a folder"
        raise UsageError(f"{option} {output} names a folder; give a file name")
    out = Path(output)
    try:
        for what, path in inputs:
            if same_file(out, Path(path)):
                raise UsageError(f"{option} {out} is {what}; choose another file (inputs are never overwritten)")
        output_path(out, option, created)
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.is_dir():
            return  # ``created``, which _check_folder checked can be created
        if not os.access(folder, os.W_OK):
            raise UsageError(f"output folder is not writable: {folder}; choose another path or fix its permissions")
        folder.resolve(strict=True)  # a deleted current folder still answers is_dir(), but not getcwd()
    except OSError as exc:
        raise UsageError(f"{option} {out}: {exc.strerror or exc}; choose another path") from None


def _large(model: str) -> bool:
    """Whether the model file with its data files reaches the 2 GB protobuf limit: only then
    may its pruned model (never larger) keep its weights in a data file of its own."""
    from .graph.model_io import EXTERNAL_DATA_THRESHOLD, size_on_disk

    try:
        return size_on_disk(model) >= EXTERNAL_DATA_THRESHOLD
    except OSError:  # the model's own checks report it
        return False


def _check_data_file(output: str, inputs: list[tuple[str, str]], created: Path | None) -> None:
    """A pruned model above 2 GB keeps its weights in ``<output>.data``: refuse, before any
    work, an input there (an input's own weights) or a path there that cannot be written
    (``created``: as :func:`_check_output`'s)."""
    data = Path(f"{output}.data")
    for what, path in inputs:
        if same_file(data, Path(path)):
            raise UsageError(f"-o {output} would keep its weights in {data}, {what}; choose another output name")
    _check_output(str(data), "-o's data file", inputs, created)


def _check_report_dir(args: argparse.Namespace, names: tuple[str, ...] | None = None) -> None:
    """--report-dir: a folder (created if missing) whose files (``names``, default: a prune's
    report files) clash with neither the inputs nor the outputs."""
    from .report_files import NAMES

    names = names or NAMES
    folder = _check_folder(args.report_dir, names, _inputs(args))
    taken = {Path(p).resolve(): opt for p, opt in ((args.output, "-o"), (f"{args.output}.data", "-o's data file"),
                                                   (getattr(args, "report", None), "--report")) if p}
    where = folder.resolve()
    for path, opt in taken.items():
        if path == where or path in where.parents:  # the run would write a file where the folder must be
            raise UsageError(f"{opt} names {path}, which --report-dir {folder} needs as a folder; choose "
                             "another path")
    for name in names:
        clash = taken.get((folder / name).resolve())
        if clash:
            raise UsageError(f"{clash} names {folder / name}, a file that --report-dir writes; choose another path")


def _check_folder(text: str, names, inputs: list[tuple[str, str]]) -> Path:
    """A --report-dir that exists (writable, none of ``names`` one of ``inputs``) or can be created."""
    if not text:
        raise UsageError("--report-dir is empty; give a folder name (it is created if missing)")
    folder = Path(text)
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"--report-dir {folder} is a file; name a folder (it is created if missing)")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--report-dir {folder} is not writable; choose another folder or fix its permissions")
        for name in names:
            _check_output(str(folder / name), "--report-dir file", inputs)
    else:
        parent = folder.parent if str(folder.parent) else Path(".")
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"cannot create --report-dir {folder}: {parent} is a file; choose another folder")
        if not parent.is_dir():
            raise UsageError(f"cannot create --report-dir {folder}: {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"cannot create --report-dir {folder}: {parent} is not writable; choose another folder")
    return folder


def _new_folder(path: str | None) -> Path | None:
    """``path`` if it names a folder that the run will create, else None."""
    return Path(path) if path and not Path(path).exists() else None


def _no_prunable_hint(exc: EPruneError, model: str) -> EPruneError:
    if "no prunable channel group" in str(exc):
        return type(exc)(f"{exc}; nothing was written: 'onnx-eprune inspect {model}' shows why each group is frozen")
    return exc


def _check_stats_options(args: argparse.Namespace) -> None:
    """With --stats the samples and their positions were chosen by 'calibrate', and the run
    is one-shot: refuse the options that the files cannot serve."""
    from .pipeline import refuse_stats_options

    refuse_stats_options(args.samples, args.positions, args.mode)


def _checked_inputs_and_output(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The files a command that writes one model (``-o``) reads, once the image options
    and the output, with its data file for a model above 2 GB, are checked against them."""
    _check_image_options(args)
    inputs = _inputs(args)
    created = _new_folder(getattr(args, "report_dir", None))  # where the outputs may go too
    _check_output(args.output, "-o", inputs, created)
    if _large(args.model):
        _check_data_file(args.output, inputs, created)
    return inputs


def cmd_prune(args: argparse.Namespace) -> int:
    from .pipeline import prune
    from .progress import Progress
    from .report import summary_table, write_json
    from .report_files import NAMES, write_report_dir

    if args.stats:
        _check_stats_options(args)
    inputs = _checked_inputs_and_output(args)
    if args.report is not None:
        _check_output(args.report, "--report", inputs, _new_folder(args.report_dir))
        if Path(args.report).resolve() == Path(args.output).resolve():
            raise UsageError("--report and -o name the same file; give the report its own path")
        if Path(args.report).resolve() == Path(f"{args.output}.data").resolve():
            raise UsageError(f"--report names {args.output}.data, where a model above 2 GB keeps its weights; give "
                             "the report its own path")
    if args.report_dir is not None:
        _check_report_dir(args)
    config = _run_config(args, sparsity=args.sparsity, flops_reduction=args.flops_reduction,
                         keep_ratio=args.keep_ratio)
    config.target()  # a target out of range fails here, before any work
    calib = _calib_source(args, _input_model(args.model, weights=False))
    try:
        result = prune(args.model, calib, config, progress=Progress(enabled=not args.quiet), stats=args.stats)
    except EPruneError as exc:
        raise _no_prunable_hint(exc, args.model) from None
    del calib
    report = dict(result.report, input=str(args.model), output=str(args.output))
    # a failure or an interrupt anywhere here leaves every output as it was before the run
    with Replacing(_new_folder(args.report_dir)) as outputs:  # -o and --report may go into the new folder
        written = [_write_model(outputs, result.model, args.output, inputs)]
        if args.report:
            write_json(report, outputs.claim(args.report))
            written.append(Path(args.report))
        if args.report_dir:
            for name in NAMES:
                outputs.claim(Path(args.report_dir) / name)
            written += write_report_dir(report, args.report_dir)
    if not args.quiet:
        _print_after_writing(summary_table(report) + "\nwrote " + ", ".join(str(p) for p in written), written)
    return 0


def _write_model(outputs: Replacing, model, output: str, inputs: list[tuple[str, str]]) -> Path:
    """Write ``model`` to ``output`` among the ``outputs`` that a failure puts back."""
    from .graph.model_io import save_model

    outputs.claim(f"{output}.data")  # where a model above 2 GB keeps its weights (before it is written)
    with _written_after_the_checks(output):
        save_model(model, outputs.claim(output), keep=[source for _, source in inputs])
    return Path(output)


@contextmanager
def _written_after_the_checks(output: str) -> Iterator[None]:
    """The block writes ``output``, whose folder the checks before the work found: a
    UsageError for a missing folder is then what it is, a runtime failure (exit 1, like a
    full disk) of a folder removed during the run."""
    try:
        yield
    except UsageError:
        folder = Path(output).parent
        if folder.is_dir():
            raise
        raise EPruneError(f"cannot write {output}: its folder {folder} was removed during the run") from None


def _print_after_writing(text: str, written: list[Path]) -> None:
    """Print ``text`` once the files ``written`` are committed. They are whole and stay when
    standard output fails, as with a reader that leaves early (``| head``): a full disk
    under ``> file`` fails the run in one line that says they were written."""
    try:
        print(text, flush=True)  # flushed here: a failure at exit would come without that line
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise EPruneError(f"wrote {', '.join(map(str, written))}, but could not print the summary to standard "
                          f"output: {exc.strerror or exc}") from exc


def cmd_sweep(args: argparse.Namespace) -> int:
    from .progress import Progress
    from .report_files import SWEEP_JSON, SWEEP_MARKDOWN, SWEEP_PLOT, write_sweep_dir
    from .sweep import repeated_targets, sweep

    if args.stats:
        _check_stats_options(args)
    _check_image_options(args)
    kind, targets = next((k, v) for k in ("sparsity", "flops_reduction", "keep_ratio")
                         if (v := getattr(args, k)) is not None)
    repeated = repeated_targets(targets)
    if repeated:
        raise UsageError(f"--{kind.replace('_', '-')} lists {', '.join(f'{t:g}' for t in repeated)} more than once; "
                         "give each target once")
    config = _run_config(args)
    for value in targets:  # a target out of range fails here, before any work
        _run_config(args, **{kind: value}).target()
    names = [SWEEP_JSON, SWEEP_MARKDOWN, SWEEP_PLOT] + ([_sweep_model_name(kind, t) for t in targets]
                                                          if args.save_models else [])
    inputs = _inputs(args)
    folder = _check_folder(args.report_dir, names, inputs)
    for target in targets if args.save_models and _large(args.model) else []:
        _check_data_file(str(folder / _sweep_model_name(kind, target)), inputs, _new_folder(args.report_dir))
    model = _input_model(args.model, weights=False)
    data, labels, _names = _held_out(args, model)
    new_dir = _new_folder(args.report_dir)
    calib = _calib_source(args, model)
    try:
        points = sweep(args.model, calib, targets, kind, data=data, labels=labels, config=config,
                       progress=Progress(enabled=not args.quiet), stats=args.stats, latency=args.latency)
    except EPruneError as exc:
        raise _no_prunable_hint(exc, args.model) from None
    del calib
    record = dict(_run_record(args, config, points[0]), runs=[p.as_dict() for p in points])
    with Replacing(new_dir) as outputs:
        for name in names:
            outputs.claim(folder / name)
        written = write_sweep_dir(record, folder)
        if args.save_models:
            written += [_write_model(outputs, p.model, str(folder / _sweep_model_name(kind, p.target)), inputs)
                        for p in points]
    earlier = sorted(set(folder.glob("pruned_*.onnx")) - set(written))
    if earlier:  # an earlier sweep's: easy to take for this one's, which sweep.json describes
        shown = ", ".join(p.name for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        log.warning("%s also holds %d model(s) that this sweep did not write (%s): sweep.json does not describe "
                    "them", folder, len(earlier), shown)
    if not args.quiet:
        from .report_files import markdown_sweep

        table = markdown_sweep(record).splitlines()
        _print_after_writing("\n".join(line for line in table if line.startswith("|")) + "\nwrote "
                             + ", ".join(str(p) for p in written), written)
    return 0


def _run_record(args: argparse.Namespace, config, point) -> dict:
    """The settings a sweep or search record starts with; the mode and seed as ``point`` (a
    SweepPoint) ran with: one-shot and the files' seed with --stats."""
    return {"input": str(args.model), "method": config.method, "mode": point.report["mode"],
            "reconstruct": config.reconstruct, "refit_ridge": config.refit_ridge if config.reconstruct else None,
            "exclude": list(config.exclude), "min_keep": config.min_keep,
            "round_to": config.round_to if config.round_to is not None else "auto", "seed": point.report["seed"]}


def cmd_search(args: argparse.Namespace) -> int:
    from .progress import Progress
    from .report import summary_table
    from .report_files import NAMES, SEARCH_NAMES, markdown_sweep, write_report_dir, write_search_dir
    from .search import search

    if args.stats:
        _check_stats_options(args)
    inputs = _checked_inputs_and_output(args)
    if args.report_dir is not None:
        _check_report_dir(args, NAMES + SEARCH_NAMES)
    if args.max_drop is not None and not (args.labels or args.folder_labels):
        raise UsageError("--max-drop compares accuracy: give --data and its --labels (or --data-images with "
                         "--folder-labels), or use --min-agreement or --max-error, which need no labels")
    kind = args.by.replace("-", "_")
    config = _run_config(args)
    model = _input_model(args.model, weights=False)
    data, labels, _names = _held_out(args, model)
    calib = _calib_source(args, model)
    try:
        result = search(args.model, calib, max_drop=args.max_drop, min_agreement=args.min_agreement,
                        max_error=args.max_error, kind=kind, data=data, labels=labels,
                        resolution=args.resolution, config=config, progress=Progress(enabled=not args.quiet),
                        stats=args.stats, latency=args.latency)
    except EPruneError as exc:
        raise _no_prunable_hint(exc, args.model) from None
    del calib
    summary = result.as_dict()
    runs = summary.pop("points")  # search.json keeps them as a sweep.json does, beside the summary
    record = dict(_run_record(args, config, result.points[0]), search=summary, runs=runs)
    table = "\n".join(line for line in markdown_sweep(record).splitlines() if line.startswith("|"))
    if result.best is None:
        smallest = result.points[0]
        raise EPruneError(f"no target met the tolerance: {args.by} {smallest.target:g}, the smallest step, gives "
                          f"{result.measured(smallest)}; nothing was written (loosen the tolerance or give a smaller "
                          "--resolution)")
    report = dict(result.best.report, input=str(args.model), output=str(args.output))
    with Replacing(_new_folder(args.report_dir)) as outputs:  # -o may go into the new folder
        written = [_write_model(outputs, result.model, args.output, inputs)]
        if args.report_dir:
            for name in NAMES + SEARCH_NAMES:
                outputs.claim(Path(args.report_dir) / name)
            written += write_search_dir(record, args.report_dir) + write_report_dir(report, args.report_dir)
    if not args.quiet:
        from .report_files import search_line

        found = search_line(summary)[2:].replace("**", "")  # a list line, printed as plain text
        _print_after_writing(f"{table}\n{found}\n{summary_table(report)}\nwrote " + ", ".join(map(str, written)),
                             written)
    return 0


def _sweep_model_name(kind: str, target: float) -> str:
    from .report_files import target_text

    return f"pruned_{kind}_{target_text(target)}.onnx"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .config import PruneConfig
    from .pipeline import calibrate
    from .progress import Progress

    _check_image_options(args)
    _check_output(args.stats_out, "--stats-out", _inputs(args))
    config = PruneConfig(samples=args.samples, seed=args.seed, device=args.device, batch_size=args.batch_size,
                         positions=args.positions)
    config.check()
    calib = _calib_source(args, _input_model(args.model, weights=False))
    try:
        bundle = calibrate(args.model, calib, config, progress=Progress(enabled=not args.quiet))
    except EPruneError as exc:
        raise _no_prunable_hint(exc, args.model) from None
    with _written_after_the_checks(args.stats_out):
        bundle.save(args.stats_out)
    if not args.quiet:
        _print_after_writing(f"wrote statistics of {len(bundle.consumers)} layers over {bundle.samples} samples to "
                             f"{args.stats_out}", [Path(args.stats_out)])
    return 0


def _shapes_input(model, args: argparse.Namespace):
    """One sample to probe shapes with (the "few samples" warning does not apply)."""
    mute = _Mute()
    log.addFilter(mute)
    try:
        return _probe_sample(model, args)
    finally:
        log.removeFilter(mute)


def _probe_sample(model, args: argparse.Namespace):
    from .calibrate.data import load_calibration, model_inputs
    from .calibrate.session import unbatched_inputs
    from .graph.model_io import fixed_dims

    if args.calib:
        return load_calibration(args.calib, model, samples=1, probe=True)
    inputs = model_inputs(model)
    unbatched = unbatched_inputs(model)
    arrays = {}
    for vi in inputs:
        dims = fixed_dims(vi) or []
        if args.input_shape:
            dims = _fitted_shape(args.input_shape, vi, vi.name in unbatched)
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise UsageError(f"input {vi.name!r} has dynamic dimensions {dims}; give --input-shape or --calib")
        if vi.name in unbatched:  # one sample on an extra axis
            dims = [1, *dims]
        if math.prod(dims) > PROBE_ELEMENTS:
            raise UsageError(f"input {vi.name!r} of shape {tuple(dims)} is too large to probe (over "
                             f"{PROBE_ELEMENTS * 4 / 2 ** 30:g} GiB); give --input-shape with the shape it takes")
        arrays[vi.name] = np.zeros(dims, dtype=np.float32)
    return load_calibration(arrays, model, samples=1, probe=True)


def _fitted_shape(shape: tuple[int, ...], vi, unbatched: bool) -> list[int]:
    """--input-shape for the input ``vi``, refused (naming the option, not the array it
    becomes) unless it has the input's rank and the dimensions the input fixes; the batch
    axis may differ (a model exported for batch 1 is probed as such anyway)."""
    from .graph.model_io import fixed_dims

    fixed = fixed_dims(vi)
    first = 0 if unbatched else 1
    if fixed is not None and (len(shape) != len(fixed) or any(
            want is not None and got != want for got, want in zip(shape[first:], fixed[first:]))):
        text = ",".join(map(str, shape))
        model_shape = ",".join("?" if d is None else str(d) for d in fixed)
        raise UsageError(f"--input-shape {text} does not fit input {vi.name!r}, whose shape is ({model_shape})")
    return list(shape)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect
    from .report_files import producer_labels
    from .report import printable, to_json

    model = _input_model(args.model)
    summary = inspect(model, _shapes_input(model, args).first(), exclude=args.exclude)
    rows, total = summary["groups"], summary["macs"]
    prunable = [r for r in rows if r["prunable"]]
    if args.json:
        print(to_json(summary))
        return 0
    print(f"{'group':>5} {'channels':>8}  {'status':<8} {'producers':<36} {'consumers':<36}")
    for r in rows:
        status = "prunable" if r["prunable"] else "frozen"
        note = r["frozen"] or (f"calibration data only: {r['data_only']}" if r["data_only"] else None)
        print(f"{r['id']:>5} {r['channels']:>8}  {status:<8} {_cell(producer_labels(r))} {_cell(r['consumers'])}"
              + (f"  ({printable(note)})" if note else ""))
    print(f"{len(prunable)} prunable groups; params {summary['params']:,}; MACs {total:,}; "
          f"prunable MAC fraction {summary['prunable_mac_fraction']:.3f}")
    for run in summary["pruned_before"]:
        print(f"pruned before: {_describe_run(run)}")
    return 0


def _cell(names: list[str], width: int = 36) -> str:
    """``names`` in a table column ``width`` wide: a cut cell ends in "..." so that no cut
    name reads as a node's name (they are what --exclude takes)."""
    from .report import printable

    text = printable(", ".join(names))
    return f"{text:<{width}}" if len(text) <= width else text[:width - 3] + "..."


def _describe_run(run) -> str:
    """One line for a pruning run recorded in a model's metadata (``inspect``)."""
    from .report import printable

    try:
        target = run["target"]
        text = f"{target['kind']} {target['value']}, {run['method']} {run['mode']}, params " \
               f"{run['params'][0]:,} -> {run['params'][1]:,}"
        if run.get("exclude"):
            text += f", excluding {', '.join(map(str, run['exclude']))}"
        if run.get("min_keep"):
            text += f", min-keep {run['min_keep']}"
        return printable(text + f" (onnx-eprune {run['version']})")  # a pattern may hold a line break
    except (TypeError, KeyError, IndexError, ValueError):  # not written by this tool: show it as it is
        return json.dumps(run)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_evaluation
    from .report import to_json

    _check_image_options(args)
    needs_model = args.data_images is not None or args.data_samples is not None
    data, labels, names = _held_out(args, _input_model(args.original, weights=False) if needs_model else None)
    result = evaluate(args.original, args.pruned, data, labels=labels, device=args.device)
    if names is not None:  # the class folders, which the per-class accuracy is indexed by
        result["accuracy"]["class_names"] = names
    print(to_json(result) if args.json else format_evaluation(result, names))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import PruneConfig
    from .demo import format_demo, run_demo, shipped_inputs

    _check_output(args.output, "-o", shipped_inputs())
    PruneConfig(sparsity=args.sparsity).target()  # a target out of range fails here, before any work
    with Replacing() as outputs:
        with _written_after_the_checks(args.output):
            numbers = run_demo(outputs.claim(args.output), sparsity=args.sparsity, method=args.method,
                               device=args.device, quiet=args.quiet)
    if not args.quiet:  # after the block: a reader that leaves early must not undo the written model
        _print_after_writing(format_demo(numbers), [Path(args.output)])
    return 0


COMMANDS = {"prune": cmd_prune, "sweep": cmd_sweep, "search": cmd_search, "calibrate": cmd_calibrate,
            "inspect": cmd_inspect, "evaluate": cmd_evaluate, "demo": cmd_demo}


_OS_HINTS = {errno.ENOSPC: "free some disk space and run again", errno.EDQUOT: "free some space and run again",
             errno.EACCES: "check the permissions or choose another path",
             errno.EPERM: "check the permissions or choose another path",
             errno.EROFS: "choose a path on a writable file system",
             errno.EFBIG: "the file system or a size limit (ulimit -f) allows no larger file"}

# what to try when memory runs out, for the commands whose options change how much they hold
_MEMORY_HINTS = {"prune": "try fewer --samples or a smaller --batch-size",
                 "sweep": "try fewer --samples, a smaller --batch-size or less --data",
                 "search": "try fewer --samples, a smaller --batch-size or less --data",
                 "calibrate": "try fewer --samples or a smaller --batch-size (or split the data into shards)",
                 "evaluate": "try fewer samples in --data"}


def _error_line(exc: EPruneError) -> str:
    """The message, with what to do when it comes from a failed read or write."""
    message = str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno in _OS_HINTS and _OS_HINTS[cause.errno] not in message:
        message += f"; {_OS_HINTS[cause.errno]}"
    return message


def _os_error_line(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno, "check the path and run again")
    return f"{where}{exc.strerror or exc}; {hint}"


class _StandardOutput:
    """``sys.stdout`` while a command runs: a write or flush that fails names standard output
    as the file it could not write (an OSError from a stream names none, and ``inspect --json
    > file`` on a full disk must not read like a failure of one of the command's files)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> object:  # encoding, isatty, fileno: the stream's own
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        with self._named():
            return self._stream.write(text)

    def flush(self) -> None:
        with self._named():
            self._stream.flush()

    @contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            exc.filename = exc.filename or "standard output"
            _discard_output(self._stream)
            raise


def _discard_output(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at the null device: what it still holds goes there when
    the interpreter flushes it at exit, rather than failing a second time ("Exception
    ignored", exit 120) after the run's own line."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):  # a stream without a descriptor (a test's capture)
        pass


@contextmanager
def _standard_output() -> Iterator[None]:
    """Run a command with :class:`_StandardOutput` as ``sys.stdout``, flushed at its end: a
    failed write of buffered output comes here, rather than at exit, where Python would
    print "Exception ignored" and exit 120."""
    stream = sys.stdout
    if stream is None:  # closed (>&-): print() writes nothing
        yield
        return
    sys.stdout = _StandardOutput(stream)
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = stream


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's time limit) unwinds the run as Ctrl-C does, through the
    same clean-up of temporary and already-written files; Python's default would end the
    process on the spot and leave them. Only the main thread may set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(code: int, line: str, debug: bool) -> int:
    """Report the exception being handled: its one line, or with --debug its traceback; the
    exit status is ``code`` either way."""
    if sys.stderr is None:  # no stream to report on (stdout holds results only)
        return code
    from .progress import end_line

    end_line()
    if debug:
        traceback.print_exc()
    else:
        from .report import printable

        print(printable(line), file=sys.stderr)  # one line, whatever a path or message holds
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv  # for a command line that does not parse; once it does, the option itself
    command = None
    forget_commits()
    try:
        with _sigterm_as_interrupt(), _standard_output():
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:  # argparse would point to the top-level help, not the command's
                raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see 'onnx-eprune "
                                 f"{args.command + ' ' if args.command else ''}--help')")
            command, debug = args.command, getattr(args, "debug", False)
            if not command:  # a usage error like any other: one line on stderr, stdout left for results
                raise UsageError(f"give a command ({', '.join(COMMANDS)}); onnx-eprune --help lists them")
            _load_libraries()
            _setup_logging(args)
            if hasattr(args, "mode") and args.mode != "oneshot" and not getattr(args, "stats", None):
                keep_freed_memory()  # one-shot runs gain nothing and peak higher (allocator.py)
            with warnings.catch_warnings():
                if not args.verbose:  # numerical warnings are details; -v shows them
                    warnings.simplefilter("ignore")
                return COMMANDS[command](args)
    except KeyboardInterrupt as exc:  # SIGTERM too (Terminated)
        return _fail(*stopped(exc, outputs_committed()), debug)
    except EPruneError as exc:
        return _fail(exc.exit_code, f"onnx-eprune: error: {_error_line(exc)}", debug)
    except MemoryError:
        hint = _MEMORY_HINTS.get(command, "close other programs or use a machine with more memory")
        return _fail(1, f"onnx-eprune: error: out of memory; {hint}", debug)
    except BrokenPipeError:  # the reader of stdout left (| head): what it had asked for is done
        return 0
    except OSError as exc:  # a read or write the code did not expect to fail
        return _fail(1, f"onnx-eprune: error: {_os_error_line(exc)}", debug)
    except Exception as exc:  # a bug: say so in one line, full details with --debug
        return _fail(1, f"onnx-eprune: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                     debug)


if __name__ == "__main__":
    sys.exit(main())
