"""The pruning run: analyse the graph, stream statistics, allocate, select, re-fit, rewrite.

Data flows one way: ``graph`` finds the channel groups, ``calibrate`` streams the statistics
of their consumers, ``select`` and ``budget`` decide keep-sets and new weights, and
``graph`` writes the pruned model, which is validated before it is returned.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController
import onnx

from . import budget
from .calibrate.bundle import StatsBundle, fingerprint, merge_bundles
from .calibrate.data import CalibrationData, load_calibration, warn_if_few
from .calibrate.engine import CacheSpace, CachedNetwork, StoredBatches, Topology
from .calibrate.sensitivity import comparison_outputs, gain_subset, output_gains
from .calibrate.session import (BATCH_BYTES, choose_providers, make_session, probe_batch, probe_groups, run,
                                samples_per_batch)
from .calibrate.stats import (ConvGeometry, MomentAccumulator, MomentStats, PixelPairAccumulator, PooledStats,
                              channel_bases, conv_patches, positions_per_sample, reduce_rows, row_keys,
                              sample_positions)
from .config import PruneConfig, check_progress, make_config
from .errors import EPruneError, UsageError, checked_arguments
from .files import output_path, same_file
from .graph import analysis as channel_analysis
from .graph.contrib import fuse_again
from .graph.costs import CostModel, build_cost_model
from .graph.exclude import check_matches, exclude_groups
from .graph.groups import QUANTIZED, Consumer, channel_major, position_columns, spread
from .graph.model_io import (as_model, check_model, check_model_arg, data_files, initializer_map,
                             record_provenance, restore_order, save_model, share_equal_copies, store_narrowed)
from .graph.rewrite import Refit, build_pruned
from .graph.standard import standard_form
from .graph.weights import all_zero, consumer_matrix, folded_producer_rows
from .parallel import blas_on_one_thread, closing_all, matmul_rows, parallel_map, prefetched, submit
from .progress import Progress
from .select import DATA_METHODS, baselines, entropic
from .select.problem import ConsumerTerm, explained_curve, partial_out
from .select.reconstruct import THIN_ROWS, auto_ridge, fixed_ridge, refit, thin

log = logging.getLogger("onnx_eprune")

VALIDATION_SAMPLES = 256    # calibration samples the pruned model is checked on ...
VALIDATION_BYTES = 256 << 20  # ... at most as many as whose compared outputs take this many bytes
# a parameter or MAC target warns when layers pruning cannot reach hold at least this share
# of the metric and the target takes more than TAKEN_WARN of what the others hold: the
# accuracy then goes with layers emptied, whatever the selection
FROZEN_WARN = 0.25
TAKEN_WARN = 0.8
# the options that change what calibrate() computes (the others are prune's)
CALIBRATE_OPTIONS = ("samples", "seed", "device", "batch_size", "positions")
_METRIC_WORDS = {"params": "parameters", "macs": "MACs"}



def stats_bundle(calib: object, stats: object) -> tuple[list, StatsBundle | None]:
    """The statistics a run takes instead of calibration data: ``stats`` (None, or a list of
    statistics file paths or bundles) as its sources and their merged bundle, ([], None)
    without; :class:`UsageError` unless exactly one of ``calib`` and ``stats`` is given."""
    sources = _stats_sources(stats) if stats is not None else []
    if (calib is None) == (not sources):
        raise UsageError("give calib (calibration data) or stats (statistics files), not both or neither")
    return sources, merge_bundles(sources) if sources else None


def _stats_sources(stats: object) -> list:
    """``stats`` as a list of statistics file paths or bundles; a bare path is refused, as a
    string would otherwise be read as one file name per character."""
    if isinstance(stats, (str, bytes, os.PathLike, StatsBundle, dict)) or not isinstance(stats, Iterable):
        raise UsageError(f"stats must be a list of statistics files or bundles (e.g. stats=['shard0.npz']), "
                         f"not {type(stats).__name__}")
    sources = list(stats)
    for i, source in enumerate(sources):
        if not isinstance(source, (str, os.PathLike, StatsBundle)):
            raise UsageError(f"stats[{i}] must be the path of a statistics file or a bundle from calibrate(), "
                             f"not {type(source).__name__}")
    return sources


def refuse_stats_options(samples: int | None, positions: int | None, mode: str | None) -> None:
    """:class:`UsageError` for an option given to a run from statistics files that they
    cannot serve: the samples and their positions, which calibrate() chose for the files,
    and the sequential mode, which needs the samples. The command line calls it before
    any work, the API once the files are read."""
    if mode == "sequential":
        raise UsageError("mode 'sequential' (--mode sequential) fits each layer on the network pruned so far, "
                         "which needs the samples; statistics files hold one-shot statistics: leave the mode out, or "
                         "calibrate on data instead of statistics files")
    given = [f"{name} (--{name})" for name, value in (("samples", samples), ("positions", positions))
             if value is not None]
    if given:
        one = len(given) == 1
        raise UsageError(f"{' and '.join(given)} belong{'s' if one else ''} to calibrate ('onnx-eprune calibrate') "
                         f"and do{'es' if one else ''} nothing with statistics files (--stats): they hold the samples "
                         "they were computed on")


def config_for_stats(config: PruneConfig, stats: StatsBundle) -> PruneConfig:
    """``config`` for a run from statistics files: one-shot, with the files' seed (their conv
    positions were drawn with it, so a run from the same samples with that seed gives the
    same model); the options that choose samples and positions belong to calibrate()."""
    refuse_stats_options(config.samples, config.positions, config.mode)
    if config.seed not in (None, stats.seed):
        raise UsageError(f"{stats.described()} were computed with seed {stats.seed}, not {config.seed}: leave the "
                         "seed out, or calibrate again with it")
    if config.mode is None:
        log.info("pruning from statistics files: one-shot mode")
    return replace(config, mode="oneshot", seed=stats.seed)


def _bundle_images(images: dict[str, np.ndarray], model: onnx.ModelProto, bundle: StatsBundle) -> CalibrationData:
    """Images that statistics files carry (to probe shapes, or measure sensitivities),
    checked against the model's inputs as calibration data is."""
    try:
        data = load_calibration(dict(images), model, probe=True)
    except UsageError as exc:
        raise UsageError(f"the images in {bundle.described()} do not fit the model ({exc}): damaged; write them "
                         "again with 'onnx-eprune calibrate'") from None
    if not data.samples:
        raise UsageError(f"{bundle.described()} hold no images: damaged; write them again with 'onnx-eprune "
                         "calibrate'")
    return data


def input_files(model: object, calib: object, stats: list | None) -> tuple[Path, ...]:
    """The files a run reads (``stats``: any further ones), which :meth:`PruneResult.save`
    will not overwrite: absolute, so that a later change of the working folder does not move
    them."""
    named = [model, calib, *(stats or [])]
    named += data_files(model) if isinstance(model, (str, os.PathLike)) else []  # the model's weights
    return tuple(Path(os.path.abspath(p)) for p in named if isinstance(p, (str, os.PathLike)))


@dataclass
class PruneResult:
    """The pruned model and the report (a JSON-ready dict, see ``report.py``).

    ``inputs``: the files the run read (model, calibration data, statistics files), which
    :meth:`save` refuses to overwrite, as the command line does.
    """

    model: onnx.ModelProto
    report: dict
    inputs: tuple[Path, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        # the model and the report grow with the network: show what the run removed
        r = self.report
        return (f"PruneResult({r['method']} {r['mode']}, {r['target']['kind']} {r['target']['value']:g}: params "
                f"{r['params']['before']:,} -> {r['params']['after']:,}, MACs {r['macs']['before']:,} -> "
                f"{r['macs']['after']:,})")

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically, with its weights in ``<path>.data`` when it is above
        the 2 GB protobuf limit. Use this rather than ``onnx.save``: the pruned model of a
        large input still reads its unchanged weights from the input's data file.

        :class:`UsageError` for a path that is not a str or path, empty, a folder, an
        existing device or pipe, in a missing folder, or one of :attr:`inputs` (the original
        would be lost).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        for source in self.inputs:
            # above 2 GB the weights go to <path>.data: that must not be an input either
            if same_file(Path(path), source) or same_file(Path(f"{os.fspath(path)}.data"), source):
                raise UsageError(f"refusing to overwrite {source}, an input of this run; save the pruned model "
                                 "to another path")
        output_path(path)
        save_model(self.model, path, keep=self.inputs)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()


@dataclass
class Rankings:
    """What :meth:`Pruner.allocate` draws from the first pass over the original network,
    the same at any target of one kind (runs at several targets share it: ``sweep`` and
    ``search``). Per group: its blocks from most to least important, the error of keeping
    the first k of them (k = 0 .. all), the sensitivity of the model's outputs to it, and
    its entropic path (where the sequential stages resume). ``config``: the run's, without
    its target; another config's runs may not use it."""

    config: PruneConfig
    order: dict[int, np.ndarray]
    errors: dict[int, np.ndarray]
    gains: dict[int, float]
    paths: dict[int, list[entropic.PathPoint]]
    first_pass: FirstPass | None = None


@dataclass
class FirstPass:
    """What the sequential mode's first pass over the original network leaves its stages,
    kept for the runs that share its :class:`Rankings` when the pass recorded into a cache
    space that outlives its run (``Pruner(records=...)``): they then make no such pass.
    ``targets``: consumer -> the original output rows at its sampled positions, per batch;
    ``bases``: consumer -> the (C, s, r) bases of its reduced taps; ``reference``: the
    original outputs on the first validation samples, per batch."""

    targets: dict[int, StoredBatches]
    bases: dict[int, np.ndarray]
    reference: list[list[np.ndarray]]


def _untargeted(config: PruneConfig) -> PruneConfig:
    return replace(config, sparsity=None, flops_reduction=None, keep_ratio=None)


class Pruner:
    """One pruning run; ``run()`` returns a :class:`PruneResult`. ``rankings``: those of an
    earlier run of the same model, data and config at another target of the same kind
    (``self.rankings`` after its run), which this run then does not draw again.
    ``records``: a cache space that outlives the run, which the sequential first pass
    records the original target rows into, where they stay, when they all fit there (the
    run's own space otherwise, where its stages release them); its rankings then carry the
    :class:`FirstPass`, and a later run given them and the same space makes no first pass."""

    lean_stages = True  # see _lean_consumers

    def __init__(self, model, calib, config: PruneConfig, progress: Progress | None = None,
                 stats: StatsBundle | None = None, rankings: Rankings | None = None,
                 records: CacheSpace | None = None):
        config.check()
        if stats is not None:
            config = config_for_stats(config, stats)
        else:
            config = replace(config, mode=config.mode or "sequential", seed=config.seed or 0)
        if rankings is not None and rankings.config != _untargeted(config):
            raise ValueError("rankings drawn for another configuration")
        self.config = config
        self.rankings = rankings
        self.records = records
        self.progress = progress or Progress(enabled=False)
        self._blas = ThreadpoolController()
        self._blas_threads = max([i["num_threads"] for i in self._blas.info() if i["user_api"] == "blas"] or [1])
        self.timer = _Timer()
        self.bundle = stats
        self.wide_frozen: list[int] = []  # groups frozen as only reduced statistics can prune them (_freeze_wide)
        t0 = time.perf_counter()
        with self.timer.phase("load"):
            self.model = as_model(model)
            self.normalized, self.fusions, self.listing = standard_form(self.model)
            if self.fusions:
                log.info("%d onnxruntime fused node(s) (%s) are pruned as the standard ops they compute and "
                         "written back fused", len(self.fusions),
                         ", ".join(sorted({f.node.op_type for f in self.fusions})))
            if stats is not None and stats.model != fingerprint(self.model):
                raise UsageError(f"{stats.described()} were computed for another model (this model's graph, "
                                 "weights or metadata differ from the one calibrated): calibrate it again")
            # with statistics files, the few images they carry serve to probe shapes and validate
            self.data: CalibrationData = load_calibration(calib, self.model, config.samples) if stats is None \
                else _bundle_images(stats.probe, self.model, stats)
            # the pruned model is compared with the original on these: from statistics files, the
            # images they keep to measure sensitivities (at least 16 a shard), not the 8 probes
            self.validation_data = self.data if stats is None else _bundle_images(stats.gain_images, self.model, stats)
            if stats is not None:
                warn_if_few(stats.samples)
            self.providers = choose_providers(config.device)
        log.info("onnxruntime provider: %s", self.providers[0])
        with self.timer.phase("analyze"):
            self.shapes, self.analysis = probe_groups(self.model, self.data.first(), self.providers)
            self.probe_samples = probe_batch(self.model)  # the samples the shapes were probed with
            exclude_groups(self.analysis, self.model.graph.node, config.exclude, self.normalized.folded)
            if stats is not None or not self.lean_stages:
                self._freeze_wide()
            self.costs: CostModel = build_cost_model(self.model, self.analysis, self.shapes, config.reconstruct,
                                                     self.normalized.copies)
        if stats is not None:
            self._check_bundle(stats)
        self.inits = initializer_map(self.model)
        # consumers computing their bias alone: sliced, never re-fitted (weights.all_zero)
        self.zero_weights = {c for c, cons in enumerate(self.analysis.consumers) if all_zero(self.inits, cons.weight)}
        # consumers applying one weight (analysis' tie_conv): re-fitted once, on their rows together
        readers: dict[str, list[int]] = {}
        for c, cons in enumerate(self.analysis.consumers):
            readers.setdefault(cons.weight, []).append(c)
        self.families = {c: family for family in readers.values() if len(family) > 1 for c in family}
        self.topo = Topology(self.model)
        self.outputs = comparison_outputs(self.model, self.analysis, self.topo, self.shapes)
        consumers = [self.analysis.consumers[c] for c in self._oneshot_consumers()]
        # config.batch_size at most: high-resolution inputs fetch GBs per sample
        self.batch_size = samples_per_batch(self.model, self.shapes, [c.input for c in consumers]
                                            + [c.output for c in consumers] + self.outputs, config.batch_size)
        wanted = min(config.batch_size, self.data.samples)  # a run holding fewer samples is not cut down by the cap
        if self.batch_size < wanted:
            log.debug("calibration runs %d sample(s) at a time: %d would fetch over %.1f GiB of tensors",
                      self.batch_size, wanted, BATCH_BYTES / 2 ** 30)
        # the pruned model is compared with the original on this many calibration samples
        self.validation_samples = samples_per_batch(self.model, self.shapes, self.outputs,
                                                    min(VALIDATION_SAMPLES, self.validation_data.samples),
                                                    VALIDATION_BYTES)
        self.paths: dict[int, list[entropic.PathPoint]] = {}  # entropic paths on one-shot statistics
        self.steps: dict[int, int] = {}  # group -> its kept counts are multiples of this (allocate)
        self._targets: dict[int, StoredBatches] = {}  # consumer -> its target rows (collect)
        # consumer -> (C, s, r) bases of its channels' taps in the reduced first pass (collect)
        self.bases: dict[int, np.ndarray] = {}
        self.auto_ridges: dict[int, float] = {}  # consumer -> its cross-validated re-fit ridge
        self.thin_refits: dict[int, tuple[int, int]] = {}  # consumer -> (rows, kept features), if thin
        self.unfitted: dict[int, int] = {}  # consumer -> its kept features, too many to re-fit (_unfit)
        # consumer -> (kept channels, s, r) bases of the directions a subspace re-fit works in
        self.subspaces: dict[int, np.ndarray] = {}
        # the original model's outputs on the first validation samples, per batch, taken in
        # the pass over the original network so that validation need not run it again
        self._reference: list[list[np.ndarray]] = []
        self.t0 = t0

    # -- statistics ----------------------------------------------------------------------
    def _rows(self, cons: Consumer, x: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
        if cons.spatial:
            geo = ConvGeometry.from_dict(cons.conv, self.shapes[cons.output][2:])
            return conv_patches(x.astype(np.float32, copy=False), geo, positions)
        rows = x.reshape(x.shape[0], -1)
        return (channel_major(rows, cons.s) if cons.positions_last else rows).astype(np.float32, copy=False)

    def _rows_per_sample(self, cons: Consumer) -> int:
        """Rows of ``cons``'s input per sample: 1, or a space-to-batch's blocks (tf2onnx's
        dilated convolution on an input of unknown size convolves each sample's r x r
        interleaved sub-images as r * r images)."""
        return max(1, self.shapes[cons.input][0] // self.probe_samples)

    def _positions_per_row(self, cons: Consumer) -> tuple[int, int]:
        """(output positions of each row of ``cons``'s input, how many of them its
        statistics take): a sample's share (:func:`positions_per_sample`) spread over its
        rows, so that a space-to-batch's convolution samples as the dilated one it is."""
        n_pos, rows = int(np.prod(self.shapes[cons.output][2:])), self._rows_per_sample(cons)
        k = positions_per_sample(n_pos * rows, cons.in_channels * cons.s, self.config.positions)
        return n_pos, min(n_pos, -(-k // rows))

    def _positions(self, cons: Consumer, keys: np.ndarray, rows: int, cidx: int) -> np.ndarray | None:
        """The output positions sampled in each of the ``rows`` rows of a batch whose samples
        have content keys ``keys``: ``(rows, k)``, or None for a consumer without positions."""
        if not cons.spatial:
            return None
        n_pos, k = self._positions_per_row(cons)
        # the same positions in every pass (the salt the one-shot pass has always used, so
        # statistics files written before keep theirs)
        return sample_positions(row_keys(keys, rows), hash((self.config.seed, 0, cidx)), n_pos, k)

    def collect(self, cidxs: list[int], orig: CachedNetwork, pruned: CachedNetwork | None, label: str,
                record: bool = False, reduce: Collection[int] = (), channels: dict[int, np.ndarray] | None = None,
                subspace: dict[int, int] | None = None) -> dict[int, MomentStats]:
        """Stream the statistics of consumers ``cidxs``: current input from ``pruned`` (None:
        the original network, as in one-shot mode), target output from the original network.

        A consumer's rows are taken at the same sampled positions in every pass, so the
        one-shot pass can ``record`` its target rows (the original output there) and later
        passes read them back instead of running the original network again; the targets
        that found no room in the cache space are computed again from ``orig``.

        The convolutions in ``reduce`` have each input channel's taps reduced to their
        ``EntropicConfig.max_features // channels`` leading principal directions, found on
        this pass's first batch (``self.bases``): their statistics are those of the reduced
        features against the original output. The sequential mode reduces the wide
        convolutions (:func:`_reducible`) in its first pass, whose statistics only serve the
        allocation, and in the stages of the entropic method (:meth:`_lean_consumers`).

        ``channels`` (consumer -> sorted channel indices of its current input) restricts a
        consumer's statistics to those input channels: the exact statistics of the channels
        a stage keeps, for their re-fit (of the original network's, without ``pruned``: the
        one-shot re-fit of a consumer too wide for them all, :meth:`_kept_stats`).

        ``subspace`` (consumer -> r, with ``channels``) takes, for a consumer whose kept
        features are still too many for their statistics (:meth:`_subspace_refit`), each
        kept channel's features along its ``r`` leading principal directions (found on this
        pass's first batch: ``self.subspaces``) against the residual of the original
        weights, ``y - x_kept @ theta_kept.T``.
        """
        cons = {c: self.analysis.consumers[c] for c in cidxs}
        linear = {c: consumer_matrix(self.inits, cons[c]) for c in cidxs}
        thetas = {c: theta.astype(np.float32) for c, (theta, _bias) in linear.items()}
        biases = {c: bias.astype(np.float32) for c, (_theta, bias) in linear.items()}
        recording = set()
        if record:
            for c in cidxs:
                # straight to a scratch file: each is read back in order (once per run that
                # shares it), which the page cache serves as fast as memory, and the process
                # does not grow with the samples
                store = StoredBatches.reserve(self.records or self.space, self._target_bytes(cons[c]), memory=False)
                if store is not None:
                    self._targets[c] = store
                    recording.add(c)
        stored = {c: self._targets[c] for c in cidxs if pruned is not None and c in self._targets}
        budget = self.config.entropic.max_features
        reduced = set(reduce) & set(cidxs)
        channels, subspace = channels or {}, subspace or {}
        priors = {c: thetas[c][:, spread(channels[c], cons[c].s)] for c in subspace}
        # the consumers whose target rows this pass computes (a one-shot pass maps x to y
        # through theta, whole, where no channels are cut away)
        targeted = [c for c in cidxs if c not in stored and (pruned is not None or c in recording or c in reduced
                                                             or c in channels)]
        # what the original network must give: the inputs in one-shot mode, and the targets
        # (a Conv's output as onnxruntime computes it; a Gemm's input, for a product)
        wanted = {cons[c].input for c in cidxs} if pruned is None else set()
        wanted |= {cons[c].output if _from_output(cons[c]) else cons[c].input for c in targeted}
        outputs = self.outputs
        reference = pruned is None and not self._reference
        if reference:
            wanted |= set(outputs)
        acc: dict[int, MomentAccumulator | PixelPairAccumulator] = {}
        batches = self.data.batch_count(self.batch_size)
        orig_iter = prefetched(orig.compute(sorted(wanted), keep=pruned is not None)) if wanted \
            else itertools.repeat({})
        cur_iter = prefetched(pruned.compute(sorted({c.input for c in cons.values()}))) if pruned is not None \
            else None
        keys = self.data.keys()
        size = self.batch_size

        def step(c: int) -> None:
            """Batch ``b`` of consumer ``c``. Consumers run on parallel threads, and each
            spreads its products over threads too: BLAS stays on one thread (see ``run``)."""
            x = xc[cons[c].input].astype(np.float32, copy=False)
            if c in channels and cons[c].spatial:
                x = x[:, channels[c]]
            elif c in channels:  # a Gemm's input holds each channel's s features in a row
                x = x.reshape(len(x), -1)[:, _columns(cons[c], channels[c], x)]
            if c not in acc:
                # one-shot: y is theta x, its moments follow from those of x (not of reduced or cut x)
                acc[c] = MomentAccumulator(self._blas_threads) if c in reduced or c in subspace else \
                    self._accumulator(cons[c], x.shape[1:], thetas[c] if pruned is None and c not in channels else None)
            images = isinstance(acc[c], PixelPairAccumulator)
            pos = self._positions(cons[c], keys[b * size:(b + 1) * size], len(x), c)
            rows = None if images else self._rows(cons[c], x, pos)
            y = None
            if c in stored:
                y = stored[c][b]
            elif c in targeted:
                if _from_output(cons[c]):
                    y = _at_positions(xo[cons[c].output], pos) - biases[c]
                else:
                    whole = pruned is None and c not in channels  # rows of the original input, uncut
                    source = rows if whole else self._rows(cons[c], xo[cons[c].input], pos)
                    y = matmul_rows(source, thetas[c].T, self._blas_threads)
                if c in recording:
                    self._targets[c].append(y)
            if c in reduced:
                if b == 0:
                    self.bases[c] = channel_bases(rows, cons[c].s, max(1, budget // cons[c].in_channels))
                acc[c].add(reduce_rows(rows, self.bases[c]), y)
                return
            if c in subspace:
                if b == 0:
                    self.subspaces[c] = channel_bases(rows, cons[c].s, subspace[c])
                residual = y - matmul_rows(rows, priors[c].T, self._blas_threads)
                acc[c].add(reduce_rows(rows, self.subspaces[c]), residual)
                return
            acc[c].add(x if images else rows, None if pruned is None and c not in channels else y)

        with self.progress.task(label, batches) as task, closing_all(orig_iter, cur_iter):
            for b in range(batches):
                xo = next(orig_iter)
                xc = next(cur_iter) if cur_iter is not None else xo
                if reference and b * size < self.validation_samples:
                    # copies: an output array can keep its session (and its memory arena) alive
                    self._reference.append([np.array(xo[o]) for o in outputs])
                parallel_map(step, cidxs, self._blas_threads)
                task.advance()
        return self._finite(dict(zip(cidxs, parallel_map(lambda c: acc[c].result(), cidxs, self._blas_threads))))

    def _finite(self, stats: dict[int, MomentStats]) -> dict[int, MomentStats]:
        """``stats``, refused where a moment is Inf or NaN: no selection or re-fit means
        anything there, and the pruned model would carry NaN weights."""
        bad = [c for c, st in stats.items() if not st.finite()]
        if bad:
            raise EPruneError(f"the statistics of layer {self.analysis.consumers[bad[0]].name!r} are not finite "
                              "(Inf or NaN): the network overflows on the calibration data or the statistics "
                              "files are damaged; check the inputs' scale (and recompute the files)")
        return stats

    def _accumulator(self, cons: Consumer, chw: tuple[int, ...], theta: np.ndarray | None
                     ) -> MomentAccumulator | PixelPairAccumulator:
        """The statistics accumulator of consumer ``cons`` for inputs of shape ``chw``: from
        pixel pairs where a Conv's rows are taken at every output position and pairs save work."""
        if cons.spatial:
            out_hw = self.shapes[cons.output][2:]
            n_pos, k = self._positions_per_row(cons)
            if k >= n_pos:
                pairs = PixelPairAccumulator.of(ConvGeometry.from_dict(cons.conv, out_hw), tuple(chw),
                                                self._blas_threads, theta)
                if pairs is not None:
                    return pairs
        return MomentAccumulator(self._blas_threads, theta)

    def _target_bytes(self, cons: Consumer) -> int:
        """Bytes of the target rows (float32) that consumer ``cons`` contributes over the
        calibration set."""
        rows = self.data.samples * self._rows_per_sample(cons)
        if cons.spatial:
            rows *= self._positions_per_row(cons)[1]
        return 4 * rows * cons.out_channels

    # -- per-group problems ----------------------------------------------------------------
    def _counts(self, keeps: dict[int, np.ndarray]) -> dict[int, int]:
        return {g.gid: (len(keeps[g.gid]) if g.gid in keeps else g.channels) for g in self.analysis.groups}

    def terms(self, cidx: int, st: MomentStats, keeps: dict[int, np.ndarray], gids: set[int],
              reduced: bool = False) -> dict[int, ConsumerTerm]:
        """The regressions of consumer ``cidx`` for each of the groups ``gids`` it reads, in
        the current coordinates, the features of its other groups regressed out; ``reduced``:
        ``st`` holds statistics of reduced features (see :meth:`collect`)."""
        cons = self.analysis.consumers[cidx]
        s = self.bases[cidx].shape[2] if reduced else cons.s
        counts = self._counts(keeps)
        parts: dict[int, list[np.ndarray]] = {}
        offset = 0
        for g, _off, _length in cons.segments:
            n = counts[g]
            if g in gids:
                parts.setdefault(g, []).append(np.arange(offset * s, (offset + n) * s).reshape(n, s))
            offset += n
        # a group read twice (a Concat of a tensor with its depthwise copy): the features of
        # both copies of a channel go together, as s more features of that channel
        blocks = {g: np.concatenate(p, axis=1) for g, p in parts.items()}
        # a group removed by whole conv groups is selected block by block: each block of
        # ``unit`` channels counts as one channel of ``unit`` times the features
        blocks = {g: cols.reshape(-1, self.analysis.groups[g].unit * cols.shape[1]) for g, cols in blocks.items()}
        rows = self._kept_outputs(cidx, keeps)
        P, var_y = (st.cross, st.var_y) if rows is None else (st.cross[:, rows], st.var_y[rows])
        return partial_out(st.cov, P, var_y, blocks)

    def group_terms(self, gids: list[int], stats: dict[int, MomentStats], keeps: dict[int, np.ndarray],
                    reduced: Collection[int] = ()) -> dict[int, list[ConsumerTerm]]:
        """The terms of every group in ``gids``, over all its consumers (``reduced``: the
        consumers whose ``stats`` are of reduced features)."""
        wanted = set(gids)
        out: dict[int, list[ConsumerTerm]] = {g: [] for g in gids}
        cidxs = sorted({c for g in gids for c in self.analysis.groups[g].consumers})
        per_consumer = parallel_map(
            lambda c: self.terms(c, stats[c], keeps, {s[0] for s in self.analysis.consumers[c].segments} & wanted,
                                 c in reduced),
            cidxs, self._blas_threads)
        for terms in per_consumer:
            for g, term in terms.items():
                out[g].append(term)
        return out

    def _kept_outputs(self, cidx: int, keeps: dict[int, np.ndarray]) -> np.ndarray | None:
        """Original output rows of consumer ``cidx`` still present (None: all of them)."""
        cons = self.analysis.consumers[cidx]
        drop = [p.offset + spread(np.setdiff1d(np.arange(g.channels), keeps[g.gid]), p.factor)
                for g in self.analysis.groups if g.gid in keeps for p in g.producers if p.node == cons.node]
        if not drop:
            return None
        return np.setdiff1d(np.arange(cons.out_channels), np.concatenate(drop))

    def ranking(self, gid: int, terms: list[ConsumerTerm], method: str | None = None, curve: bool = False
                ) -> np.ndarray:
        """The blocks of group ``gid`` (its channels, or its conv groups: see
        ``ChannelGroup.unit``) from most to least important, by ``method`` (None: the
        configured one; the methods of ``DATA_METHODS`` rank from ``terms``). ``curve``: the
        ranking only draws an error curve and the stages' starting points (the sequential
        allocation), so the entropic path may run fewer alternations (``curve_wide``)."""
        method = method or self.config.method
        if method == "entropic":
            cfg = self.config.entropic
            if curve:
                cfg = replace(cfg, wide=min(cfg.wide, cfg.curve_wide))
            self.paths[gid] = []
            return entropic.ranking(terms, cfg, record=self.paths[gid], workers=self._blas_threads)
        if method in ("lasso", "thinet"):
            A, b = baselines.contributions(terms, self.config.entropic.max_features)
            return baselines.lasso_ranking(A, b) if method == "lasso" else baselines.thinet_ranking(A)
        return self.weight_ranking(gid, method)

    def weight_ranking(self, gid: int, method: str) -> np.ndarray:
        """The blocks of group ``gid`` ranked by a method that reads no statistics: ``l1``
        (filter norms) or ``random``."""
        group = self.analysis.groups[gid]
        blocks = group.channels // group.unit
        if method == "l1":
            nodes = self.model.graph.node
            return baselines.l1_ranking([folded_producer_rows(nodes, self.inits, group, p).reshape(blocks, -1)
                                         for p in group.producers])
        return baselines.random_ranking(blocks, np.random.default_rng([self.config.seed, gid]))

    def choose(self, gid: int, k: int, ranking: np.ndarray | None, terms: Callable[[], list[ConsumerTerm]]
               ) -> np.ndarray:
        """The ``k`` channels of group ``gid`` to keep (sorted); ``terms`` is called only by
        the methods that rank from statistics (``l1`` and ``random`` keep their ``ranking``)."""
        unit = self.analysis.groups[gid].unit
        return _channels_of(self._choose_blocks(gid, k // unit, ranking, terms), unit)

    def _choose_blocks(self, gid: int, k: int, ranking: np.ndarray | None,
                       terms: Callable[[], list[ConsumerTerm]]) -> np.ndarray:
        cfg = self.config.entropic
        if self.config.mode == "oneshot" and ranking is not None:
            # the ranking was drawn on these very statistics (the entropic path stopped at k
            # channels keeps the k it ranks first)
            if self.config.method == "entropic" and len(ranking) <= cfg.exchange_below:
                return entropic.exchange(terms(), ranking[:k], cfg)
            return ranking[:k]
        if self.config.method == "entropic":
            # resume the path drawn on the one-shot statistics where 2k channels were alive
            start = entropic.resume_point(self.paths.get(gid, []), k)
            group_terms = terms()
            return entropic.exchange(group_terms, entropic.select(group_terms, k, cfg, start, self._blas_threads), cfg)
        if self.config.method in DATA_METHODS:
            ranking = self.ranking(gid, terms())
        elif ranking is None:
            ranking = self.ranking(gid, [])
        return ranking[:k]

    # -- allocation ------------------------------------------------------------------------
    def group_limits(self, gids: list[int]) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        """Per group: its channels, the step its kept counts take (``--round-to``, conv
        groups) and the fewest it may keep (``--min-keep``)."""
        channels = {g: self.analysis.groups[g].channels for g in gids}
        steps = {g: budget.step(channels[g], self.config.round_to, self.analysis.groups[g].unit,
                                any(p.kind == "conv" for p in self.analysis.groups[g].producers)) for g in gids}
        return channels, steps, budget.least_counts(channels, self.config.min_keep)

    def check_target(self, gids: list[int]) -> None:
        """Refuse a parameter or MAC target that the prunable groups cannot reach, before any
        calibration."""
        target = self.config.target()
        channels, steps, least = self.group_limits(gids)
        limits = [name for name, given in (("--exclude", self.config.exclude), ("--min-keep", self.config.min_keep),
                                           ("--round-to", self.config.round_to is not None)) if given]
        given = f" (with the {' and '.join(limits)} given)" if limits else ""
        if target.kind == "keep_ratio":
            if target.value < 1 and budget.uniform_counts(channels, target.value, steps, least) == channels:
                log.warning("--keep-ratio %s removes no channel: every group keeps its whole count%s",
                            target.value, given)
            return
        try:
            budget.check_reachable(channels, self.costs, target, steps, least)
        except EPruneError as exc:
            if self.bundle is not None and self.wide_frozen:
                given += (f"; the statistics files keep group{'s' if len(self.wide_frozen) > 1 else ''} "
                          f"{', '.join(map(str, self.wide_frozen))} whole (read by a consumer too wide for statistics "
                          "of every feature), which a run from calibration data (--calib) can prune")
            raise EPruneError(f"{exc}{given}") from None
        # a target within reach only by emptying the few layers pruning can touch: say so
        full = self.costs.total(target.metric)
        frozen = self.costs.total(target.metric, {g: 0 for g in gids}) / full
        if frozen >= FROZEN_WARN and target.value > TAKEN_WARN * (1 - frozen):
            words = _METRIC_WORDS[target.metric]
            log.warning("%.0f%% of the %s lie in layers that pruning cannot reach%s: removing %.0f%% of the %s "
                        "takes %.0f%% of the rest; expect a large loss of accuracy (`onnx-eprune inspect` lists the "
                        "frozen groups and why)", 100 * frozen, words, given, 100 * target.value, words,
                        100 * target.value / (1 - frozen))

    def allocate(self, gids: list[int], stats: dict[int, MomentStats] | None
                 ) -> tuple[dict[int, int], dict[int, np.ndarray]]:
        target = self.config.target()
        channels, steps, least = self.group_limits(gids)
        self.steps = steps
        units = {g: self.analysis.groups[g].unit for g in gids}
        if target.kind == "keep_ratio":
            return budget.uniform_counts(channels, target.value, steps, least), {}
        if self.rankings is None:
            self.rankings = self._rank(gids, stats)
        shared = self.rankings
        self.paths = dict(shared.paths)  # a ranking drawn later replaces its group's path here only
        # indexed by channels kept
        curves = {g: shared.gains[g] * shared.errors[g][np.arange(channels[g] + 1) // units[g]] for g in gids}
        return budget.allocate(channels, curves, self.costs, target, steps, least), shared.order

    def _rank(self, gids: list[int], stats: dict[int, MomentStats] | None) -> Rankings:
        """The :class:`Rankings` of the groups ``gids``, from the first pass's ``stats``."""
        order, errors = {}, {}
        consumers = self.analysis.consumers
        gain_data = gain_subset(self.bundle.gain_data() if self.bundle is not None else self.data)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-eprune-gains") as pool:
            # onnxruntime measures the gains on its own threads while the solvers rank: their
            # LAPACK calls leave the cores part of the time
            gains_run = submit(pool, output_gains, self.model, self.topo, gain_data, self.providers,
                               {g: sorted({consumers[c].output for c in self.analysis.groups[g].consumers})
                                for g in gids}, self.shapes, self.space, seed=self.config.seed,
                               outputs=self.outputs)
            all_terms = self.group_terms(gids, stats, {}, reduced=self.bases.keys())

            def rank(g: int) -> None:
                order[g] = self.ranking(g, all_terms[g], curve=self.config.mode == "sequential")
                # the error of keeping the first k blocks of the ranking, k = 0 .. all
                errors[g] = sum(explained_curve(t, order[g], workers=self._blas_threads) for t in all_terms[g])
                all_terms[g] = []  # free the group's covariances as soon as it is done
                task.advance()

            with self.progress.task("rank", len(gids)) as task:
                parallel_map(rank, sorted(gids, key=lambda g: -self._solve_cost(all_terms[g])), self._blas_threads)
            gains = gains_run.result()
        return Rankings(_untargeted(self.config), order, errors, gains, self.paths)

    def _solve_cost(self, terms: list[ConsumerTerm]) -> float:
        """Rough cost of ranking a group (cubic in its features), to start the largest first."""
        return float(sum(t.G.shape[0] ** 3 for t in terms))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> PruneResult:
        # OpenBLAS sums products in an order that depends on its thread count; BLAS runs on
        # one thread so that the output is the same bytes for any core count (on one kind of
        # CPU: OpenBLAS and onnxruntime pick other kernels for AVX-512 than for AVX2), and
        # the work is spread over Python threads in pieces that do not depend on the thread
        # count (independent groups for the solvers, fixed blocks for the statistics' products).
        with blas_on_one_thread(self._blas):
            return self._run()

    def preflight(self) -> list[int]:
        """The ids of the prunable groups, once it is clear that the run can reach its target:
        what fails here fails before any calibration."""
        gids = self.prunable_gids()
        self.check_target(gids)
        return gids

    def reach(self, gids: list[int]) -> float:
        """The largest fraction of the target's metric (parameters or MACs) that pruning the
        groups ``gids`` can remove: each at its smallest count that the config allows."""
        channels, steps, least = self.group_limits(gids)
        return budget.reach(channels, self.costs, self.config.target().metric, steps, least)

    def prunable_gids(self) -> list[int]:
        """The ids of the prunable groups; a model without one fails, naming why."""
        gids = [g.gid for g in self.analysis.prunable_groups()]
        if not gids:
            reasons = sorted({r for g in self.analysis.groups for r in g.frozen})
            hint = "; prune the float model, then quantize it" if any(QUANTIZED in r for r in reasons) else ""
            raise EPruneError("no prunable channel group in this model (" + "; ".join(reasons[:3]) + ")" + hint)
        return gids

    def _run(self) -> PruneResult:
        gids = self.preflight()
        self.space = CacheSpace.default()
        try:
            return self._run_with_cache(gids)
        finally:
            self.space.close()

    def _run_with_cache(self, gids: list[int]) -> PruneResult:
        cfg = self.config
        orig = CachedNetwork(self.model, self.topo, self.data, self.providers, self.batch_size, self.space)
        target = cfg.target()
        oneshot_stats = None
        first_pass = self.rankings.first_pass if self.rankings is not None and self.records is not None else None
        if self.bundle is not None:
            oneshot_stats = self._finite(self.bundle.consumers)
        elif first_pass is not None and cfg.mode == "sequential":
            # an earlier run's pass over the original network: its statistics served the
            # rankings, which this run shares; its records serve the stages
            self._targets, self.bases = dict(first_pass.targets), dict(first_pass.bases)
            self._reference = first_pass.reference
        elif target.kind != "keep_ratio" or cfg.mode == "oneshot":
            with self.timer.phase("calibrate"):
                # the sequential stages read the original network's target rows again
                cidxs = self._oneshot_consumers()
                if cfg.mode == "sequential" and self.records is not None and sum(
                        self._target_bytes(self.analysis.consumers[c]) for c in cidxs) > self.records.disk_left:
                    # all or nothing: with part of the rows, the later runs would compute the
                    # rest again, unlike this run; this one records into its own space, as prune does
                    self.records = None
                # the sequential first pass serves the allocation alone: it reduces every wide
                # convolution; a one-shot pass, whose statistics the selection and re-fit use,
                # only the consumers too wide for statistics of every feature
                wide = [c for c in cidxs if (_reducible(self.analysis.consumers[c], cfg.entropic.max_features)
                                             if cfg.mode == "sequential" else _too_wide(self.analysis.consumers[c]))]
                oneshot_stats = self.collect(cidxs, orig, None, "calibrate", record=cfg.mode == "sequential",
                                             reduce=wide)
        with self.timer.phase("select"):
            counts, rankings = self.allocate(gids, oneshot_stats)
        if self.records is not None and self._targets and self.rankings.first_pass is None:
            self.rankings.first_pass = FirstPass(dict(self._targets), dict(self.bases), self._reference)
        keeps: dict[int, np.ndarray] = {}
        refits: dict[int, Refit] = {}
        if cfg.mode == "oneshot":
            with self.timer.phase("select"):
                all_terms: dict[int, list[ConsumerTerm]] = {}
                for g in gids:
                    def terms_of(g=g):
                        if not all_terms:
                            all_terms.update(self.group_terms(gids, oneshot_stats, {}, reduced=self.bases.keys()))
                        return all_terms[g]
                    keeps[g] = self.choose(g, counts[g], rankings.get(g), terms_of)
            if cfg.reconstruct:
                # a consumer whose inputs all stay whole keeps its weights: a re-fit would
                # only add rounding, which compounds over a deep network (keep-ratio 1.0)
                touched = sorted({c for g in gids if self._shrunk(g, keeps)
                                  for c in self.analysis.groups[g].consumers} - self.zero_weights)
                wide = [c for c in touched if c in self.bases]
                if wide:
                    with self.timer.phase("calibrate"):
                        oneshot_stats = {**oneshot_stats, **self._kept_stats(wide, orig, keeps)}
                with self.timer.phase("select"):
                    refits.update(self._fit_once(touched, lambda c: self._subspace_refit(
                        c, oneshot_stats[c], self._kept(c, keeps)) if c in self.subspaces else self._refit(
                        c, self._family_stats(c, oneshot_stats), keeps, set(keeps), c in wide)))
        else:
            self._sequential(gids, counts, rankings, orig, keeps, refits)
        with self.timer.phase("rewrite"):
            pruned = build_pruned(self.model, self.analysis, keeps, refits)
            share_equal_copies(pruned, self.normalized.copies)
            store_narrowed(pruned, self.normalized.narrowed)
            fuse_again(pruned, self.fusions)
            restore_order(pruned, self.listing)
        with self.timer.phase("validate"):
            fidelity = self.validate(pruned)
        self.timer.seconds["total"] = time.perf_counter() - self.t0
        fixed = {c: v for c, v in self.thin_refits.items() if c not in self.auto_ridges}
        if fixed:  # a fixed ridge may overfit these: name the fewest rows per input
            worst = min(fixed, key=lambda c: fixed[c][0] / fixed[c][1])
            log.info("%d layer(s) were re-fitted on fewer than %g calibration rows per kept input (%s: %d rows, "
                     "%d inputs); --refit-ridge auto chooses their ridge by cross-validation, which can keep "
                     "more accuracy with few samples (an eigendecomposition per layer: seconds on wide ones)",
                     len(fixed), THIN_ROWS, self.analysis.consumers[worst].name, *fixed[worst])
        from .report import build_report, provenance
        report = build_report(self, keeps, counts, fidelity, set(refits))
        record_provenance(pruned, provenance(report))
        return PruneResult(pruned, report)

    def _check_bundle(self, bundle: StatsBundle) -> None:
        """Refuse statistics files whose layers do not fit the model's consumers: made for
        this model (its fingerprint), they were edited or damaged."""
        for c in self._oneshot_consumers():
            cons, st = self.analysis.consumers[c], bundle.consumers.get(c)
            want = (cons.in_channels * cons.s, cons.out_channels)
            got = None if st is None else (st.mean_x.shape[0], st.mean_y.shape[0])
            if got != want:
                held = "no moments" if got is None else f"moments of {got[0]} inputs and {got[1]} outputs"
                raise UsageError(f"{bundle.described()} hold {held} for layer {cons.name!r}, which has {want[0]} "
                                 f"inputs and {want[1]} outputs: damaged; write them again with 'onnx-eprune "
                                 "calibrate'")

    def _oneshot_consumers(self) -> list[int]:
        return sorted({c for g in self.analysis.prunable_groups() for c in g.consumers})

    def _freeze_wide(self) -> None:
        """Freeze the groups that only reduced statistics can prune (``analysis.wide``):
        statistics files take every feature's statistics (each shard would reduce them along
        directions of its own), and so do the diagnostics that turn ``lean_stages`` off."""
        for gid, reason in self.analysis.wide.items():
            self.analysis.groups[gid].frozen.append(f"{reason}; a run from calibration data, which reduces them, "
                                                    "can prune its input channels")
        self.wide_frozen = sorted(self.analysis.wide)
        self.analysis.wide.clear()

    def _kept(self, cidx: int, keeps: dict[int, np.ndarray]) -> np.ndarray:
        """The kept channels of the one group that consumer ``cidx`` (too wide: see
        ``GraphAnalysis.wide``) reads."""
        return keeps[self.analysis.consumers[cidx].segments[0][0]]

    def _kept_stats(self, cidxs: list[int], orig: CachedNetwork, keeps: dict[int, np.ndarray]
                    ) -> dict[int, MomentStats]:
        """One-shot statistics of the kept features of the too-wide consumers ``cidxs``, for
        their re-fit, from a second pass over the original network: of every kept feature
        where they fit the limit, else of each kept channel's leading directions against the
        original weights' residual (:meth:`collect`'s ``subspace``)."""
        kept = {c: self._kept(c, keeps) for c in cidxs}
        return self.collect(cidxs, orig, None, "re-fit", channels=kept, subspace=self._directions(kept))

    def _directions(self, kept: dict[int, np.ndarray]) -> dict[int, int]:
        """For the consumers of ``kept`` (consumer -> the channels it keeps) whose kept
        features are still more than statistics take, the leading directions per kept
        channel that their subspace re-fit works in (:meth:`collect`'s ``subspace``)."""
        limit = channel_analysis.MAX_CONSUMER_FEATURES
        return {c: limit // len(k) for c, k in kept.items() if len(k) * self.analysis.consumers[c].s > limit}

    def calibrate(self) -> StatsBundle:
        """One-shot statistics of every consumer of a prunable group, as a mergeable bundle."""
        self._freeze_wide()
        self.prunable_gids()  # statistics of no layer serve no later run
        orig = CachedNetwork(self.model, self.topo, self.data, self.providers, self.batch_size,
                             CacheSpace(0, 0))
        with self.timer.phase("calibrate"), blas_on_one_thread(self._blas):
            consumers = self.collect(self._oneshot_consumers(), orig, None, "calibrate")
        return StatsBundle.from_run(self.model, self.config.seed, self.config.positions, self.data, consumers)

    def _sequential(self, gids, counts, rankings, orig, keeps, refits) -> None:
        """Decide the groups one by one, each on statistics of the network pruned so far."""
        cfg = self.config
        groups = self.analysis.groups
        consumers = self.analysis.consumers
        order = sorted(gids, key=lambda g: (max(consumers[c].node for c in groups[g].consumers), g))
        targets_of = {g: sorted({consumers[c].input for c in groups[g].consumers}) for g in order}
        # the tensors whose channels the analysis lays out are the ones a stage can slice
        sliceable = {t[0] for group in groups for t in group.tensors}
        pruned = CachedNetwork(self.model, self.topo, self.data, self.providers, self.batch_size, self.space,
                               frontier=sliceable)
        for stage, g in enumerate(order, start=1):
            cidxs = groups[g].consumers
            label = f"layer {stage}/{len(order)}"
            lean = self._lean_consumers(g, counts[g])
            with self.timer.phase("calibrate"):
                stats = self.collect(cidxs, orig, pruned, label, reduce=lean)
            with self.timer.phase("select"):
                keep = self.choose(g, counts[g], rankings.get(g),
                                   lambda: self.group_terms([g], stats, keeps, reduced=lean)[g])
            # a consumer reading several groups (after a Concat) is re-fitted once, when its
            # last group is decided; until then its columns are only sliced (nothing pruned so
            # far: its input is the original one, its weights stay)
            decided = {**keeps, g: keep}
            changed = cfg.reconstruct and any(self._shrunk(h, decided) for h in decided)
            ready = [c for c in cidxs if changed and c not in self.zero_weights
                     and all(s[0] in decided or s[0] not in counts for s in consumers[c].segments)]
            waves = self._waves(ready)
            waves = [w for w in ([c for c in wave if not self._unfit(c, keep, i)] for i, wave in enumerate(waves)) if w]
            exact = [c for c in waves[0] if c in lean] if waves else []
            exact = [c for c in exact if all(d in exact for d in self.families.get(c, [c]))]  # pooled alike
            if exact:
                kept = {c: keep for c in exact}
                with self.timer.phase("calibrate"):
                    # a lean consumer reads only this group, whose channels are all in its input
                    stats.update(self.collect(exact, orig, pruned, label, channels=kept,
                                              subspace=self._directions(kept)))
            stale = self.topo.descendants({consumers[c].node for c in cidxs}) if cfg.reconstruct else set()
            slicers = self._slicers(g, decided)
            for i, wave in enumerate(waves):
                if i:
                    # the waves before changed this one's inputs: statistics of the network with
                    # their re-fits, in which this group carries its kept channels only
                    with self.timer.phase("rewrite"):
                        pruned.update(build_pruned(self.model, self.analysis, decided, refits), stale, slicers)
                        stale, slicers = self.topo.descendants({consumers[c].node for c in wave}), {}
                    with self.timer.phase("calibrate"):
                        stats.update(self.collect(wave, orig, pruned, label))
                with self.timer.phase("select"):
                    # independent solves (a residual stream feeds three or four consumers)
                    refits.update(self._fit_once(wave, lambda c: self._subspace_refit(c, stats[c], keep)
                                                 if c in self.subspaces else self._refit(
                        c, self._family_stats(c, stats), decided, set() if i else {g}, c in exact)))
            keeps[g] = keep
            for c in cidxs:  # a consumer is decided with its (last) group
                if c in self._targets and all(s[0] in keeps or s[0] not in counts for s in consumers[c].segments):
                    done = self._targets.pop(c)
                    if self.records is None:  # kept for the runs that share this one's first pass
                        done.discard()
            with self.timer.phase("rewrite"):
                model = build_pruned(self.model, self.analysis, keeps, refits)
                pruned.update(model, stale, slicers)
                future = [t for later in order[stage:] for t in targets_of[later]]
                pruned.retain(future)
                orig.retain(future)

    def _unfit(self, cidx: int, keep: np.ndarray, wave: int) -> bool:
        """Whether consumer ``cidx``, re-fitted in ``wave`` of the stage that keeps ``keep``,
        is too wide to re-fit: it would need statistics of every feature in a later wave
        (see :func:`_too_wide`; in the first, the stage's second pass takes those of its
        kept features, or of their leading directions, :meth:`_subspace_refit`). It is then
        sliced, with its original weights and bias (``self.unfitted``)."""
        cons = self.analysis.consumers[cidx]
        if not _too_wide(cons) or wave == 0:
            return False
        self.unfitted[cidx] = len(keep) * cons.s
        log.warning("layer %s is re-fitted after another layer that reads the same channels, on more features than "
                    "statistics take: its kept weights stay the original ones", cons.name)
        return True

    def _subspace_refit(self, cidx: int, st: MomentStats, keep: np.ndarray) -> Refit:
        """Re-fit consumer ``cidx`` (too wide, reading only the group that keeps ``keep``)
        where its kept features are more than statistics take: each kept channel's weights
        change only along the leading principal directions of its features
        (``self.subspaces[cidx]``, (k, s, r)), by the ridge regression of the original
        weights' residual on the features in those directions (``st``: see :meth:`collect`'s
        ``subspace``), shrunk toward no change; the rest of each weight stays the original.
        With every direction (r = s) this is the exact re-fit."""
        cons = self.analysis.consumers[cidx]
        theta, bias = consumer_matrix(self.inits, cons)
        bases = self.subspaces[cidx]
        k, s, r = bases.shape
        prior = theta[:, spread(cons.segments[0][1] + np.asarray(keep), s)]
        G, P = st.cov, st.cross
        no_change = np.zeros((theta.shape[0], k * r))
        eps = fixed_ridge(self.config.refit_ridge, st.n, k * r)
        if eps is None:
            eps = self.auto_ridges[cidx] = auto_ridge(G, P, st.var_y, no_change, st.n)
        if thin(st.n, k * r):
            self.thin_refits[cidx] = (int(st.n), k * r)
        delta, new_bias = refit(G, P, st.mean_x, st.mean_y, bias, no_change, eps, self._blas_threads)
        change = np.einsum("mkr,ksr->mks", delta.reshape(-1, k, r), bases.astype(np.float64)).reshape(-1, k * s)
        return Refit(prior + change, new_bias)

    def _waves(self, ready: list[int]) -> list[list[int]]:
        """``ready`` (the consumers a sequential stage re-fits) in the order their re-fits
        must happen: a consumer downstream of another one of the stage (a later block reading
        the same residual stream) waits for that one's re-fit, so that its statistics see the
        input it will get rather than one the same stage is about to change."""
        consumers = self.analysis.consumers
        below = {c: self.topo.descendants({consumers[c].node}) for c in ready}
        waves, left = [], list(ready)
        while left:
            wave = [c for c in left if not any(consumers[c].input in below[d] for d in left if d != c)]
            waves.append(wave)
            left = [c for c in left if c not in wave]
        # the applications of one weight are re-fitted together, in the wave of the last
        last = {c: max(i for i, wave in enumerate(waves) for d in self.families.get(c, [c]) if d in wave)
                for c in ready}
        return [w for w in ([c for c in ready if last[c] == i] for i in range(len(waves))) if w]

    def _family_stats(self, cidx: int, stats: dict[int, MomentStats]) -> MomentStats | PooledStats:
        """The statistics consumer ``cidx`` is re-fitted on: its own, or those of every
        application of its weight together (one weight serves them all)."""
        family = self.families.get(cidx)
        return stats[cidx] if family is None else PooledStats([stats[d] for d in family])

    def _fit_once(self, cidxs: list[int], fit: Callable[[int], Refit]) -> dict[int, Refit]:
        """``fit`` of each consumer of ``cidxs``, computed once per family of consumers that
        apply one weight (the first of them stands for the others), in parallel."""
        first: dict[tuple[int, ...], int] = {}
        for c in cidxs:
            first.setdefault(tuple(self.families.get(c, [c])), c)
        fitted = dict(zip(first.values(), parallel_map(fit, list(first.values()), self._blas_threads)))
        return {c: fitted[first[tuple(self.families.get(c, [c]))]] for c in cidxs}

    def _lean_consumers(self, gid: int, keep: int) -> set[int]:
        """The consumers whose statistics a sequential stage of group ``gid``, keeping
        ``keep`` channels, reduces.

        The entropic path works on at most ``max_features`` features per consumer, each
        channel's taps compressed to their leading principal directions
        (``problem.compress``), so the stage takes a wide convolution's statistics in such
        directions (:meth:`collect`'s ``reduce``, the first pass's bases taken again on the
        stage's first batch) rather than on every tap: a Gram product of ``C * r`` instead
        of ``C * s`` features. The re-fit then gets the kept channels' exact statistics in a
        second pass over the stage's cached inputs. Only consumers that read this group
        alone qualify (their whole input is the group's channels), only for the entropic
        method (the baselines keep their exact statistics), and not where ``lean_stages``
        is turned off (the diagnostics in ``tools/`` that score choices on full statistics).
        A group that keeps every channel has nothing to select: its stage takes the exact
        statistics, which the re-fit needs whole, in one pass. A consumer too wide for
        statistics of every feature (:func:`_too_wide`) is always reduced, for every method
        (the baselines compress its terms per channel all the same:
        ``baselines.contributions``).
        """
        consumers = self.analysis.consumers
        wide = {c for c in self.analysis.groups[gid].consumers if _too_wide(consumers[c])}
        if not self.lean_stages or self.config.method != "entropic" or keep >= self.analysis.groups[gid].channels:
            return wide
        return wide | {c for c in self.analysis.groups[gid].consumers
                       if c in self.bases and [s[0] for s in consumers[c].segments] == [gid]}

    def _slicers(self, gid: int, keeps: dict[int, np.ndarray]):
        """Functions that cut a cached tensor of group ``gid`` down to its kept channels
        (at every place the group occupies in it)."""
        counts = self._counts({k: v for k, v in keeps.items() if k != gid})
        layout: dict[str, list[tuple[int, int, int]]] = {}   # tensor -> (offset, group, factor)
        axis: dict[str, int] = {}
        for g in self.analysis.groups:
            for name, offset, factor, channel_axis in g.tensors:
                layout.setdefault(name, []).append((offset, g.gid, factor))
                axis[name] = channel_axis
        slicers = {}
        for name in sorted({t[0] for t in self.analysis.groups[gid].tensors}):
            positions = self.analysis.position_major.get(name)
            pieces, start = [], 0
            for _offset, g, factor in sorted(layout[name]):
                factor = 1 if positions else factor  # position-major: channels first, then their entries
                width = counts[g] * factor
                if g == gid:
                    pieces.append(start + spread(keeps[gid], factor))
                else:
                    pieces.append(np.arange(start, start + width))
                start += width
            idx = np.concatenate(pieces)
            if positions:
                idx = position_columns(idx, positions, start)
            slicers[name] = lambda v, idx=idx, ax=axis[name]: np.take(v, idx, axis=ax)
        return slicers

    def _shrunk(self, gid: int, keeps: dict[int, np.ndarray]) -> bool:
        """Whether group ``gid`` loses channels in ``keeps``."""
        return gid in keeps and len(keeps[gid]) < self.analysis.groups[gid].channels

    def _refit(self, cidx: int, st: MomentStats | PooledStats, keeps: dict[int, np.ndarray], fresh: set[int],
               kept_only: bool = False) -> Refit:
        """Re-fit consumer ``cidx`` on the features it keeps.

        ``st`` holds statistics of the consumer's input in which the groups in ``fresh`` are
        still whole (the others already carry their kept channels only), or with
        ``kept_only`` those of the kept features alone (in the input's order).
        """
        cons = self.analysis.consumers[cidx]
        kept_cols, orig_cols, offset = [], [], 0
        for g, off, length in cons.segments:
            current = np.asarray(keeps[g]) if g in keeps and g not in fresh else np.arange(length)
            chosen = np.asarray(keeps[g]) if g in keeps else np.arange(length)
            position = np.searchsorted(current, chosen)  # where the kept channels sit in x'
            kept_cols.append(spread(offset + position, cons.s))
            orig_cols.append(spread(off + chosen, cons.s))
            offset += len(current)
        theta, bias = consumer_matrix(self.inits, cons)
        kept = np.concatenate(kept_cols)
        if kept_only:
            kept = np.arange(len(kept))
        G, P, prior = st.covariance(kept), st.cross[kept], theta[:, np.concatenate(orig_cols)]
        eps = fixed_ridge(self.config.refit_ridge, st.n, len(kept))
        if eps is None:
            eps = self.auto_ridges[cidx] = auto_ridge(G, P, st.var_y, prior, st.n)
        if thin(st.n, len(kept)):
            self.thin_refits[cidx] = (int(st.n), len(kept))
        omega, new_bias = refit(G, P, st.mean_x[kept], st.mean_y, bias, prior, eps, self._blas_threads)
        return Refit(omega, new_bias)

    # -- validation ------------------------------------------------------------------------
    def validate(self, pruned: onnx.ModelProto) -> dict:
        """Check the pruned model and measure how close it stays on calibration samples."""
        check_model(pruned)
        n = self.validation_samples
        feeds = next(self.validation_data.batches(n))
        names = self.outputs
        if self._reference:
            ref = [np.concatenate(parts)[:n] for parts in zip(*self._reference)]
        else:  # from statistics files: no pass over the original network
            ref = run(make_session(self.model, self.providers, outputs=names), None, feeds)
        if [o.name for o in pruned.graph.output] != [o.name for o in self.model.graph.output]:
            raise EPruneError("internal error: the pruned model's outputs differ from the original's")
        if names != [o.name for o in self.model.graph.output]:
            # the graph outputs are not compared (their size depends on the data): run them once
            _run_pruned(make_session(pruned, self.providers), {k: v[:1] for k, v in feeds.items()})
        got = _run_pruned(make_session(pruned, self.providers, outputs=names), feeds)
        fidelity = {"samples": int(next(iter(feeds.values())).shape[0]), "outputs": {}}
        for name, a, b in zip(names, ref, got):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise EPruneError(f"internal error: output {name!r} changed shape {a.shape} -> {b.shape}")
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))
            entry = {"relative_error": rel}
            if a.ndim == 2 and a.shape[1] > 1:
                entry["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
            fidelity["outputs"][name] = entry
        return fidelity


def _run_pruned(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``run`` on the pruned model, whose failure on samples the original ran on is the
    pruning's (a detector whose pruned network finds no box, and whose post-processing
    cannot take none, for one)."""
    try:
        return run(session, None, feeds)
    except EPruneError as exc:
        raise EPruneError(f"the pruned model fails on calibration samples that the original runs on ({exc}); "
                          "prune less, or --exclude the layers that lead to the failing node") from None


def _reducible(cons: Consumer, budget: int) -> bool:
    """Whether the reduced first pass reduces the taps of consumer ``cons``: a convolution
    with more than ``budget`` input features, where ``budget`` / channels is below its taps,
    and any consumer too wide for statistics of every feature (:func:`_too_wide`)."""
    return (cons.spatial or _too_wide(cons)) and cons.in_channels * cons.s > budget and \
        budget // cons.in_channels < cons.s


def _too_wide(cons: Consumer) -> bool:
    """Whether consumer ``cons`` reads more features than statistics of every feature take
    (``graph.analysis.MAX_CONSUMER_FEATURES``): its statistics are always reduced, and it is re-fitted only
    where its kept features fit (see ``GraphAnalysis.wide``)."""
    return cons.in_channels * cons.s > channel_analysis.MAX_CONSUMER_FEATURES


def _columns(cons: Consumer, channels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The columns of ``channels`` in the rows of a Gemm's or MatMul's current input ``x``
    (N, ...), in the order it holds them (position-major behind a channels-last Flatten)."""
    if cons.positions_last:
        return position_columns(channels, cons.s, int(np.prod(x.shape[1:])) // cons.s)
    return spread(channels, cons.s)


def _from_output(cons: Consumer) -> bool:
    """Whether the original output of ``cons`` is read from onnxruntime's run (a Conv's
    output at the sampled positions) rather than computed from its input rows (a Gemm's:
    one row per image, where the product is cheap)."""
    return cons.spatial


def _at_positions(out: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of a Conv output ``out`` (N, M, H, W) at ``positions`` (N, k) flat indices:
    (N*k, M) float32, image by image, like the im2col rows there."""
    n, m = out.shape[:2]
    picked = out.reshape(n, m, -1)[np.arange(n)[:, None], :, positions]     # (N, k, M)
    return picked.reshape(-1, m).astype(np.float32, copy=False)


def _channels_of(blocks: np.ndarray, unit: int) -> np.ndarray:
    """The sorted channels of blocks of ``unit`` consecutive channels."""
    return spread(np.sort(np.asarray(blocks)), unit)


@checked_arguments
def prune(model, calib=None, config: PruneConfig | None = None, progress: Progress | None = None,
          stats: list | None = None, **options) -> PruneResult:
    """Prune whole channels of an ONNX CNN, choosing them from calibration data.

    Parameters
    ----------
    model : onnx.ModelProto or path (str or os.PathLike) of an .onnx file (never modified);
        bytes are refused (``onnx.load_from_string`` makes them a ModelProto).
    calib : calibration inputs: a path to .npy (single-input model) or .npz (input name ->
        array), an array of shape (N, ...) or a dict of such arrays (N samples on axis 0;
        anything ``numpy.asarray`` takes, such as a CPU torch tensor, counts as an array),
        any other iterable (a list, a generator) of such batches, concatenated on axis 0, or
        an ``onnxruntime.quantization.CalibrationDataReader``.
    config : a :class:`PruneConfig`; or pass its fields as keyword arguments, e.g.
        ``prune("m.onnx", "calib.npy", sparsity=0.5)``; an unknown keyword is refused.
    progress : where progress lines go (``progress.Progress``; None: none).
    stats : instead of ``calib``, a list of paths of statistics files written by
        :func:`calibrate` on disjoint shards of the calibration set, or of the bundles it
        returned; they are added up (one-shot mode), the bundles left as they were.

    Returns
    -------
    PruneResult with ``model`` (the pruned ``onnx.ModelProto``, same inputs and outputs)
    and ``report`` (dict: groups, params and MACs before/after, fidelity, seconds).

    Raises
    ------
    UsageError for an argument of the wrong type or value: before the model is read, except
    for the target (missing, several, of the wrong type or out of range) and the data, which
    are checked once it is read, still before any calibration.
    """
    config = make_config(config, options)  # the target is checked once the model is read (preflight)
    check_model_arg(model)
    check_progress(progress)
    sources, bundle = stats_bundle(calib, stats)
    result = Pruner(model, calib, config, progress, stats=bundle).run()
    return replace(result, inputs=input_files(model, calib, sources))


@checked_arguments
def calibrate(model, calib, config: PruneConfig | None = None, progress: Progress | None = None, **options
              ) -> StatsBundle:
    """The statistics :func:`prune` needs, as a bundle to ``save(path)`` (an .npz) and pass
    to ``prune(model, stats=[...])`` later, alone or with other shards' bundles or files.

    ``model`` and ``calib`` take what :func:`prune` takes. Only ``samples``, ``seed``,
    ``device``, ``batch_size`` and ``positions`` of the config matter: other keyword options
    (a target, a method) would do nothing and are refused, as the command line refuses them,
    while a ``config`` shared with :func:`prune` has its other fields checked, then ignored
    (its ``exclude`` patterns must each match a node, as prune requires). Shards must use
    the same ``seed`` and ``positions``. The statistics cover every group the analysis can
    prune, whatever ``exclude`` says, so one bundle serves any exclusion.
    """
    config = make_config(config, options)  # an unknown option first: a typo gets its "did you mean"
    idle = [name for name in options if name not in CALIBRATE_OPTIONS]
    if idle:
        raise UsageError(f"{idle[0]} does nothing in calibrate, which takes {', '.join(CALIBRATE_OPTIONS)}; "
                         "give it to prune, which reads the statistics")
    if (config.sparsity, config.flops_reduction, config.keep_ratio) != (None, None, None):
        config.target()  # ignored, but checked as prune checks it
    check_model_arg(model)
    check_progress(progress)
    if config.exclude:  # a mistyped name would only be refused by the prune that reads the bundle
        check_matches(as_model(model).graph.node, config.exclude)
    bundle = Pruner(model, calib, replace(config, exclude=()), progress).calibrate()
    return replace(bundle, inputs=input_files(model, calib, None))
