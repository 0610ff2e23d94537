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


def transposed_geometry(attrs: dict, wshape: tuple[int, ...], in_hw: tuple[int, ...],
                        out_shape: tuple[int, ...] | None) -> dict | None:
    """The Conv that equals a 1-, 2- or 3-D ConvTranspose (weight shape ``wshape`` (C, M/g,
    *kernel)): stride 1 over the input with ``stride - 1`` zeros between pixels, padded by
    ``dilation * (k - 1) - pad`` (plus output_padding at the end), with the kernel flipped
    and its two channel axes swapped. None when the padding is implicit (``auto_pad``,
    ``output_shape``) or the probed ``out_shape`` disagrees."""
    if _auto_pad(attrs) != "NOTSET" or "output_shape" in attrs:
        return None
    kernel = tuple(wshape[2:])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    extra = list(attrs.get("output_padding", [0] * nd))
    eff = [d * (k - 1) for d, k in zip(dil, kernel)]
    conv_pads = [eff[i] - pads[i] for i in range(nd)] + [eff[i] - pads[i + nd] + extra[i] for i in range(nd)]
    out_hw = tuple((n - 1) * s + 1 + conv_pads[i] + conv_pads[i + nd] - eff[i]
                   for i, (n, s) in enumerate(zip(in_hw, strides)))
    if out_shape is None or tuple(out_shape[2:]) != out_hw:
        return None
    return {"kernel": kernel, "strides": (1,) * nd, "dilations": tuple(dil), "pads": tuple(conv_pads),
            "in_hw": tuple(in_hw), "out_hw": out_hw, "upsample": tuple(strides)}
