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
    """The geometry of a 2-D Conv with attributes ``attrs``, weight shape ``wshape`` (M, C/g,
    kh, kw), input height and width ``in_hw`` and output shape ``out_shape`` (N, M, H, W;
    None if unknown). ``auto_pad`` SAME_UPPER / SAME_LOWER become the explicit pads that
    keep ``ceil(n / stride)`` outputs, the odd one at the end / the start; VALID none."""
    kh, kw = wshape[2], wshape[3]
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    auto_pad = _auto_pad(attrs)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i, (n_in, k, s, d) in enumerate(zip(in_hw, (kh, kw), strides, dil)):
            n_out = -(-n_in // s)
            total = max(0, (n_out - 1) * s + (k - 1) * d + 1 - n_in)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    out_hw = tuple(out_shape[2:]) if out_shape is not None else None
    return {"kernel": (kh, kw), "strides": tuple(strides), "dilations": tuple(dil),
            "pads": tuple(pads), "in_hw": tuple(in_hw), "out_hw": out_hw}


def transposed_geometry(attrs: dict, wshape: tuple[int, ...], in_hw: tuple[int, ...],
                        out_shape: tuple[int, ...] | None) -> dict | None:
    """The Conv that equals a 2-D ConvTranspose (weight shape ``wshape`` (C, M/g, kh, kw)):
    stride 1 over the input with ``stride - 1`` zeros between pixels, padded by
    ``dilation * (k - 1) - pad`` (plus output_padding at the end), with the kernel flipped
    and its two channel axes swapped. None when the padding is implicit (``auto_pad``,
    ``output_shape``) or the probed ``out_shape`` disagrees."""
    if _auto_pad(attrs) != "NOTSET" or "output_shape" in attrs:
        return None
    kernel = (wshape[2], wshape[3])
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    extra = list(attrs.get("output_padding", [0, 0]))
    eff = [d * (k - 1) for d, k in zip(dil, kernel)]
    conv_pads = [eff[0] - pads[0], eff[1] - pads[1], eff[0] - pads[2] + extra[0], eff[1] - pads[3] + extra[1]]
    out_hw = tuple((n - 1) * s + 1 + conv_pads[i] + conv_pads[i + 2] - eff[i]
                   for i, (n, s) in enumerate(zip(in_hw, strides)))
    if out_shape is None or tuple(out_shape[2:]) != out_hw:
        return None
    return {"kernel": kernel, "strides": (1, 1), "dilations": tuple(dil), "pads": tuple(conv_pads),
            "in_hw": tuple(in_hw), "out_hw": out_hw, "upsample": tuple(strides)}
