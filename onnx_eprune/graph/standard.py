"""The form every command reads a model in before it analyses it."""

from __future__ import annotations

from typing import NamedTuple

import onnx

from .contrib import Fusion, unfuse
from .model_io import Normalized, normalize, order_by_wiring


class StandardForm(NamedTuple):
    """What :func:`standard_form` did that writing the pruned model undoes."""

    normalized: Normalized  # the copies, folds and narrowed weights of :func:`normalize`
    fusions: list[Fusion]   # the fused nodes written as standard ops, for ``fuse_again``
    listing: list[str]      # the nodes' order before ``order_by_wiring``, for ``restore_order``


def standard_form(model: onnx.ModelProto) -> StandardForm:
    """Put ``model`` in place into the form the analysis reads: constant weights in
    initializers of their own (:func:`normalize`), onnxruntime's fused layers as the
    standard ops they compute (:func:`unfuse`), the nodes in an order of their wiring
    (:func:`order_by_wiring`: after unfusing, so that a fused layer's parts sit where the
    standard graph's do)."""
    normalized = normalize(model)
    fusions = unfuse(model)
    return StandardForm(normalized, fusions, order_by_wiring(model))
