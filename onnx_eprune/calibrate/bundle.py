"""Calibration statistics as a file: computed once (or per shard), merged by addition.

``onnx-eprune calibrate`` writes a bundle; ``onnx-eprune prune --stats A --stats B`` merges
bundles of disjoint shards of a calibration set and prunes in one-shot mode from them. The
merged moments equal those of one run over all the images (Chan's parallel update), and the
sampled conv positions and the images that measure layer sensitivities are chosen by each
image's content, so the result does not depend on how the images were split.

A bundle holds, besides the moments of every consumer's input, up to 8 images to probe
shapes and validate the output, and the shard's images that may measure sensitivities
(about one in eight, see ``sensitivity.gain_candidates``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import UsageError
from ..files import output_path, same_file, write_atomic
from ..graph.model_io import all_tensors, light_copy, reference_chunks
from .data import STATS_MEMBER, CalibrationData
from .sensitivity import gain_candidates
from .stats import MomentStats

FORMAT = "onnx-eprune-stats/1"


def fingerprint(model: onnx.ModelProto) -> str:
    """SHA-256 of the (normalised) model: bundles only merge and apply to the same model.

    Weights left in the input's data file (large models, see ``model_io.reference``) count
    by their bytes, not their file's path, so a moved model keeps its fingerprint."""
    light, sources = light_copy(model, lambda tensor: False)
    for tensor in all_tensors(light.graph):
        # set to DEFAULT where the weights were read from a data file, absent where they were inline
        if tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    digest = hashlib.sha256(light.SerializeToString(deterministic=True))
    for index in sorted(sources):
        for chunk in reference_chunks(sources[index]):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StatsBundle:
    model: str                         # fingerprint
    seed: int
    positions: int | None
    samples: int
    # arrays, left out of the repr (megabytes of moments)
    consumers: dict[int, MomentStats] = field(repr=False)    # consumer index -> moments of its input
    probe: dict[str, np.ndarray] = field(repr=False)         # input name -> up to 8 images
    gain_images: dict[str, np.ndarray] = field(repr=False)   # input name -> images that may measure gains
    # the files it was computed from, which save() must not overwrite
    inputs: tuple[Path, ...] = field(default=(), repr=False)
    # the statistics files (or "bundle #i") it was loaded and merged from, for messages
    sources: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_run(cls, model: onnx.ModelProto, seed: int, positions: int | None, data: CalibrationData,
                 consumers: dict[int, MomentStats]) -> "StatsBundle":
        candidates = gain_candidates(data.keys())
        return cls(fingerprint(model), seed, positions, data.samples, consumers,
                   {k: np.asarray(v[:8]) for k, v in data.arrays.items()},
                   {k: np.asarray(v[candidates]) for k, v in data.arrays.items()})

    def merge(self, other: "StatsBundle") -> None:
        """In place: the bundle of both shards' images (which must be disjoint); the images
        kept in content-key order, whatever the order of the shards."""
        self.compatible(other)
        if set(other.consumers) != set(self.consumers):
            raise UsageError("statistics files cover different layers")
        for c, st in other.consumers.items():
            self.consumers[c].merge(st)
        self.samples += other.samples
        images = CalibrationData({k: np.concatenate([v, other.gain_images[k]]) for k, v in self.gain_images.items()})
        order = np.argsort(images.keys(), kind="stable")
        self.gain_images = {k: np.ascontiguousarray(v[order]) for k, v in images.arrays.items()}

    def described(self) -> str:
        """How messages name the files the bundle comes from."""
        return f"the statistics ({', '.join(self.sources)})" if self.sources else "the statistics"

    def gain_data(self) -> CalibrationData:
        return CalibrationData(dict(self.gain_images))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as .npz; :class:`UsageError` for a path in a missing folder or
        one of :attr:`inputs` (the model or calibration file it was computed from),
        EPruneError with the OS's reason for one that cannot be written (a read-only folder,
        a full disk)."""
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        for source in self.inputs:
            if same_file(Path(path), source):
                raise UsageError(f"refusing to overwrite {source}, an input of this run; save the statistics "
                                 "to another path")
        output_path(path)
        arrays: dict[str, np.ndarray] = {}
        for c, st in self.consumers.items():
            arrays.update(st.to_arrays(f"c{c}."))
        for i, name in enumerate(sorted(self.probe)):
            arrays[f"probe{i}"] = self.probe[name]
            arrays[f"gain{i}"] = self.gain_images[name]
        meta = {"format": FORMAT, "model": self.model, "seed": self.seed, "positions": self.positions,
                "samples": self.samples, "consumers": sorted(self.consumers), "inputs": sorted(self.probe)}
        arrays["meta"] = np.array(json.dumps({**meta, "digest": _digest(meta, arrays)}))
        write_atomic(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StatsBundle":
        p = Path(path)
        f = _open(p)
        try:
            with f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT!r}")
            consumers = {c: MomentStats.from_arrays(arrays, f"c{c}.") for c in meta["consumers"]}
            names = meta["inputs"]
            probe = {n: arrays[f"probe{i}"] for i, n in enumerate(names)}
            gains = {n: arrays[f"gain{i}"] for i, n in enumerate(names)}
            digest = meta.pop("digest")
        except Exception as exc:  # a missing key, a damaged member, a malformed meta record
            raise _damaged(p, exc) from None
        bundle = cls(meta["model"], meta["seed"], meta["positions"], meta["samples"], consumers, probe, gains)
        bundle._check(p)
        if digest != _digest(meta, arrays):  # after the checks that name what is wrong
            raise UsageError(f"{p} was edited or damaged: its contents do not match the digest it was written with; "
                             "write it again with 'onnx-eprune calibrate'")
        return bundle

    @classmethod
    def head(cls, path: str | os.PathLike) -> "StatsBundle":
        """The bundle of file ``path`` without its moments (``consumers`` empty): its record
        and images only, read without the layers' moments, which :meth:`load` reads and
        checks. Enough to tell shards apart and find files that cannot add up."""
        p = Path(path)
        f = _open(p)
        try:
            with f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT!r}")
                names = meta["inputs"]
                probe = {n: f[f"probe{i}"] for i, n in enumerate(names)}
                gains = {n: f[f"gain{i}"] for i, n in enumerate(names)}
            return cls(meta["model"], meta["seed"], meta["positions"], meta["samples"], {}, probe, gains)
        except Exception as exc:
            raise _damaged(p, exc) from None

    def compatible(self, other: "StatsBundle") -> None:
        """:class:`UsageError` unless ``other``'s statistics can add up with these: the same
        model, seed and positions, inputs of the same shapes."""
        if other.model != self.model:
            raise UsageError("statistics files come from different models (or a different model than given)")
        if (other.seed, other.positions) != (self.seed, self.positions):
            raise UsageError("statistics files were computed with different --seed or --positions")
        for name, images in self.probe.items():
            if other.probe[name].shape[1:] != images.shape[1:]:
                raise UsageError(f"statistics files were computed on inputs of other shapes ({name!r}: "
                                 f"{_dims(other.probe[name])} and {_dims(images)}); calibrate every shard at one size")

    def _check(self, path: Path) -> None:
        """Refuse a file whose numbers cannot be a run's (edited, or damaged in a way the
        format does not notice): the moments of each layer must agree in shape, and count
        samples."""
        if not isinstance(self.samples, int) or self.samples < 1:
            raise UsageError(f"{path} is damaged: it counts {self.samples!r} samples; write it again with "
                             "'onnx-eprune calibrate'")
        for c, st in self.consumers.items():
            d, m = st.mean_x.shape[:1], st.mean_y.shape[:1]
            shapes = (st.mean_x.shape, st.mean_y.shape, st.cxx.shape, st.cxy.shape, st.syy.shape)
            if st.n < 1 or shapes != (d, m, d + d, d + m, m) or not d or not m:
                raise UsageError(f"{path} is damaged: the moments of layer {c} have shapes {shapes} over {st.n} rows; "
                                 "write it again with 'onnx-eprune calibrate'")
            if not st.finite():  # calibrate refuses to write moments that are not
                raise UsageError(f"{path} is damaged: the moments of layer {c} hold Inf or NaN; write it again with "
                                 "'onnx-eprune calibrate'")


def _open(p: Path) -> np.lib.npyio.NpzFile:
    """Statistics file ``p`` opened (its arrays read on access); :class:`UsageError` for a
    path that is no such file."""
    if p.is_dir():
        raise UsageError(f"statistics file {p} is a directory; give the .npz files that 'onnx-eprune calibrate' "
                         "wrote")
    if not p.is_file():
        raise UsageError(f"statistics file not found: {p}")
    try:
        f = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy and zipfile raise several unrelated types on a damaged file
        raise UsageError(f"{p} is not an onnx-eprune statistics file, or a damaged one ({type(exc).__name__}: "
                         f"{exc}); write it again with 'onnx-eprune calibrate'") from None
    if isinstance(f, np.ndarray):
        raise UsageError(f"{p} holds a single array, not statistics written by 'onnx-eprune calibrate' "
                         "(calibration data goes to --calib)")
    if not any(STATS_MEMBER.fullmatch(k) for k in f.files):
        with f:
            raise UsageError(f"{p} is not an onnx-eprune statistics file: it holds arrays ({', '.join(f.files[:4])}"
                             f"{', ...' if len(f.files) > 4 else ''}) and no record (calibration data goes to "
                             "--calib)")
    return f


def _damaged(p: Path, exc: Exception) -> UsageError:
    return UsageError(f"{p} is not an onnx-eprune statistics file of this version, or a damaged one "
                      f"({type(exc).__name__}: {exc}); write it again with 'onnx-eprune calibrate'")


def _digest(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of a file's record and arrays (names, dtypes, shapes and bytes): an edited
    count, moment or seed no longer matches it."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _image_digests(images: dict[str, np.ndarray]) -> list[str]:
    """One digest per sample of ``images`` (its rows of every input)."""
    n = len(next(iter(images.values()))) if images else 0
    rows = []
    for i in range(n):
        digest = hashlib.sha256()
        for key in sorted(images):
            digest.update(np.ascontiguousarray(images[key][i]).tobytes())
        rows.append(digest.hexdigest())
    return rows


def _dims(images: np.ndarray) -> str:
    return "x".join(str(d) for d in images.shape[1:])


def merge_bundles(paths: list) -> StatsBundle:
    """Load and add up the statistics files ``paths`` (or bundles already loaded, left as
    they were: the sum goes into a copy). The same shard given twice (one file, or copies
    of it) is refused: its samples would count twice. Every file's record is checked
    against the others' before any moments are read; the files are then read one at a
    time, in an order set by their contents (the sum is the same bytes in any order of
    ``paths``), each added up and let go, so memory holds two files' moments at most."""
    names = [str(p) if not isinstance(p, StatsBundle) else f"bundle #{i + 1}" for i, p in enumerate(paths)]
    heads = [p if isinstance(p, StatsBundle) else StatsBundle.head(p) for p in paths]
    digests = _refuse_repeats(names, heads)
    for name, head in zip(names[1:], heads[1:]):
        try:
            heads[0].compatible(head)
        except UsageError as exc:
            raise UsageError(f"{name} does not add up with {names[0]}: {exc}") from None
    order = sorted(range(len(paths)), key=digests.__getitem__)
    bundle: StatsBundle | None = None
    for i in order:
        other = paths[i] if isinstance(paths[i], StatsBundle) else StatsBundle.load(paths[i])
        if bundle is None:
            bundle, first = (copy.deepcopy(other) if other is paths[i] else other), i
        else:
            try:
                bundle.merge(other)
            except UsageError as exc:
                raise UsageError(f"{names[i]} does not add up with {names[first]}: {exc}") from None
        del other  # its moments go before the next file's are read
    return replace(bundle, sources=tuple(names))


def _refuse_repeats(names: list[str], bundles: list[StatsBundle]) -> list[str]:
    """Refuse two bundles of the same samples. The images kept for the sensitivities (chosen
    and ordered by their content: the same in any order of the samples), with the sample
    count, identify a shard: disjoint shards share none. Returns each bundle's identity
    (a digest)."""
    seen: dict[str, int] = {}
    owner: dict[str, int] = {}  # the digest of each image kept for the sensitivities -> its bundle
    for i, bundle in enumerate(bundles):
        digest = hashlib.sha256(str(bundle.samples).encode())
        for key in sorted(bundle.gain_images):
            digest.update(np.ascontiguousarray(bundle.gain_images[key]).tobytes())
        first = seen.setdefault(digest.hexdigest(), i)
        if first != i:
            raise UsageError(f"statistics files {names[first]} and {names[i]} hold the same shard (one file given "
                             "twice, or a copy); give each shard once, or its samples count twice")
        for image in _image_digests(bundle.gain_images):
            first = owner.setdefault(image, i)
            if first != i:
                # shards that overlap (one a part of another) share these: drawn by content
                raise UsageError(f"statistics files {names[first]} and {names[i]} share calibration images; give "
                                 "disjoint shards, or the shared samples count twice (a set with duplicate "
                                 "images: calibrate it in one run)")
    return list(seen)
