"""Calibration from a folder of images (--calib-images) and from random noise (--calib-random)."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_eprune.calibrate.images import image_shape, list_images, load_image_folder, random_calibration
from onnx_eprune.cli import main
from onnx_eprune.errors import UsageError

Image = pytest.importorskip("PIL.Image")


# -- tiny models -----------------------------------------------------------------------
def _conv_model(shape, nhwc: bool = False, channels: int = 3) -> onnx.ModelProto:
    """A single 3x3 Conv (channels -> 4) on input ``x`` of ``shape``; NHWC inputs go
    through a Transpose to NCHW first."""
    w = numpy_helper.from_array(np.ones((4, channels, 3, 3), np.float32), "w")
    nodes = []
    x = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(helper.make_node("Conv", [x, "w"], ["y"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


NCHW_RGB = _conv_model([1, 3, 8, 8])
NCHW_GRAY = _conv_model([1, 1, 8, 8], channels=1)
NHWC_RGB = _conv_model([1, 8, 8, 3], nhwc=True)
DYNAMIC = _conv_model(["N", 3, "H", "W"])


def _write(path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _rgb(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Three 8x8 RGB PNGs, one in a subfolder, written out of order; returns (dir, pixels in path order)."""
    d = tmp_path / "imgs"
    b = _write(d / "b.png", _rgb(1))
    a = _write(d / "a.png", _rgb(2))
    c = _write(d / "sub" / "c.PNG", _rgb(3))
    (d / "notes.txt").write_text("not an image")
    return d, np.stack([a, b, c])  # a.png, b.png, sub/c.PNG


# -- shapes, layout, values ------------------------------------------------------------
def test_nchw_shape_dtype_and_exact_normalisation(folder):
    d, pixels = folder
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = load_image_folder(d, NCHW_RGB, mean=mean, std=std)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    want = (pixels.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(x, want.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_single_mean_std_and_scale(folder):
    d, pixels = folder
    x = load_image_folder(d, NCHW_RGB, scale=1.0, mean=127.5, std=[127.5])
    np.testing.assert_allclose(x, (pixels.transpose(0, 3, 1, 2) - 127.5) / 127.5, rtol=1e-6, atol=1e-6)


def test_defaults_scale_to_unit_range(folder):
    d, pixels = folder
    x = load_image_folder(d, NCHW_RGB)
    np.testing.assert_allclose(x, pixels.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6, atol=1e-7)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_nhwc_inferred_from_shape(folder):
    d, pixels = folder
    assert image_shape(NHWC_RGB)["layout"] == "NHWC"
    x = load_image_folder(d, NHWC_RGB)
    assert x.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(x, pixels / 255.0, rtol=1e-6, atol=1e-7)


def test_explicit_layout_overrides_inference(folder):
    d, _ = folder
    with pytest.raises(UsageError, match="channels"):
        load_image_folder(d, NCHW_RGB, layout="NHWC")  # axis 3 has 8 channels


def test_bgr_reverses_channel_order(folder):
    d, pixels = folder
    rgb = load_image_folder(d, NCHW_RGB, mean=(0.1, 0.2, 0.3))
    bgr = load_image_folder(d, NCHW_RGB, channels="BGR", mean=(0.3, 0.2, 0.1))
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])
    np.testing.assert_allclose(bgr[:, 0], pixels[..., 2] / 255.0 - 0.3, rtol=1e-6, atol=1e-6)


def test_gray_converts_with_pillow_L(folder):
    d, pixels = folder
    x = load_image_folder(d, NCHW_GRAY, scale=1.0)
    assert x.shape == (3, 1, 8, 8)
    want = np.stack([np.asarray(Image.fromarray(p).convert("L")) for p in pixels]).astype(np.float32)
    np.testing.assert_array_equal(x[:, 0], want)
    assert image_shape(NCHW_GRAY)["channels"] == "GRAY"


def test_gray_model_refuses_rgb(folder):
    d, _ = folder
    with pytest.raises(UsageError, match="channels"):
        load_image_folder(d, NCHW_GRAY, channels="RGB")


def test_dynamic_size_needs_size_then_uses_it(folder):
    d, _ = folder
    with pytest.raises(UsageError, match="--size"):
        load_image_folder(d, DYNAMIC)
    assert load_image_folder(d, DYNAMIC, size=4).shape == (3, 3, 4, 4)
    assert load_image_folder(d, DYNAMIC, size=(4, 6)).shape == (3, 3, 4, 6)


def test_size_must_agree_with_fixed_model(folder):
    d, _ = folder
    assert load_image_folder(d, NCHW_RGB, size=8).shape == (3, 3, 8, 8)
    with pytest.raises(UsageError, match="fixes"):
        load_image_folder(d, NCHW_RGB, size=(8, 6))


# -- resize policies -------------------------------------------------------------------
def _stripes(tmp_path):
    """One 8 high x 16 wide image: red | green (middle 8 columns) | blue."""
    p = np.zeros((8, 16, 3), np.uint8)
    p[:, :4, 0] = 255
    p[:, 4:12, 1] = 255
    p[:, 12:, 2] = 255
    d = tmp_path / "wide"
    _write(d / "img.png", p)
    return d


def test_crop_keeps_the_centre(tmp_path):
    x = load_image_folder(_stripes(tmp_path), NCHW_RGB)
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, 1], 1.0, atol=1e-6)  # all green
    np.testing.assert_allclose(x[0, [0, 2]], 0.0, atol=1e-6)
    assert np.array_equal(load_image_folder(_stripes(tmp_path), NCHW_RGB, resize="crop"), x)


def test_crop_scales_a_larger_image(tmp_path):
    p = np.zeros((16, 32, 3), np.uint8)
    p[:, 8:24] = 200  # the centre 16x16 square
    _write(tmp_path / "big" / "img.png", p)
    x = load_image_folder(tmp_path / "big", NCHW_RGB, scale=1.0)
    np.testing.assert_array_equal(x[..., 1:7], 200.0)  # edge columns blend with the outside (bilinear)
    # the same as halving the whole image, then cropping its centre
    half = Image.fromarray(p).resize((16, 8), Image.BILINEAR).crop((4, 0, 12, 8))
    np.testing.assert_allclose(x[0], np.asarray(half, np.float32).transpose(2, 0, 1), atol=1.0)


def test_crop_takes_every_image_size_to_every_target():
    """The centred box of a source whose aspect differs from the target's can come out a
    rounding error outside the image (770x440 to 224: top = -2.8e-14), which Pillow refuses."""
    from onnx_eprune.calibrate.images import _resize

    grid = [(w, h) for w in range(1, 400, 13) for h in range(1, 400, 11)]
    photos = [(770, 440), (130, 97), (640, 480), (1024, 768), (800, 600), (1920, 1080), (1280, 720), (854, 480),
              (3000, 2000), (1500, 1000), (600, 400)]
    for w, h in grid + photos:
        img = Image.new("L", (w, h))
        for target in [(224, 224), (28, 28), (32, 32), (299, 299), (24, 40)]:
            assert _resize(img, target, "short-side-center-crop", Image).size == target[::-1], (w, h, target)


def test_crop_reads_sizes_that_once_failed(tmp_path, caplog):
    for w, h in [(770, 440), (130, 97)]:
        _write(tmp_path / "odd" / f"{w}x{h}.png", _rgb(w, h, w))
    with caplog.at_level(logging.WARNING):
        x = load_image_folder(tmp_path / "odd", DYNAMIC, size=224)
    assert x.shape == (2, 3, 224, 224)
    assert "skipping" not in caplog.text


def test_stretch_keeps_the_sides(tmp_path):
    x = load_image_folder(_stripes(tmp_path), NCHW_RGB, resize="stretch")
    assert x.shape == (1, 3, 8, 8)
    assert x[0, 0, :, 0].min() > 0.9  # red on the left
    assert x[0, 2, :, -1].min() > 0.9  # blue on the right
    assert x[0, 1, :, 0].max() < 0.1


def test_unknown_resize_policy(folder):
    with pytest.raises(UsageError, match="resize"):
        load_image_folder(folder[0], NCHW_RGB, resize="pad")


# -- files and order -------------------------------------------------------------------
def test_order_is_by_relative_path_and_deterministic(folder, tmp_path):
    d, pixels = folder
    names = [p.relative_to(d).as_posix() for p in list_images(d)]
    assert names == ["a.png", "b.png", "sub/c.PNG"]
    np.testing.assert_array_equal(load_image_folder(d, NCHW_RGB), load_image_folder(d, NCHW_RGB))
    # the same files written in another order give the same array
    other = tmp_path / "other"
    for name, i in (("sub/c.PNG", 2), ("b.png", 1), ("a.png", 0)):
        _write(other / name, pixels[i])
    np.testing.assert_array_equal(load_image_folder(other, NCHW_RGB), load_image_folder(d, NCHW_RGB))


def test_all_suffixes_any_case_and_limit(tmp_path):
    d = tmp_path / "mixed"
    for i, name in enumerate(["a.JPG", "b.jpeg", "c.bmp", "d.TIF", "e.tiff", "f.png"]):
        _write(d / name, _rgb(i))
    assert len(list_images(d)) == 6
    assert load_image_folder(d, NCHW_RGB).shape == (6, 3, 8, 8)
    assert load_image_folder(d, NCHW_RGB, limit=2).shape == (2, 3, 8, 8)


def test_palette_and_rgba_images_are_converted(tmp_path):
    d = tmp_path / "modes"
    rgba = np.concatenate([_rgb(0), np.full((8, 8, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(_mk(d / "a.png"))
    Image.fromarray(_rgb(1)).convert("P").save(_mk(d / "b.png"))
    x = load_image_folder(d, NCHW_RGB, scale=1.0)
    np.testing.assert_array_equal(x[0], rgba[..., :3].transpose(2, 0, 1))
    assert x.shape == (2, 3, 8, 8)


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_unreadable_files_are_skipped_with_a_warning(folder, caplog):
    d, pixels = folder
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        x = load_image_folder(d, NCHW_RGB)
    assert x.shape == (3, 3, 8, 8)
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)


# -- errors ----------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_image_folder(tmp_path / "nope", NCHW_RGB)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "one.png"
    _write(f, _rgb(0))
    with pytest.raises(UsageError, match="folder"):
        load_image_folder(f, NCHW_RGB)


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError, match="no image files"):
        load_image_folder(tmp_path / "empty", NCHW_RGB)


def test_no_readable_image(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.png").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="could be read"):
        load_image_folder(d, NCHW_RGB)


@pytest.mark.parametrize("kw", [{"mean": (0.1, 0.2)}, {"std": (1.0, 2.0, 3.0, 4.0)}, {"std": 0.0}])
def test_bad_mean_or_std(folder, kw):
    with pytest.raises(UsageError):
        load_image_folder(folder[0], NCHW_RGB, **kw)


@pytest.mark.parametrize("kw, words", [
    ({"limit": 0}, "at least 1"), ({"layout": "CHW"}, "layout must be NCHW or NHWC"),
    ({"channels": "RGBA"}, "channels must be RGB, BGR or GRAY"), ({"size": (8, 0)}, "must be positive"),
    ({"size": "big"}, "an int or (height, width)"), ({"mean": float("nan")}, "finite"),
])
def test_bad_arguments_are_named(folder, kw, words):
    """Each argument load_image_folder cannot use is refused with a message that names it."""
    with pytest.raises(UsageError, match=re.escape(words)):
        load_image_folder(folder[0], DYNAMIC if "size" in kw else NCHW_RGB, **kw)


@pytest.mark.parametrize("shape, words", [([1, 3, 8], "rank-4"), (None, "no declared shape")])
def test_inputs_that_take_no_images(folder, shape, words):
    """An input of another rank, or one without a declared shape, takes no images."""
    model = _conv_model([1, 3, 8, 8])
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, shape))
    with pytest.raises(UsageError, match=words):
        load_image_folder(folder[0], model)


def test_several_inputs_need_an_npz(folder):
    model = _conv_model([1, 3, 8, 8])
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8]))
    with pytest.raises(UsageError, match="npz"):
        load_image_folder(folder[0], model)


def test_initializer_listed_as_input_does_not_count(folder):
    model = _conv_model([1, 3, 8, 8])
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    assert load_image_folder(folder[0], model).shape == (3, 3, 8, 8)


def test_missing_pillow_is_a_usage_error(folder, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(UsageError, match="pip install pillow"):
        load_image_folder(folder[0], NCHW_RGB)


# -- random ----------------------------------------------------------------------------
def test_random_calibration_shapes_and_seed():
    a = random_calibration(NCHW_RGB, 5, seed=3)
    assert list(a) == ["x"] and a["x"].shape == (5, 3, 8, 8) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], random_calibration(NCHW_RGB, 5, seed=3)["x"])
    assert random_calibration(DYNAMIC, 2, size=(4, 6))["x"].shape == (2, 3, 4, 6)
    with pytest.raises(UsageError, match="dynamic"):
        random_calibration(DYNAMIC, 2)
    with pytest.raises(UsageError, match="at least 1"):
        random_calibration(NCHW_RGB, 0)
    shapeless = _conv_model([1, 3, 8, 8])
    shapeless.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    with pytest.raises(UsageError, match="no declared shape"):
        random_calibration(shapeless, 2)


# -- command line ----------------------------------------------------------------------
@pytest.fixture
def cnn_file(tmp_path):
    from models import HW, IN_CHANNELS, conv_bn_relu_pool_flatten_gemm

    assert (IN_CHANNELS, HW) == (3, 16)  # input ["N", 3, 16, 16]
    path = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(), str(path))
    return path


def _photos(folder, n: int, h: int, w: int):
    """``n`` RGB PNGs of ``h`` x ``w`` pixels in ``folder``."""
    for i in range(n):
        _write(folder / f"{i:03d}.png", _rgb(i, h, w))
    return folder


def test_cli_prune_from_images(cnn_file, tmp_path, capsys):
    d = _photos(tmp_path / "photos", 20, 20, 24)
    out = tmp_path / "pruned.onnx"
    rc = main(["prune", str(cnn_file), "-o", str(out), "--calib-images", str(d), "--keep-ratio", "1.0",
               "--device", "cpu", "--method", "l1", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
               "-q"])
    assert rc == 0, capsys.readouterr().err
    onnx.checker.check_model(onnx.load(str(out)))


def test_cli_image_errors_are_one_line_usage_errors(cnn_file, tmp_path, capsys):
    out = str(tmp_path / "pruned.onnx")
    rc = main(["prune", str(cnn_file), "-o", out, "--calib-images", str(tmp_path / "nope"), "--keep-ratio", "1.0"])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and err.count("\n") == 1
    d = tmp_path / "imgs"
    _write(d / "a.png", _rgb(0))
    rc = main(["prune", str(cnn_file), "-o", out, "--calib-images", str(d), "--mean", "0.1,0.2", "--keep-ratio",
               "1.0"])
    assert rc == 2 and "--mean" in capsys.readouterr().err
    rc = main(["prune", str(cnn_file), "-o", out, "--calib-images", str(d), "--size", "0", "--keep-ratio", "1.0"])
    assert rc == 2
    assert not (tmp_path / "pruned.onnx").exists()


def test_cli_image_options_need_calib_images(cnn_file, tmp_path, capsys):
    rc = main(["prune", str(cnn_file), "-o", str(tmp_path / "p.onnx"), "--calib", "x.npy", "--mean", "0.5",
               "--keep-ratio", "1.0"])
    assert rc == 2 and "--mean only applies with --calib-images" in capsys.readouterr().err


def test_cli_sources_are_exclusive(cnn_file, tmp_path, capsys):
    rc = main(["prune", str(cnn_file), "-o", str(tmp_path / "p.onnx"), "--calib-images", str(tmp_path),
               "--calib-random", "4", "--keep-ratio", "1.0"])
    assert rc == 2 and "not allowed with" in capsys.readouterr().err


def test_cli_calib_random_warns(cnn_file, tmp_path, capsys):
    out = tmp_path / "pruned.onnx"
    rc = main(["prune", str(cnn_file), "-o", str(out), "--calib-random", "16", "--keep-ratio", "1.0",
               "--device", "cpu", "--method", "l1", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "warning:" in err and "random" in err and "accuracy will suffer" in err
    assert out.exists()


def test_cli_calibrate_from_images(cnn_file, tmp_path, capsys):
    d = _photos(tmp_path / "photos", 8, 16, 16)
    stats = tmp_path / "stats.npz"
    rc = main(["calibrate", str(cnn_file), "--calib-images", str(d), "--stats-out", str(stats), "--device", "cpu",
               "-q"])
    assert rc == 0, capsys.readouterr().err
    assert stats.exists()


def test_linked_folders_are_followed_but_not_around_a_loop(tmp_path):
    """A folder of links into a dataset reads the linked images; a link back to a folder
    it lies in is not walked (it would never end)."""
    data = tmp_path / "data"
    a = _write(data / "cats" / "a.png", _rgb(1))
    b = _write(data / "dogs" / "b.png", _rgb(2))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "cats").symlink_to(data / "cats", target_is_directory=True)
    (tree / "dogs").symlink_to(data / "dogs", target_is_directory=True)
    (data / "dogs" / "up").symlink_to(tree, target_is_directory=True)  # tree/dogs/up is tree again
    (data / "dogs" / "self").symlink_to(data / "dogs", target_is_directory=True)
    assert [p.relative_to(tree).as_posix() for p in list_images(tree)] == ["cats/a.png", "dogs/b.png"]
    np.testing.assert_array_equal(load_image_folder(tree, NCHW_RGB, scale=1.0),
                                  np.stack([a, b]).transpose(0, 3, 1, 2).astype(np.float32))
