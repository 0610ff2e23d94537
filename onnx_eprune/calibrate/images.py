"""Calibration inputs from a folder of images, or (for smoke tests only) random noise;
held-out inputs and their class indices from a folder of class folders.

The target shape comes from the model's single graph input: its layout (NCHW or NHWC),
channel count (1 = grayscale, 3 = colour) and, where the model fixes them, its height and
width. Each image is decoded with Pillow, converted to RGB (or 8-bit grayscale), resized
with bilinear filtering and normalised as ``(pixel * scale - mean) / std``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from ..errors import TooManyImages, UsageError
from ..graph.model_io import fixed_dims, unbatched_inputs
from ..signals import signals_held
from .data import model_inputs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
_RESIZE_ALIASES = {"crop": "short-side-center-crop", "short-side-center-crop": "short-side-center-crop",
                   "stretch": "stretch"}
_CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1}


def load_image_folder(directory, model: onnx.ModelProto, *, size=None, scale: float = 1 / 255,
                      mean: float | Sequence[float] = (0.0,), std: float | Sequence[float] = (1.0,),
                      layout: str | None = None, channels: str | None = None,
                      resize: str = "short-side-center-crop", limit: int | None = None) -> np.ndarray:
    """Read every image under ``directory`` into one calibration array for ``model``.

    Parameters
    ----------
    directory : str or path-like
        Folder searched recursively for ``.png .jpg .jpeg .bmp .webp .tif .tiff`` files
        (suffix case ignored; files and folders whose names start with ``.`` are skipped;
        linked folders are followed, but not a link to a folder it lies in). Images are
        taken in the order of their path relative to ``directory``, so the result does not
        depend on the file system. Unreadable files are skipped with a logged warning.
    model : onnx.ModelProto
        Model with exactly one real graph input of rank 4 (initializers listed as inputs do
        not count); its shape gives the layout, the channel count and, where fixed, the
        height and width of the result.
    size : int or (int, int), optional
        Target ``(height, width)`` in pixels (an int means a square). Required when the
        model's spatial dimensions are dynamic; where the model fixes them, it must agree.
    scale : float, default 1/255
        Factor applied to the 8-bit pixel values (0..255).
    mean, std : float or sequence of float, default 0 and 1
        Subtracted from and divided into the scaled values, ``(pixel * scale - mean) / std``;
        one value for all channels or one per channel, in the order of ``channels``.
    layout : {"NCHW", "NHWC"}, optional
        Axis order of the model input. By default inferred from which of axes 1 and 3 has
        size 1 or 3 (NCHW when both or neither do).
    channels : {"RGB", "BGR", "GRAY"}, optional
        Channel order; by default GRAY for a 1-channel input and RGB for 3 channels. GRAY
        converts with Pillow's ``"L"`` mode (ITU-R 601-2 luma).
    resize : {"short-side-center-crop", "crop", "stretch"}, default "short-side-center-crop"
        ``"short-side-center-crop"`` (alias ``"crop"``) scales the image, keeping its aspect
        ratio, until it covers the target, then crops the centre; ``"stretch"`` resizes to
        the target directly. Both filter bilinearly.
    limit : int, optional
        Read at most this many images, spread over the folder: the files, in path order,
        are cut into ``limit`` runs of consecutive ones, and the first readable image of
        each run is read (so a folder of class folders gives every class its share).

    Returns
    -------
    ndarray of float32, shape (N, C, H, W) for NCHW or (N, H, W, C) for NHWC
        N is the number of readable images (at most ``limit``).

    Raises
    ------
    UsageError
        Pillow missing; directory missing, not a directory, or without readable images;
        a model with several inputs or a non-image input shape; dynamic height or width
        without ``size``; a mean or std of the wrong length, or a zero std.
    TooManyImages
        (a UsageError) The images, decoded, would take more memory than is available.
    """
    return _read_images(list_images(directory), directory, model, size=size, scale=scale, mean=mean, std=std,
                        layout=layout, channels=channels, resize=resize, limit=limit)[0]


def load_labelled_image_folder(directory, model: onnx.ModelProto, *, size=None, scale: float = 1 / 255,
                               mean: float | Sequence[float] = (0.0,), std: float | Sequence[float] = (1.0,),
                               layout: str | None = None, channels: str | None = None,
                               resize: str = "short-side-center-crop", limit: int | None = None
                               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a folder of labelled images: one subfolder per class (the layout of
    torchvision's ``ImageFolder``: ``val/cat/1.jpg``, ``val/dog/7.png``).

    The class index of an image is the position of its subfolder's name among the sorted
    names of every subfolder of ``directory`` (``ImageFolder``'s rule: ``"10"`` comes
    before ``"2"``), also of subfolders without images, so that each keeps its index.
    Images inside a class folder are read recursively, in path order, with the preprocessing
    of :func:`load_image_folder` (same parameters, ``limit`` too: a limited read takes
    every class's share); an unreadable one is skipped with a logged warning, and so is its
    label.

    Returns
    -------
    images : ndarray of float32, (N, C, H, W) for NCHW or (N, H, W, C) for NHWC
    labels : ndarray of int64, (N,)
        The class index of each image.
    classes : list of str
        The class folder names; ``classes[k]`` is class ``k``.

    Raises
    ------
    UsageError
        As :func:`load_image_folder`; also for image files directly in ``directory``
        (outside every class folder), which have no class.
    """
    files = list_images(directory, "--data-images")
    root = Path(directory)
    loose = [f for f in files if f.parent == root]
    if loose:
        raise UsageError(f"{loose[0]} is directly in {root}, outside every class folder; put each image in the "
                         "subfolder of its class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    _check_class_count(model, classes, directory)
    index = {name: k for k, name in enumerate(classes)}
    images, read = _read_images(files, directory, model, size=size, scale=scale, mean=mean, std=std, layout=layout,
                                channels=channels, resize=resize, limit=limit)
    labels = np.array([index[path.relative_to(root).parts[0]] for path in read], dtype=np.int64)
    by_value = sorted(classes, key=int) if all(name.isdigit() for name in classes) else classes
    moved = next((k for k, (a, b) in enumerate(zip(classes, by_value)) if a != b), None)
    if moved is not None:  # a user who named the folders by class index may expect their values
        log.warning("the class folders of %s are numbers, taken in name order as torchvision's ImageFolder takes "
                    "them, not by value: folder %s is class %d", directory, classes[moved], moved)
    return images, labels, classes


def _check_class_count(model: onnx.ModelProto, classes: list[str], directory) -> None:
    """Refuse more class folders than the classes ``model``'s first output scores, where its
    shape says (accuracy compares that output); warn of fewer: folder k is taken as class k,
    which is wrong when the folders are some of the classes."""
    dims = fixed_dims(model.graph.output[0]) if model.graph.output else None
    scored = dims[1] if dims is not None and len(dims) == 2 else None
    if scored is None:
        return
    if len(classes) > scored:
        raise UsageError(f"{directory} has {len(classes)} class folders, but the model's first output scores "
                         f"{scored} classes")
    if len(classes) < scored:
        log.warning("%s has %d class folders and the model scores %d classes: the k-th folder in name order is "
                    "taken as class k, which is wrong if the folders are only some of the classes (give --labels "
                    "then)", directory, len(classes), scored)


def _read_images(files: list[Path], directory, model: onnx.ModelProto, *, size, scale, mean, std, layout, channels,
                 resize, limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """The images of ``files`` (found under ``directory``) as one array for ``model``, and
    the files they came from; see :func:`load_image_folder`. With ``limit``, the files are
    cut into ``limit`` runs of consecutive paths and the first readable image of each run is
    read: a sample spread over the whole folder (each class folder gets its share), where
    the first ``limit`` paths would all come from the first folders."""
    Image = _pillow()
    shape = image_shape(model, size=size, layout=layout, channels=channels)
    layout, channels, (h, w) = shape["layout"], shape["channels"], shape["size"]
    c = _CHANNELS[channels]
    mean_v = _per_channel(mean, c, "mean", channels)
    std_v = _per_channel(std, c, "std", channels)
    if np.any(std_v == 0):
        raise UsageError("--std must not be zero")
    policy = _RESIZE_ALIASES.get(resize)
    if policy is None:
        raise UsageError(f"resize policy must be one of crop, short-side-center-crop, stretch, not {resize!r}")
    if limit is not None and limit < 1:
        raise UsageError(f"the number of images to read must be at least 1, not {limit}")
    count = len(files) if limit is None else min(limit, len(files))
    edges = [len(files) * i // count for i in range(count + 1)]
    needed = count * c * h * w * 4
    available = _available_memory()
    if available is not None and needed > available:
        raise TooManyImages(directory, count, needed, available)
    # decoded straight into the result, in the model's layout: no second copy of the images
    batch = np.empty((count, c, h, w) if layout == "NCHW" else (count, h, w, c), np.float32)
    read, skipped = [], 0
    for start, stop in zip(edges[:-1], edges[1:]):
        for path in files[start:stop]:
            try:
                with Image.open(path) as img:
                    img = _eight_bit(_oriented(img), Image)
                    img = img.convert("L" if channels == "GRAY" else "RGB")
                    img = _resize(img, (h, w), policy, Image)
                    pixels = np.asarray(img, dtype=np.float32)
            except Exception as exc:  # Pillow raises many unrelated types on broken files
                skipped += 1
                log.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)
                continue
            pixels = pixels[:, :, None] if channels == "GRAY" else pixels[:, :, ::-1] if channels == "BGR" else pixels
            pixels = (pixels * np.float32(scale) - mean_v) / std_v
            batch[len(read)] = pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels
            read.append(path)
            break
    if not read:
        raise UsageError(f"none of the {len(files)} image files under {directory} could be read")
    batch = batch[:len(read)]
    log.info("read %d images from %s%s: %s %s %s", len(read), directory,
             f" ({skipped} unreadable skipped)" if skipped else "", "x".join(map(str, batch.shape)), layout,
             channels)
    return batch, read


def _available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable), or
    None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def random_calibration(model: onnx.ModelProto, n: int, seed: int = 0, *, size=None) -> dict[str, np.ndarray]:
    """Standard-normal noise in the shape of every model input. For smoke tests only.

    Pruning chooses channels from the statistics of what the network computes on its
    calibration inputs; noise has none of the structure of real inputs, so a model pruned
    on it loses far more accuracy than one pruned on real samples.

    Parameters
    ----------
    model : onnx.ModelProto
    n : int
        Number of samples (axis 0 of every array).
    seed : int, default 0
        Seed of the numpy Generator.
    size : int or (int, int), optional
        Height and width for a rank-4 image input whose spatial dimensions are dynamic.

    Returns
    -------
    dict of str to ndarray of float32
        One array per real graph input, shape ``(n, ...)`` with the model's fixed
        dimensions after the first.
    """
    if n < 1:
        raise UsageError(f"the number of random samples must be at least 1, not {n}")
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model_inputs(model):
        dims = batched_dims(model, vi)
        if dims is None:
            raise UsageError(f"input {vi.name!r} has no declared shape; random calibration needs one")
        dims = [n] + dims[1:]
        if any(d is None for d in dims) and len(dims) == 4 and size is not None:
            nhwc = dims[3] in (1, 3) and dims[1] not in (1, 3)
            spatial = (1, 2) if nhwc else (2, 3)
            for axis, want in zip(spatial, _size(size)):
                if dims[axis] is None:
                    dims[axis] = want
        if any(d is None for d in dims):
            raise UsageError(f"input {vi.name!r} has dynamic dimensions {_fmt(dims)}; random calibration needs "
                             "fixed ones (give --size for the height and width of an image input)")
        out[vi.name] = rng.standard_normal(dims, dtype=np.float32)
    return out


def image_shape(model: onnx.ModelProto, *, size=None, layout: str | None = None,
                channels: str | None = None) -> dict:
    """The layout, channel order and ``(height, width)`` that ``model``'s single input takes.

    Returns a dict with ``"name"`` (the input name), ``"layout"`` ("NCHW" or "NHWC"),
    ``"channels"`` ("RGB", "BGR" or "GRAY") and ``"size"`` ((height, width) in pixels).
    See :func:`load_image_folder` for the parameters and the rules.
    """
    inputs = model_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise UsageError(f"the model has {len(inputs)} inputs ({names}); images can feed only a single-input model: "
                         "give an .npz with one array per input name instead")
    dims = fixed_dims(inputs[0])
    if dims is not None and len(dims) == 3:  # one image, (3, H, W), without a batch axis
        dims = batched_dims(model, inputs[0])
    return _image_shape(inputs[0], dims, size=size, layout=layout, channels=channels)


def batched_dims(model: onnx.ModelProto, vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """The dims of input ``vi`` with a batch axis first (None where dynamic): as declared,
    or, for an input without one (one (3, H, W) image: see ``unbatched_inputs``), with a
    dynamic one put in front. None when the input declares no shape."""
    dims = fixed_dims(vi)
    if dims is None or vi.name not in unbatched_inputs(model):
        return dims
    return [None] + dims


def list_images(directory, option: str = "--calib-images") -> list[Path]:
    """Image files under ``directory``, recursively, sorted by relative path (see
    :func:`load_image_folder`). Raises UsageError when there are none (naming the option
    ``option`` where it is given a file)."""
    root = Path(directory)
    if not root.exists():
        raise UsageError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UsageError(f"{option} expects a folder of images, not a file: {root}")
    found = []
    # linked folders are followed (a class tree of links into a dataset), except a link back
    # to a folder it lies in, which would be walked without end
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _loops(Path(folder) / d)]
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = Path(folder) / name
                found.append((path.relative_to(root).parts, path))
    if not found:
        raise UsageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return [path for _, path in sorted(found)]


# -- helpers ----------------------------------------------------------------------------
def _loops(folder: Path) -> bool:
    """Whether ``folder`` is a link to itself or to a folder it lies in."""
    if not folder.is_symlink():
        return False
    target = folder.resolve()
    return any(target == parent.resolve() for parent in folder.parents)


def _pillow():
    try:
        with signals_held():  # see signals.py: an interrupted extension import fails as if missing
            from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install pillow") from None
    return Image


def _oriented(img):
    """Apply the EXIF orientation tag, as photo viewers do (no-op without one)."""
    try:
        from PIL import ImageOps

        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _eight_bit(img, Image):
    """A 16-bit grayscale image (PNG, TIFF: Pillow's "I;16" modes, or "I" holding values
    above 255) scaled to the 0..255 range of the 8-bit images the pixel scale expects;
    Pillow's own conversion would clip every value above 255 to white."""
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    pixels = np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I;16") or pixels.max(initial=0) > 255:
        pixels = np.round(pixels / 257)
    return Image.fromarray(pixels, "F")


def _resize(img, target: tuple[int, int], policy: str, Image):
    h, w = target
    src_w, src_h = img.size
    if (src_h, src_w) == (h, w):
        return img
    if policy == "stretch":
        return img.resize((w, h), Image.BILINEAR)
    f = max(h / src_h, w / src_w)  # scale at which the image just covers the target
    # the centred part of the source that lands in the target; w / f can come out a hair
    # over src_w (770x440 to 224: top = -2.8e-14), and Pillow refuses a box outside the image
    box_w, box_h = min(w / f, src_w), min(h / f, src_h)
    left, top = max((src_w - box_w) / 2, 0.0), max((src_h - box_h) / 2, 0.0)
    if f == 1.0 and left == int(left) and top == int(top):
        return img.crop((int(left), int(top), int(left) + w, int(top) + h))
    return img.resize((w, h), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))


def _image_shape(vi: onnx.ValueInfoProto, dims: list[int | None] | None, *, size, layout, channels) -> dict:
    if dims is None or len(dims) != 4:
        got = "no declared shape" if dims is None else f"shape {_fmt(dims)}"
        raise UsageError(f"model input {vi.name!r} has {got}; images need a rank-4 NCHW or NHWC input")
    if layout is None:
        layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"layout must be NCHW or NHWC, not {layout!r}")
    c_dim, hw = (dims[1], dims[2:4]) if layout == "NCHW" else (dims[3], dims[1:3])
    if channels is None:
        if c_dim == 1:
            channels = "GRAY"
        elif c_dim in (3, None):
            channels = "RGB"
        else:
            raise UsageError(f"model input {vi.name!r} {_fmt(dims)} has {c_dim} channels in {layout} layout; images "
                             "give 1 (GRAY) or 3 (RGB/BGR): check --layout")
    channels = channels.upper()
    if channels not in _CHANNELS:
        raise UsageError(f"channels must be RGB, BGR or GRAY, not {channels!r}")
    if c_dim is not None and c_dim != _CHANNELS[channels]:
        raise UsageError(f"model input {vi.name!r} {_fmt(dims)} has {c_dim} channels in {layout} layout, but "
                         f"{channels} images have {_CHANNELS[channels]}")
    if size is not None:
        target = _size(size)
        for axis, fixed, want in zip(("height", "width"), hw, target):
            if fixed is not None and fixed != want:
                raise UsageError(f"--size {target[0]},{target[1]} disagrees with the model, whose input "
                                 f"{vi.name!r} {_fmt(dims)} fixes the {axis} to {fixed}")
    elif any(d is None for d in hw):
        raise UsageError(f"model input {vi.name!r} {_fmt(dims)} has a dynamic height or width; give the image "
                         "size with --size H[,W]")
    else:
        target = (hw[0], hw[1])
    return {"name": vi.name, "layout": layout, "channels": channels, "size": target}


def _size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UsageError(f"image size must be an int or (height, width), not {size!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, not {h}x{w}")
    return h, w


def _per_channel(value, c: int, what: str, channels: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float32)).ravel()
    if v.size not in (1, c):
        raise UsageError(f"--{what} has {v.size} values; give one, or {c} (one per {channels} channel)")
    if not np.isfinite(v).all():
        raise UsageError(f"--{what} must be finite numbers")
    return np.broadcast_to(v, (c,)).astype(np.float32)


def _fmt(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
