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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import UsageError
from ..files import write_atomic
from ..graph.model_io import light_copy, reference_chunks
from .data import CalibrationData
from .sensitivity import gain_candidates
from .stats import MomentStats

FORMAT = "onnx-eprune-stats/1"


def fingerprint(model: onnx.ModelProto) -> str:
    """SHA-256 of the (normalised) model: bundles only merge and apply to the same model.

    Weights left in the input's data file (large models, see ``model_io.reference``) count
    by their bytes, not their file's path, so a moved model keeps its fingerprint."""
    light, sources = light_copy(model, lambda tensor: False)
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
    consumers: dict[int, MomentStats]  # consumer index -> moments of its input
    probe: dict[str, np.ndarray]       # input name -> up to 8 images
    gain_images: dict[str, np.ndarray]  # input name -> images that may measure gains

    @classmethod
    def from_run(cls, model: onnx.ModelProto, seed: int, positions: int | None, data: CalibrationData,
                 consumers: dict[int, MomentStats]) -> "StatsBundle":
        candidates = gain_candidates(data.keys())
        return cls(fingerprint(model), seed, positions, data.samples, consumers,
                   {k: np.asarray(v[:8]) for k, v in data.arrays.items()},
                   {k: np.asarray(v[candidates]) for k, v in data.arrays.items()})

    def merge(self, other: "StatsBundle") -> None:
        """In place: the bundle of both shards' images (which must be disjoint)."""
        if other.model != self.model:
            raise UsageError("statistics files come from different models (or a different model than given)")
        if (other.seed, other.positions) != (self.seed, self.positions):
            raise UsageError("statistics files were computed with different --seed or --positions")
        if set(other.consumers) != set(self.consumers):
            raise UsageError("statistics files cover different layers")
        for c, st in other.consumers.items():
            self.consumers[c].merge(st)
        self.samples += other.samples
        self.gain_images = {k: np.concatenate([v, other.gain_images[k]]) for k, v in self.gain_images.items()}

    def gain_data(self) -> CalibrationData:
        return CalibrationData(dict(self.gain_images))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as .npz."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"format": FORMAT, "model": self.model, "seed": self.seed, "positions": self.positions,
                "samples": self.samples, "consumers": sorted(self.consumers), "inputs": sorted(self.probe)}
        arrays["meta"] = np.array(json.dumps(meta))
        for c, st in self.consumers.items():
            arrays.update(st.to_arrays(f"c{c}."))
        for i, name in enumerate(sorted(self.probe)):
            arrays[f"probe{i}"] = self.probe[name]
            arrays[f"gain{i}"] = self.gain_images[name]
        target = Path(path)
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise UsageError(f"output folder does not exist: {folder}")
        write_atomic(target, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StatsBundle":
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"statistics file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}")
                consumers = {c: MomentStats.from_arrays(f, f"c{c}.") for c in meta["consumers"]}
                names = meta["inputs"]
                probe = {n: f[f"probe{i}"] for i, n in enumerate(names)}
                gains = {n: f[f"gain{i}"] for i, n in enumerate(names)}
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{p} is not an onnx-eprune statistics file ({exc})") from None
        return cls(meta["model"], meta["seed"], meta["positions"], meta["samples"], consumers, probe, gains)


def merge_bundles(paths: list) -> StatsBundle:
    """Load and add up the statistics files ``paths`` (or bundles already loaded; a single
    bundle is returned as it is, several are added into a copy of the first)."""
    bundles = [p if isinstance(p, StatsBundle) else StatsBundle.load(p) for p in paths]
    if len(bundles) == 1:
        return bundles[0]
    bundle = copy.deepcopy(bundles[0]) if isinstance(paths[0], StatsBundle) else bundles[0]
    for other in bundles[1:]:
        bundle.merge(other)
    return bundle
