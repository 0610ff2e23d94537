"""The ``onnx-eprune`` command line's grammar: its subcommands, their options, and the
types that read the options' values (a bad value is a one-line usage error, exit 2)."""

from __future__ import annotations

import argparse
import math

from . import __version__
from .errors import UsageError
from .select import METHODS
from .select.reconstruct import DEFAULT_RIDGE, RIDGE_CHOICES, RIDGE_MODES, THIN_MAX_FEATURES, THIN_ROWS, valid_ridge


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def _number(text: str) -> float:
    """A float, or a fraction such as 1/255."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.5 or 1/255, got {text!r}") from None


def _scale(text: str) -> float:
    """--scale: a number or fraction, finite and not 0 (which would make every image constant)."""
    value = _number(text)
    if value == 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite, non-zero factor such as 1/255, got {text!r}")
    return value


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.485,0.456,0.406, "
                                         f"got {text!r}") from None


def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H or H,W in pixels such as 224 or 224,160, got {text!r}")
    return (parts[0], parts[-1])


def _shape(text: str) -> tuple[int, ...]:
    """--input-shape: positive whole numbers separated by commas."""
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions such as 1,3,224,224, got {text!r}")
    return dims


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of samples, got {text!r}")
    return value


IMAGE_OPTIONS = ("size", "scale", "mean", "std", "layout", "channels", "resize")


def _add_calib_sources(p: argparse.ArgumentParser, source) -> None:
    """--calib-images DIR (and its options) and --calib-random N, in the group ``source``."""
    source.add_argument("--calib-images", metavar="DIR",
                        help="a folder of images (.png .jpg .jpeg .bmp .webp .tif .tiff, recursive, in path order)")
    source.add_argument("--calib-random", type=_positive_int, metavar="N",
                        help="N samples of random normal noise: smoke tests only, accuracy will suffer")


def _add_held_out(p: argparse.ArgumentParser, data_help: str, labels_help: str, required: bool = False) -> None:
    """--data or --data-images, and --labels or --folder-labels (sweep, search, evaluate)."""
    data = p.add_mutually_exclusive_group(required=required)
    data.add_argument("--data", metavar="DATA", help=data_help)
    data.add_argument("--data-images", metavar="DIR",
                      help="held-out images instead: a folder of images, or with --folder-labels of class folders")
    p.add_argument("--data-samples", type=_positive_int, metavar="N",
                   help="measure on N of the held-out samples, spread evenly over them (over the folder's path "
                   "order for --data-images: every class folder gets its share)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", metavar="LABELS.npy", help=labels_help)
    labels.add_argument("--folder-labels", action="store_true",
                        help="label each --data-images image by its class folder: the k-th subfolder in name "
                        "order is class k (torchvision's ImageFolder rule)")


def _add_image_options(p: argparse.ArgumentParser, title: str, calibration: bool = True) -> None:
    """How images are read and normalised (with --calib-images and --data-images)."""
    g = p.add_argument_group(title)
    g.add_argument("--size", type=_image_size, metavar="H[,W]",
                   help="image height and width; required when the model's are dynamic"
                   + (" (also for --calib-random)" if calibration else ""))
    g.add_argument("--scale", type=_scale, metavar="S", help="pixel scale factor (default: 1/255)")
    g.add_argument("--mean", type=_numbers, metavar="M[,M,M]",
                   help="subtracted after scaling: (pixel * scale - mean) / std; one value or one per channel "
                   "(default: 0)")
    g.add_argument("--std", type=_numbers, metavar="S[,S,S]", help="divided after the mean (default: 1)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="model input layout (default: from its shape)")
    g.add_argument("--channels", choices=["RGB", "BGR", "GRAY"],
                   help="channel order (default: GRAY for 1 channel, RGB for 3)")
    g.add_argument("--resize", choices=["crop", "stretch"],
                   help="crop: short side to size, then centre crop (default); stretch: resize to size")


def _add_common(p: argparse.ArgumentParser, quiet: str = "print only warnings and errors") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=quiet)
    p.add_argument("-v", "--verbose", action="store_true", help="print details, onnxruntime messages included")
    p.add_argument("--debug", action="store_true", help="show a traceback on failure")


def _add_model_and_calibration(p: argparse.ArgumentParser, stats: bool = True, held_out: bool = True) -> None:
    """MODEL and one calibration source (sweep, search and, without ``stats`` and
    ``held_out`` data, calibrate)."""
    p.add_argument("model", metavar="MODEL.onnx")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--calib", metavar="CALIB", help=".npy or .npz, as for prune")
    if stats:
        _add_stats(source)
    _add_calib_sources(p, source)
    _add_image_options(p, "image options (with --calib-images or --data-images)" if held_out
                       else "image options (with --calib-images)")


def _add_latency(p: argparse.ArgumentParser) -> None:
    """--latency (sweep and search)."""
    p.add_argument("--latency", action="store_true",
                   help="also time each pruned model against the original (median ms at batch 1 and 32, on "
                   "--data or the calibration samples)")


def _add_stats(source) -> None:
    """--stats in the calibration source group ``source`` (prune, sweep and search)."""
    source.add_argument("--stats", action="extend", nargs="+", metavar="STATS.npz",
                        help="statistics written by 'onnx-eprune calibrate' (several files, or the option repeated, "
                             "add up shards; one-shot mode)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """How a pruning run selects and fits (prune and sweep)."""
    p.add_argument("--method", default="entropic", choices=list(METHODS),
                   help="channel selection: entropic (default), or the baselines l1 (filter norm), random, "
                   "lasso (He et al. 2017), thinet (Luo et al. 2017)")
    p.add_argument("--mode", choices=["sequential", "oneshot"],  # None: sequential, unless --stats (one-shot)
                   help="sequential: each layer is fitted on the already-pruned network (default)")
    p.add_argument("--samples", type=int, metavar="N", help="use the first N calibration samples")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed for position sampling and random selection (default: 0; with --stats, the files' seed)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="onnxruntime device for calibration (default: CUDA when usable)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="calibration samples per run, at most (default: 64; fewer where they would fetch over 1 GiB)")
    p.add_argument("--positions", type=int, metavar="K",
                   help="conv output positions sampled per image (default: automatic)")
    p.add_argument("--round-to", type=int, metavar="N",
                   help="keep channel counts at multiples of N (1: any count; default: multiples of 8 for "
                        "convolution outputs of 64 channels or more, which CPU and GPU kernels run faster)")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="slice the kept weights without the least-squares re-fit")
    _add_exclude(p)
    p.add_argument("--min-keep", type=float, default=0.0, metavar="F",
                   help="every channel group keeps at least the fraction F of its channels (default: 0, "
                        "down to the group's smallest --round-to step)")
    # default None: an explicit value with --no-reconstruct is refused (_run_config)
    p.add_argument("--refit-ridge", type=refit_ridge_arg, metavar="R|auto|auto-thin",
                   help=f"ridge toward the original weights in the re-fit, relative to the mean feature "
                        f"variance; auto: chosen per layer by generalised cross-validation, which helps with "
                        f"fewer samples than a layer has inputs; auto-thin (default): {DEFAULT_RIDGE:g}, "
                        f"chosen as by auto on layers with fewer than {THIN_ROWS:g} calibration rows per kept "
                        f"input and at most {THIN_MAX_FEATURES} inputs")


def _add_exclude(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="keep the output channels of the nodes whose names match PATTERN (* matches any "
                        "characters, ? one; repeat for more), and of the layers coupled with them")


def refit_ridge_arg(text: str) -> float | str:
    """``--refit-ridge``: a number from 0 to 1e6, ``auto`` or ``auto-thin`` (also parses
    ``tools/bench_quality.py``'s)."""
    try:
        value = text if text in RIDGE_MODES else float(text)
    except ValueError:
        value = None
    if not valid_ridge(value):
        raise argparse.ArgumentTypeError(f"expected {RIDGE_CHOICES}, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnx-eprune", description="Structured channel pruning of ONNX CNNs by entropic "
                     "sparse regression, without fine-tuning.")
    parser.add_argument("--version", action="version", version=f"onnx-eprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model", description="Prune whole channels of MODEL and write OUT.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the pruned model")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--calib", metavar="CALIB",
                        help=".npy (first axis = samples; single-input models) or .npz (input name -> array)")
    _add_stats(source)
    _add_calib_sources(p, source)
    _add_image_options(p, "image options (with --calib-images)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=_fraction, metavar="S",
                        help="remove at least this fraction of the Conv/ConvTranspose/Gemm/MatMul parameters")
    target.add_argument("--flops-reduction", type=_fraction, metavar="F",
                        help="remove at least this fraction of their multiply-accumulates")
    target.add_argument("--keep-ratio", type=_fraction, metavar="R",
                        help="keep round(R*C) channels in every prunable group")
    p.add_argument("--report", metavar="REPORT.json", help="write the JSON report here")
    p.add_argument("--report-dir", metavar="DIR",
                   help="write report.json, report.md and (with matplotlib) channels.png and allocation.png "
                   "into DIR (created if missing)")
    _add_run_options(p)
    _add_common(p)

    p = sub.add_parser("sweep", help="prune at several targets and compare the results",
                       description="Prune MODEL at each target and write, into --report-dir, sweep.json, sweep.md "
                       "and (with matplotlib) sweep.png: parameters and MACs removed, fidelity to the original "
                       "(relative output error, top-1 agreement) on --data, or on calibration samples, and "
                       "accuracy with --labels.")
    _add_model_and_calibration(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=_fraction, nargs="+", metavar="S", help="parameter sparsities to try")
    target.add_argument("--flops-reduction", type=_fraction, nargs="+", metavar="F", help="MAC reductions to try")
    target.add_argument("--keep-ratio", type=_fraction, nargs="+", metavar="R",
                        help="uniform keep ratios to try (round(R*C) channels in every prunable group)")
    p.add_argument("--report-dir", required=True, metavar="DIR", help="where the sweep files go (created if missing)")
    _add_held_out(p, "held-out inputs (.npy/.npz) to measure fidelity on",
                  "class indices of --data (or of --data-images, in path order), for accuracy")
    p.add_argument("--save-models", action="store_true",
                   help="also write each pruned model into DIR as pruned_<kind>_<target>.onnx")
    _add_latency(p)
    _add_run_options(p)
    _add_common(p)

    p = sub.add_parser("search", help="find the largest target within an accuracy or fidelity tolerance",
                       description="Bisect the target between 0 and the largest the prunable groups reach, one "
                       "pruning run per step tried, and write the pruned model at the largest target that stays "
                       "within the tolerance to OUT; with --report-dir, also search.json, search.md, search.png "
                       "(every target tried) and the chosen run's report files.")
    _add_model_and_calibration(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the pruned model")
    tolerance = p.add_mutually_exclusive_group(required=True)
    tolerance.add_argument("--max-drop", type=_fraction, metavar="POINTS",
                           help="top-1 accuracy lost on --data, in percentage points (needs --labels)")
    tolerance.add_argument("--min-agreement", type=_fraction, metavar="F",
                           help="top-1 agreement with the original's predictions, a fraction such as 0.99")
    tolerance.add_argument("--max-error", type=_fraction, metavar="E",
                           help="relative L2 error of the first output, a fraction such as 0.05")
    p.add_argument("--by", choices=["sparsity", "flops-reduction"], default="sparsity",
                   help="what the target removes: sparsity, parameters (default), or flops-reduction, "
                   "multiply-accumulates")
    p.add_argument("--resolution", type=_fraction, default=0.01, metavar="R",
                   help="targets are multiples of R (default: 0.01)")
    _add_held_out(p, "held-out inputs (.npy/.npz) to measure on (default: the first 256 calibration samples, or "
                  "of those that --stats files keep: in-sample and so optimistic)",
                  "class indices of --data (or of --data-images, in path order), for --max-drop")
    p.add_argument("--report-dir", metavar="DIR", help="write the search files and the chosen run's report files "
                   "into DIR (created if missing)")
    _add_latency(p)
    _add_run_options(p)
    _add_common(p)

    p = sub.add_parser("calibrate", help="compute mergeable calibration statistics",
                       description="Stream the statistics that pruning needs over CALIB and write them to "
                       "STATS.npz. Files from disjoint shards of a calibration set add up: 'prune --stats A "
                       "--stats B ...' gives the same result as one run over all the samples (one-shot mode).")
    _add_model_and_calibration(p, stats=False, held_out=False)
    p.add_argument("--stats-out", required=True, metavar="STATS.npz", help="where to write the statistics")
    p.add_argument("--samples", type=int, metavar="N", help="use the first N calibration samples")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for position sampling, the same for all shards (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="onnxruntime device for calibration (default: CUDA when usable)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="calibration samples per run, at most (default: 64; fewer where they would fetch over 1 GiB)")
    p.add_argument("--positions", type=int, metavar="K", help="conv output positions sampled per image")
    _add_common(p)

    p = sub.add_parser("inspect", help="show the channel groups of a model",
                       description="List the channel groups of MODEL: producers, consumers, channels, and "
                       "whether each is prunable or frozen (and why).")
    p.add_argument("model", metavar="MODEL.onnx")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--calib", metavar="CALIB", help="sample input (needed when the input shape is not fixed)")
    shape.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                       help="input shape for models with dynamic dimensions")
    _add_exclude(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(p, quiet="print the table (or JSON) and warnings and errors, no info lines")

    p = sub.add_parser("evaluate", help="compare a pruned model with its original",
                       description="Fidelity (top-1 agreement, relative error, cosine), accuracy when labels are "
                       "given, latency and size of ORIGINAL and PRUNED on the same data.")
    p.add_argument("original", metavar="ORIGINAL.onnx")
    p.add_argument("pruned", metavar="PRUNED.onnx")
    _add_held_out(p, ".npy or .npz inputs, as for --calib",
                  "integer class labels of --data (or of --data-images, in path order), for accuracy", required=True)
    _add_image_options(p, "image options (with --data-images)", calibration=False)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="onnxruntime device that runs and times both models (default: CUDA when usable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(p, quiet="print the figures (or JSON) and warnings and errors, no info lines")

    p = sub.add_parser("demo", help="prune the shipped LeNet-5 (Fashion-MNIST) and show what it costs",
                       description="Prune the LeNet-5 that ships with onnx-eprune and print its accuracy and "
                       "size before and after.")
    p.add_argument("--sparsity", type=_fraction, default=0.55, metavar="S", help="parameter sparsity (default: 0.55)")
    p.add_argument("--method", default="entropic", choices=list(METHODS),
                   help="channel selection: entropic (default), or one of the baselines l1, random, lasso, "
                   "thinet (see 'onnx-eprune prune --help')")
    p.add_argument("-o", "--output", default="lenet5_fmnist.pruned.onnx", metavar="OUT.onnx",
                   help="where to write the pruned model (default: ./lenet5_fmnist.pruned.onnx)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="onnxruntime device for calibration and the accuracy test (default: CUDA when usable)")
    _add_common(p)
    return parser
