"""The geometry of a convolution consumer: kernel, strides, dilations and explicit pads at
the probed input size, as the statistics' patches (``calibrate.stats.ConvGeometry``) read
them. A ConvTranspose is described as the Conv it equals.
"""

from __future__ import annotations


def _auto_pad(attrs: dict) -> str:
    value = attrs.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else value


def conv_geometry(attrs: dict, wshape: tuple[int, ...], in_hw: tuple[int, ...],
                  out_shape: tuple[int, ...] | None) -> dict:
    """The geometry of a 1-, 2- or 3-D Conv with attributes ``attrs``, weight shape
    ``wshape`` (M, C/g, *kernel), input spatial size ``in_hw`` (L; H, W; or D, H, W) and
    output shape ``out_shape`` (N, M, *spatial; None if unknown). ``auto_pad`` SAME_UPPER /
    SAME_LOWER become the explicit pads that keep ``ceil(n / stride)`` outputs, the odd one
    at the end / the start; VALID none. Pads are in ONNX order: every axis' start, then
    every axis' end."""
    kernel = tuple(wshape[2:])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    auto_pad = _auto_pad(attrs)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * nd
        for i, (n_in, k, s, d) in enumerate(zip(in_hw, kernel, strides, dil)):
            n_out = -(-n_in // s)
            total = max(0, (n_out - 1) * s + (k - 1) * d + 1 - n_in)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * 2 * nd
    out_hw = tuple(out_shape[2:]) if out_shape is not None else None
    return {"kernel": kernel, "strides": tuple(strides), "dilations": tuple(dil),
            "pads": tuple(pads), "in_hw": tuple(in_hw), "out_hw": out_hw}


def implicit_padding(attrs: dict) -> bool:
    """Whether a ConvTranspose's pads are those its ``auto_pad`` or ``output_shape`` stand for."""
    return _auto_pad(attrs) != "NOTSET" or "output_shape" in attrs


def transposed_geometry(attrs: dict, wshape: tuple[int, ...], in_hw: tuple[int, ...],
                        out_shape: tuple[int, ...] | None) -> dict | None:
    """The Conv that equals a 1-, 2- or 3-D ConvTranspose (weight shape ``wshape`` (C, M/g,
    *kernel)): stride 1 over the input with ``stride - 1`` zeros between pixels, padded by
    ``dilation * (k - 1) - pad`` (plus output_padding at the end), with the kernel flipped
    and its two channel axes swapped. Implicit pads (``auto_pad``, ``output_shape``) are
    those :func:`_implicit_transposed_pads` gives. None when they cannot be told or the
    probed ``out_shape`` disagrees."""
    kernel = tuple(wshape[2:])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    extra = list(attrs.get("output_padding", [0] * nd))
    eff = [d * (k - 1) for d, k in zip(dil, kernel)]
    if implicit_padding(attrs):
        pads = _implicit_transposed_pads(attrs, eff, strides, extra, in_hw)
        if pads is None:
            return None
    else:
        pads = list(attrs.get("pads", [0] * 2 * nd))
    conv_pads = [eff[i] - pads[i] for i in range(nd)] + [eff[i] - pads[i + nd] + extra[i] for i in range(nd)]
    out_hw = tuple((n - 1) * s + 1 + conv_pads[i] + conv_pads[i + nd] - eff[i]
                   for i, (n, s) in enumerate(zip(in_hw, strides)))
    if out_shape is None or tuple(out_shape[2:]) != out_hw:
        return None
    return {"kernel": kernel, "strides": (1,) * nd, "dilations": tuple(dil), "pads": tuple(conv_pads),
            "in_hw": tuple(in_hw), "out_hw": out_hw, "upsample": tuple(strides)}


def _implicit_transposed_pads(attrs: dict, eff: list[int], strides: list[int], extra: list[int],
                              in_hw: tuple[int, ...]) -> list[int] | None:
    """The pads (ONNX order) that a ConvTranspose's ``auto_pad`` or ``output_shape`` stand
    for at input size ``in_hw``, ``eff`` its dilated kernel extents less one: the spec's
    ``total_padding = stride * (n - 1) + output_padding + eff + 1 - output size``, the
    output size ``output_shape`` or, for SAME_UPPER / SAME_LOWER, ``n * stride``; the odd
    pad at the end for SAME_UPPER, at the start otherwise (as onnxruntime splits it); VALID
    none. None for an ``output_shape`` that has not one entry per spatial axis or comes with
    explicit pads, and for a negative total (more outputs than the input gives, which
    onnxruntime either refuses or fills otherwise)."""
    nd = len(eff)
    auto_pad = _auto_pad(attrs)
    if auto_pad == "VALID" and "output_shape" not in attrs:
        return [0] * 2 * nd
    if "output_shape" in attrs:
        if "pads" in attrs or len(attrs["output_shape"]) != nd:
            return None
        sizes = list(attrs["output_shape"])
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = [n * s for n, s in zip(in_hw, strides)]
    else:
        return None
    totals = [s * (n - 1) + x + e + 1 - size for n, s, x, e, size in zip(in_hw, strides, extra, eff, sizes)]
    if any(t < 0 for t in totals):
        return None
    if auto_pad == "SAME_UPPER":
        return [t // 2 for t in totals] + [t - t // 2 for t in totals]
    return [t - t // 2 for t in totals] + [t // 2 for t in totals]
