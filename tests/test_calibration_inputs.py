"""How calibration data gets in: ``.npy`` / ``.npz`` files of every kind, arrays in odd
layouts and dtypes, dicts, lists, generators, duck arrays, data readers and paths from
Python (``prune``, ``calibrate``, ``sweep``, ``evaluate``'s data), ``--samples`` and
``--batch-size`` at their edges, models exported for a fixed batch or a dynamic size, and
``--calib-images`` folders holding things that are not plain 8-bit pictures.

What the README promises must hold (an accepted input gives the same pruned model as the
plain float32 array it stands for); everything else is a one-line ``UsageError`` (exit 2
on the command line) that names the problem, never a traceback or a silently wrong result.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, random_input, residual, run_model
from onnx_eprune import UsageError
from onnx_eprune.cli import main

FAST: dict[str, Any] = {"method": "l1", "device": "cpu"}
ERROR = "onnx-eprune: error: "


# -- models ---------------------------------------------------------------------------------

def _cnn() -> onnx.ModelProto:
    """The folded CNN of models.py: input x (N, 3, 16, 16) float32, output y (N, 10)."""
    return conv_bn_relu_pool_flatten_gemm(True)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float32 initializer, its input and its output in float16."""
    m = _copy(model)
    for i, init in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float16), init.name))
    for vi in [*m.graph.input, *m.graph.output]:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(m, full_check=True)
    return m


def _fixed(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` exported for a fixed batch of ``batch`` (input and output)."""
    m = _copy(model)
    for vi in [*m.graph.input, *m.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return m


def _dynamic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a dynamic height and width (only for models that pool globally)."""
    m = _copy(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return m


def _two_inputs() -> onnx.ModelProto:
    """The CNN fed by Add(x, x2): two graph inputs of shape (N, 3, 16, 16)."""
    m = _cnn()
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 16, 16]))
    for node in m.graph.node:
        node.input[:] = ["x_sum" if name == "x" else name for name in node.input]
    m.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["x_sum"], name="add_inputs"))
    onnx.checker.check_model(m, full_check=True)
    return m


def _renamed_input(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` whose input x is called ``name`` (tf2onnx writes 'input_1:0')."""
    m = _copy(model)
    m.graph.input[0].name = name
    for node in m.graph.node:
        node.input[:] = [name if i == "x" else i for i in node.input]
    return m


# -- helpers --------------------------------------------------------------------------------

def _prune(calib: Any, model: onnx.ModelProto | None = None, **options: Any) -> onnx_eprune.PruneResult:
    for key, value in FAST.items():
        options.setdefault(key, value)
    if not {"sparsity", "keep_ratio", "flops_reduction"} & set(options):
        options["sparsity"] = 0.4
    return onnx_eprune.prune(model if model is not None else _cnn(), calib, **options)


def _weights(result: onnx_eprune.PruneResult | onnx.ModelProto) -> dict[str, bytes]:
    model = result if isinstance(result, onnx.ModelProto) else result.model
    return {t.name: t.SerializeToString() for t in model.graph.initializer}


def _assert_close_weights(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-5) -> None:
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for name, value in wa.items():
        assert value.shape == wb[name].shape, name
        np.testing.assert_allclose(wb[name], value, rtol=rtol, atol=1e-6, err_msg=name)


def _kept(result: onnx_eprune.PruneResult) -> list:
    return [g.get("kept_channels") for g in result.report["groups"]]


def _cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, list[str]]:
    """Run the command; its exit status and non-empty stderr lines."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def _cli_fails(capsys: pytest.CaptureFixture, argv: list[str], code: int = 2, contains: tuple[str, ...] = ()) -> str:
    """The command fails with ``code`` and exactly one error line holding every word of ``contains``."""
    got, lines = _cli(capsys, argv)
    assert got == code, lines
    assert len(lines) == 1 and lines[0].startswith(ERROR), lines
    for word in contains:
        assert word in lines[0], lines[0]
    return lines[0]


def _pass_data(entry: str, model: onnx.ModelProto, data: np.ndarray, calib: np.ndarray) -> None:
    """``data`` given where ``entry`` takes it: prune's or calibrate()'s calibration data,
    evaluate()'s or sweep()'s held-out data (sweep calibrating on ``calib``)."""
    if entry == "prune":
        _prune(data, model)
    elif entry == "calibrate":
        onnx_eprune.calibrate(model, data, device="cpu")
    elif entry == "evaluate":
        onnx_eprune.evaluate(model, model, data, device="cpu")
    else:
        onnx_eprune.sweep(model, calib, [0.3], data=data, **FAST)


def _prune_argv(model: Path, out: Path, *source: Any) -> list[Any]:
    return ["prune", model, "-o", out, *source, "--sparsity", "0.4", "--method", "l1", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """32 calibration samples for the (N, 3, 16, 16) models."""
    return random_input(32, seed=7)


@pytest.fixture(scope="module")
def reference(x: np.ndarray) -> onnx_eprune.PruneResult:
    """The CNN pruned on ``x`` as a plain C-ordered float32 array."""
    return _prune(x)


@pytest.fixture
def files(tmp_path: Path, x: np.ndarray) -> Path:
    """A folder with model.onnx (the CNN) and calib.npy (``x``)."""
    onnx.save(_cnn(), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", x)
    return tmp_path


# -- .npy: dtypes ---------------------------------------------------------------------------

def _as_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` in ``dtype`` with varying values (integers scaled, booleans thresholded)."""
    if dtype == "bool":
        return x > 0
    if dtype == "int8":
        return np.clip(np.round(x * 40), -128, 127).astype(np.int8)
    if dtype == "uint8":
        return np.clip(np.round(x * 40 + 128), 0, 255).astype(np.uint8)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float64", ">f4", ">f8", "int8", "uint8", "bool"])
def test_numeric_dtypes_prune_like_their_float32_values(x: np.ndarray, dtype: str) -> None:
    """Other float, integer and boolean arrays (big-endian too) give the model of their float32 cast."""
    data = _as_dtype(x, dtype)
    assert _weights(_prune(data)) == _weights(_prune(data.astype(np.float32)))


@pytest.mark.parametrize("dtype", ["int8", ">f4", "float16"])
def test_numeric_npy_files_on_the_command_line(files: Path, x: np.ndarray, capsys: pytest.CaptureFixture,
                                               dtype: str) -> None:
    """A .npy of int8, big-endian float32 or float16 prunes exactly as the float32 file of its values."""
    data = _as_dtype(x, dtype)
    np.save(files / "typed.npy", data)
    np.save(files / "plain.npy", data.astype(np.float32))
    for name in ("typed", "plain"):
        code, lines = _cli(capsys, _prune_argv(files / "model.onnx", files / f"{name}.onnx", "--calib",
                                               files / f"{name}.npy"))
        assert code == 0 and lines == [], lines
    assert _weights(onnx.load(str(files / "typed.onnx"))) == _weights(onnx.load(str(files / "plain.onnx")))


def _structured(x: np.ndarray) -> np.ndarray:
    s = np.zeros(x.shape, dtype=[("a", "f4"), ("b", "f4")])
    s["a"] = x
    return s


@pytest.mark.parametrize("make", [
    lambda x: x.astype(np.complex128), lambda x: x.astype(object), _structured,
    lambda x: np.zeros(x.shape, "M8[s]"), lambda x: np.zeros(x.shape, "m8[s]"),
], ids=["complex128", "object", "structured", "datetime64", "timedelta64"])
def test_non_numeric_arrays_are_refused_by_dtype(x: np.ndarray, make: Any) -> None:
    """Complex, object, structured and date/time arrays are a UsageError that names the dtype."""
    with pytest.raises(UsageError, match=r"has dtype .*expected (real )?numbers"):
        _prune(make(x))


def test_complex_arrays_ask_for_real_numbers(x: np.ndarray) -> None:
    """Complex values are numbers: the message asks for real ones."""
    with pytest.raises(UsageError, match=r"has dtype complex64, expected real numbers"):
        _prune(x.astype(np.complex64))


def test_structured_npy_file_is_refused_on_the_command_line(files: Path, x: np.ndarray,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A .npy of a structured dtype: exit 2, one line naming the dtype, nothing written."""
    np.save(files / "structured.npy", _structured(x))
    _cli_fails(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "structured.npy"),
               contains=("dtype", "expected numbers"))
    assert not (files / "out.onnx").exists()


# -- .npy: memory layouts -------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "read_only", "mmap", "open_memmap"])
def test_memory_layouts_give_the_same_model(tmp_path: Path, x: np.ndarray, layout: str) -> None:
    """Fortran order, strided and reversed views, read-only and memory-mapped arrays: the model of their values."""
    expected = x[::-1].copy() if layout == "reversed" else x
    if layout == "fortran":
        data = np.asfortranarray(x)
    elif layout == "strided":
        wide = np.zeros((64, 3, 16, 32), np.float32)
        wide[::2, :, :, ::2] = x
        data = wide[::2, :, :, ::2]
        assert not data.flags.c_contiguous
    elif layout == "reversed":
        data = x[::-1]
    elif layout == "read_only":
        data = x.copy()
        data.flags.writeable = False
    elif layout == "mmap":
        np.save(tmp_path / "c.npy", x)
        data = np.load(tmp_path / "c.npy", mmap_mode="r")
    else:
        data = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.float32, shape=x.shape)
        data[:] = x
        data.flush()
    before = (tmp_path / "c.npy").read_bytes() if layout in ("mmap", "open_memmap") else None
    assert _weights(_prune(data)) == _weights(_prune(np.ascontiguousarray(expected)))
    if before is not None:
        assert (tmp_path / "c.npy").read_bytes() == before  # the mapped file is only read


def test_fortran_ordered_npy_file(files: Path, x: np.ndarray, reference: onnx_eprune.PruneResult) -> None:
    """A .npy saved in Fortran order, passed by path, is read as the same samples."""
    np.save(files / "f.npy", np.asfortranarray(x))
    assert _weights(_prune(files / "f.npy")) == _weights(reference)


# -- .npy: shapes ---------------------------------------------------------------------------

def test_zero_d_npy_file_is_refused(files: Path, capsys: pytest.CaptureFixture) -> None:
    """A 0-d .npy (a scalar) has no samples axis: exit 2 naming the shape and the expected rank."""
    np.save(files / "scalar.npy", np.array(3.0, np.float32))
    _cli_fails(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "scalar.npy"),
               contains=("shape ()", "rank 4", "samples on axis 0"))


@pytest.mark.parametrize("entry", ["calibrate", "evaluate", "sweep_data"])
@pytest.mark.parametrize("shape", [(8, 3, 16, 17), (8, 16, 16, 3), (3, 16, 16)])
def test_wrong_shapes_are_refused_by_every_entry_point(x: np.ndarray, entry: str, shape: tuple[int, ...]) -> None:
    """calibrate(), evaluate's data and sweep's data refuse a wrong C/H/W or rank with the shape named."""
    bad = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    model = _cnn()
    with pytest.raises(UsageError, match=r"shape \(") as info:
        _pass_data(entry, model, bad, x)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [(8, 8), (24, 24), (12, 20), (1, 1)])
def test_dynamic_size_model_calibrates_at_any_size(size: tuple[int, int]) -> None:
    """A model with dynamic H/W prunes on samples of any one size and keeps its dynamic input."""
    model = _dynamic_hw(residual())
    data = np.random.default_rng(sum(size)).normal(size=(16, 3, *size)).astype(np.float32)
    result = _prune(data, model, keep_ratio=0.5)
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["H", "W"]
    for h, w in ((16, 16), (9, 31)):  # runs at sizes it never saw
        out = run_model(result.model, np.ones((2, 3, h, w), np.float32))["y"]
        assert out.shape == (2, 10) and np.isfinite(out).all()


def test_dynamic_size_batches_of_several_sizes_are_refused() -> None:
    """Batches at 8x8 and 16x16 cannot form one array: a UsageError says they do not stack."""
    model = _dynamic_hw(residual())
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(8, 3, s, s)).astype(np.float32) for s in (8, 16)]
    with pytest.raises(UsageError, match="do not stack"):
        _prune(iter(batches), model)


def test_zero_sized_spatial_axis_is_a_usage_error() -> None:
    """Samples with zero height hold no values: refused as calibration data, not blamed on the model."""
    model = _dynamic_hw(residual())
    with pytest.raises(UsageError):
        _prune(np.zeros((8, 3, 0, 16), np.float32), model)


# -- .npy: values ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["prune", "calibrate", "evaluate", "sweep_data"])
@pytest.mark.parametrize("dtype, value", [("float16", np.nan), ("float64", np.inf), ("float32", -np.inf)])
def test_a_single_nan_or_inf_is_refused_everywhere(x: np.ndarray, entry: str, dtype: str, value: float) -> None:
    """One NaN/Inf entry in an otherwise good array of any float type is refused by every entry point."""
    bad = x.astype(dtype)
    bad[17, 2, 5, 9] = value
    model = _cnn()
    with pytest.raises(UsageError, match="NaN or Inf"):
        _pass_data(entry, model, bad, x)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("data", [
    lambda x: x.astype(np.float64) * 1e30, lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, 1e30, x),
    lambda x: x * np.float32(1e5), lambda x: np.full(x.shape, 100_000, np.int32) + np.arange(x.size).reshape(x.shape),
], ids=["all_1e30", "one_1e30", "float32_1e5", "int32_1e5"])
def test_values_beyond_float16_are_refused_for_a_half_model(x: np.ndarray, data: Any) -> None:
    """Values that the cast to a float16 model's input would turn into Inf are a UsageError that says so."""
    with pytest.raises(UsageError, match="beyond the range of float16"):
        _prune(data(x), _half(_cnn()))


def test_half_model_on_the_command_line(files: Path, x: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    """A float16 model: 1e30 in a .npy is exit 2 in one line; float16 samples give a float16 pruned model."""
    onnx.save(_half(_cnn()), str(files / "half.onnx"))
    np.save(files / "huge.npy", x.astype(np.float64) * 1e30)
    _cli_fails(capsys, _prune_argv(files / "half.onnx", files / "out.onnx", "--calib", files / "huge.npy"),
               contains=("beyond the range of float16", "rescale"))
    assert not (files / "out.onnx").exists()
    np.save(files / "half.npy", x.astype(np.float16))
    code, lines = _cli(capsys, _prune_argv(files / "half.onnx", files / "out.onnx", "--calib", files / "half.npy"))
    assert code == 0 and lines == [], lines
    pruned = onnx.load(str(files / "out.onnx"))
    assert pruned.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_huge_values_that_overflow_a_float32_network(files: Path, x: np.ndarray,
                                                     capsys: pytest.CaptureFixture) -> None:
    """1e30 fits float32 but overflows inside the network: one error line about the overflow, nothing written."""
    np.save(files / "huge.npy", x * np.float32(1e30))
    got, lines = _cli(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "huge.npy"))
    assert got in (1, 2) and len(lines) == 1 and lines[0].startswith(ERROR), lines
    assert "overflow" in lines[0] and "scale" in lines[0]
    assert not (files / "out.onnx").exists()


def test_data_constant_after_the_cast_is_refused(x: np.ndarray) -> None:
    """float64 samples that differ only below float32's precision are constant as the model sees them."""
    tiny = 1.0 + 1e-12 * x.astype(np.float64)
    assert np.ptp(tiny) > 0
    with pytest.raises(UsageError, match=r"constant \(every value is 1\)"):
        _prune(tiny)


@pytest.mark.parametrize("entry", ["calibrate", "evaluate", "sweep_data"])
def test_all_zero_samples_are_refused_by_every_entry_point(x: np.ndarray, entry: str) -> None:
    """All-zero data is refused as constant wherever it is passed."""
    zeros, model = np.zeros_like(x), _cnn()
    with pytest.raises(UsageError, match=r"constant \(every value is 0\)"):
        _pass_data(entry, model, zeros, x)


def test_some_all_zero_samples_are_fine(x: np.ndarray) -> None:
    """Half of the samples all zero (blank frames) is still varying data: it prunes."""
    data = x.copy()
    data[::2] = 0.0
    assert _prune(data).report["samples"] == 32


def test_one_constant_input_among_several_warns(x: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """README: one constant input among several gets a warning naming it, and the run goes on."""
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        result = _prune({"x": x, "x2": np.zeros_like(x)}, _two_inputs())
    assert result.report["samples"] == 32
    assert any("'x2' is constant" in r.getMessage() for r in caplog.records)


# -- .npy files that are something else ------------------------------------------------------

def test_pickled_npy_is_refused_through_the_api(tmp_path: Path, x: np.ndarray) -> None:
    """A .npy of Python objects (saved with allow_pickle) is never unpickled: a UsageError naming the file."""
    np.save(tmp_path / "pickled.npy", np.array([x, None], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="pickled.npy") as info:
        _prune(tmp_path / "pickled.npy")
    assert "object" in str(info.value).lower()


@pytest.mark.parametrize("cut", [20, 200, -1])
def test_truncated_npy_is_refused_through_the_api(tmp_path: Path, x: np.ndarray, cut: int) -> None:
    """A .npy cut short (in its header, its data, by one byte) is a UsageError naming the file."""
    np.save(tmp_path / "full.npy", x)
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:cut])
    with pytest.raises(UsageError, match="cut.npy"):
        _prune(tmp_path / "cut.npy")


def test_npz_named_npy_is_read_by_its_content(files: Path, x: np.ndarray, reference: onnx_eprune.PruneResult,
                                              capsys: pytest.CaptureFixture) -> None:
    """An .npz archive saved under a .npy name is read as the archive it is (API and command line)."""
    np.savez(files / "archive.npz", x=x)
    (files / "archive.npy").write_bytes((files / "archive.npz").read_bytes())
    assert _weights(_prune(str(files / "archive.npy"))) == _weights(reference)
    code, lines = _cli(capsys, _prune_argv(files / "model.onnx", files / "a.onnx", "--calib", files / "archive.npy"))
    assert code == 0 and lines == [], lines
    code, lines = _cli(capsys, _prune_argv(files / "model.onnx", files / "b.onnx", "--calib", files / "calib.npy"))
    assert code == 0 and _weights(onnx.load(str(files / "a.onnx"))) == _weights(onnx.load(str(files / "b.onnx")))


def test_text_file_named_npy_on_the_calib_option(files: Path, capsys: pytest.CaptureFixture) -> None:
    """--calib with a text file under a .npy name: exit 2, 'not a .npy or .npz file'."""
    (files / "text.npy").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    _cli_fails(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "text.npy"),
               contains=("text.npy", "not a .npy or .npz file"))


@pytest.mark.parametrize("entry", ["api", "evaluate_cli", "sweep_cli"])
def test_text_file_named_npy_elsewhere(files: Path, capsys: pytest.CaptureFixture, entry: str) -> None:
    """A text file under a .npy name is called not a .npy file by the API and by --data, not pickled data."""
    (files / "text.npy").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    if entry == "api":
        with pytest.raises(UsageError) as info:
            _prune(files / "text.npy")
        line = str(info.value)
    elif entry == "evaluate_cli":
        line = _cli_fails(capsys, ["evaluate", files / "model.onnx", files / "model.onnx", "--data",
                                   files / "text.npy", "--device", "cpu", "-q"])
    else:
        line = _cli_fails(capsys, ["sweep", files / "model.onnx", "--calib", files / "calib.npy", "--data",
                                   files / "text.npy", "--sparsity", "0.3", "--report-dir", files / "rep",
                                   "--method", "l1", "--device", "cpu", "-q"])
    assert "pickle" not in line and "not a .npy or .npz" in line, line


# -- .npz -----------------------------------------------------------------------------------

def test_npz_extra_and_initializer_keys_are_ignored(files: Path, x: np.ndarray,
                                                    reference: onnx_eprune.PruneResult,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Keys naming no input, or an initializer, neither fail nor replace the model's weights."""
    weight = next(i.name for i in _cnn().graph.initializer)
    np.savez(files / "extra.npz", x=x, labels=np.arange(32), **{weight: np.zeros((8, 3, 3, 3), np.float32)})
    assert _weights(_prune(files / "extra.npz")) == _weights(reference)
    code, lines = _cli(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "extra.npz"))
    assert code == 0 and lines == [], lines


def test_npz_of_only_other_keys_or_empty(files: Path, capsys: pytest.CaptureFixture) -> None:
    """An empty archive, or one holding only an initializer's name: exit 2 naming the missing input."""
    np.savez(files / "empty.npz")
    _cli_fails(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "empty.npz"),
               contains=("lacks model input", "x", "has: nothing"))
    weight = next(i.name for i in _cnn().graph.initializer)
    np.savez(files / "weight.npz", **{weight: np.ones((8, 3, 3, 3), np.float32)})
    _cli_fails(capsys, _prune_argv(files / "model.onnx", files / "out.onnx", "--calib", files / "weight.npz"),
               contains=("lacks model input", weight))
    assert not (files / "out.onnx").exists()


@pytest.mark.parametrize("name", ["input_1:0", "serving/x"])
def test_npz_keys_with_colons_and_slashes(tmp_path: Path, x: np.ndarray, name: str) -> None:
    """Input names as exporters write them ('input_1:0', 'serving/x') work as .npz keys."""
    np.savez(tmp_path / "named.npz", **{name: x})
    model = _renamed_input(_cnn(), name)
    assert _weights(_prune(tmp_path / "named.npz", model)) == _weights(_prune({name: x}, model))


def test_npz_with_a_corrupted_member(tmp_path: Path, x: np.ndarray) -> None:
    """A compressed archive whose member is damaged: a UsageError naming the member and the file."""
    np.savez_compressed(tmp_path / "z.npz", x=x)
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    raw[200] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(UsageError, match=r"'x' of calibration file .*bad\.npz"):
        _prune(tmp_path / "bad.npz")


def test_two_inputs_whose_counts_differ_even_with_samples(x: np.ndarray) -> None:
    """Arrays of 32 and 10 samples for two inputs are refused, also when --samples would cut both to 5."""
    for samples in (None, 5):
        with pytest.raises(UsageError, match=r"disagree on the number of samples: \[10, 32\]"):
            _prune({"x": x, "x2": x[:10]}, _two_inputs(), samples=samples)


def test_batches_whose_inputs_disagree_on_their_sample_count(x: np.ndarray) -> None:
    """A batch dict with 8 samples of x and 4 of x2 is refused, not mispaired with the next batch."""
    x2 = random_input(32, seed=8)
    batches = [{"x": x[:8], "x2": x2[:4]}, {"x": x[8:], "x2": x2[4:]}]
    with pytest.raises(UsageError, match="samples"):
        _prune(batches, _two_inputs())


# -- Python objects: dicts, lists, generators, readers, duck arrays, paths ------------------

class _Duck:
    """A torch-like tensor: ``__array__`` only."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)


class _Reader:
    """An onnxruntime CalibrationDataReader: ``get_next()`` gives a dict, then None."""

    def __init__(self, x: np.ndarray) -> None:
        self.batches = iter([{"x": x[i:i + 10]} for i in range(0, len(x), 10)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.mark.parametrize("form", ["dict_duck", "list_duck", "dict_float64_lists", "reader", "tuple", "dict_batches"])
def test_python_forms_give_the_same_model(x: np.ndarray, reference: onnx_eprune.PruneResult, form: str) -> None:
    """Dicts of duck arrays or of float64 lists, lists of ducks, tuples, dict batches and data readers."""
    calib: Any = {
        "dict_duck": lambda: {"x": _Duck(x)},
        "list_duck": lambda: [_Duck(x[:5]), _Duck(x[5:])],
        "dict_float64_lists": lambda: {"x": x.astype(np.float64).tolist()},
        "reader": lambda: _Reader(x),
        "tuple": lambda: (x[:16], x[16:]),
        "dict_batches": lambda: ({"x": b} for b in np.array_split(x, 5)),
    }[form]()
    assert _weights(_prune(calib)) == _weights(reference)


def test_list_of_nested_list_batches(x: np.ndarray, reference: onnx_eprune.PruneResult) -> None:
    """Batches given as nested Python lists prune like the array they spell."""
    assert _weights(_prune([x[:16].tolist(), x[16:].tolist()])) == _weights(reference)


@pytest.mark.parametrize("form", ["list", "tuple"])
def test_nested_lists_are_one_array(x: np.ndarray, reference: onnx_eprune.PruneResult, form: str) -> None:
    """README: nested lists (x.tolist()) are what numpy.asarray takes as one array, not 32 batches of one
    sample each (was: refused with a shape (96, 16, 16) the caller never passed)."""
    nested = x.tolist() if form == "list" else tuple(x.tolist())
    assert _weights(_prune(nested)) == _weights(reference)


def test_a_list_holding_an_array_is_a_list_of_batches(x: np.ndarray, reference: onnx_eprune.PruneResult) -> None:
    """An array among the items makes the list one of batches: a nested-list batch and an array batch."""
    assert _weights(_prune([x[:16].tolist(), x[16:]])) == _weights(reference)


def test_list_of_single_samples_is_not_read_as_samples(x: np.ndarray) -> None:
    """list(x) is 32 batches of shape (3, 16, 16) (batches go on axis 0): refused, with the rank named."""
    with pytest.raises(UsageError, match=r"shape \(96, 16, 16\).*rank 4"):
        _prune(list(x))


def test_a_generator_is_read_only_as_far_as_samples_needs(x: np.ndarray) -> None:
    """With samples=16, an endless generator of 8-sample batches is read two batches deep."""
    read = []

    def endless() -> Iterator[np.ndarray]:
        while len(read) < 100:
            read.append(1)
            yield x[8 * (len(read) % 4):8 * (len(read) % 4) + 8]

    assert _prune(endless(), samples=16).report["samples"] == 16
    assert len(read) <= 3


def test_one_pass_generators_serve_sweep_and_calibrate(x: np.ndarray) -> None:
    """Generators are read once: sweep (several targets, default fidelity data) and calibrate get all samples."""
    points = onnx_eprune.sweep(_cnn(), (b for b in np.array_split(x, 4)), [0.3, 0.5],
                               data=(b for b in np.array_split(x, 3)), **FAST)
    assert [p.fidelity_on for p in points] == ["32 held-out samples"] * 2
    bundle = onnx_eprune.calibrate(_cnn(), (b for b in np.array_split(x, 4)), device="cpu")
    assert bundle.samples == 32


def test_evaluate_data_forms(x: np.ndarray, reference: onnx_eprune.PruneResult) -> None:
    """evaluate() measures the same on a generator, a float64 copy, a Fortran array or a path as on the array."""
    def outputs(data: Any) -> dict:
        return onnx_eprune.evaluate(_cnn(), reference.model, data, device="cpu")["outputs"]

    want = outputs(x)
    for data in ((b for b in np.array_split(x, 3)), x.astype(np.float64), np.asfortranarray(x), {"x": _Duck(x)}):
        assert outputs(data) == want


class _PathLike:
    def __init__(self, path: str | bytes) -> None:
        self.path = path

    def __fspath__(self) -> str | bytes:
        return self.path


def test_path_forms(files: Path, reference: onnx_eprune.PruneResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """str, pathlib.Path, a relative str and an os.PathLike object read the same file."""
    path = files / "calib.npy"
    monkeypatch.chdir(files)
    for form in (str(path), path, "calib.npy", _PathLike(str(path))):
        assert _weights(_prune(form)) == _weights(reference), form


def test_bytes_path_is_refused_by_name(files: Path) -> None:
    """A bytes path is refused (bytes could be file content), with the accepted forms named."""
    with pytest.raises(UsageError, match=r"\.npy/\.npz path, an array, .* not bytes"):
        _prune(os.fsencode(str(files / "calib.npy")))


def test_numpy_string_path(files: Path, reference: onnx_eprune.PruneResult) -> None:
    """A path held in a numpy string (an element of an array of file names) is read as a path."""
    paths = np.array([str(files / "calib.npy")])
    assert _weights(_prune(paths[0])) == _weights(reference)


def test_pathlike_returning_bytes(files: Path) -> None:
    """An os.PathLike giving a bytes path is read, or refused by a UsageError, never a raw TypeError."""
    try:
        _prune(_PathLike(os.fsencode(str(files / "calib.npy"))))
    except UsageError:
        pass


@pytest.mark.parametrize("wrap", ["memoryview", "array_interface"])
def test_other_array_protocols(x: np.ndarray, reference: onnx_eprune.PruneResult, wrap: str) -> None:
    """A memoryview or an __array_interface__ object is taken as the one array numpy.asarray makes of it."""
    class _Interface:
        def __init__(self, array: np.ndarray) -> None:
            self._keep = array
            self.__array_interface__ = array.__array_interface__

    calib = memoryview(x) if wrap == "memoryview" else _Interface(x)
    assert _weights(_prune(calib)) == _weights(reference)


# -- --samples and --batch-size -------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["prune", "{m}", "-o", "{d}/o.onnx", "--calib", "{d}/calib.npy", "--sparsity", "0.4", "--samples", "-1"],
    ["calibrate", "{m}", "--calib", "{d}/calib.npy", "--stats-out", "{d}/s.npz", "--samples", "-2"],
    ["sweep", "{m}", "--calib", "{d}/calib.npy", "--sparsity", "0.3", "--report-dir", "{d}/rep", "--samples", "0"],
], ids=["prune_negative", "calibrate_negative", "sweep_zero"])
def test_samples_zero_or_negative(files: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    """--samples below 1 is exit 2 naming --samples, whatever the command and the source."""
    argv = [a.format(m=files / "model.onnx", d=files) for a in argv] + ["--device", "cpu", "-q"]
    _cli_fails(capsys, argv, contains=("--samples", "at least 1"))
    assert not (files / "o.onnx").exists() and not (files / "s.npz").exists() and not (files / "rep").exists()


@pytest.mark.parametrize("case", ["samples_zero", "dynamic_without_size"])
def test_calib_random_usage_errors_are_one_line(files: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    """--calib-random with --samples 0, or for a dynamic-size model without --size: exit 2 in one line."""
    model = files / "model.onnx"
    extra = ["--samples", "0"]
    if case == "dynamic_without_size":
        model, extra = files / "dynamic.onnx", []
        onnx.save(_dynamic_hw(residual()), str(model))
    _cli_fails(capsys, ["prune", model, "-o", files / "o.onnx", "--calib-random", "8", "--sparsity", "0.4",
                        "--device", "cpu", "-q", *extra])


@pytest.mark.parametrize("option, value", [("--batch-size", "-1"), ("--batch-size", "0")])
def test_batch_size_below_one_in_calibrate(files: Path, capsys: pytest.CaptureFixture, option: str,
                                           value: str) -> None:
    """calibrate --batch-size 0 or -1 is exit 2 naming the option, no statistics written."""
    _cli_fails(capsys, ["calibrate", files / "model.onnx", "--calib", files / "calib.npy", "--stats-out",
                        files / "s.npz", option, value, "--device", "cpu", "-q"], contains=(option,))
    assert not (files / "s.npz").exists()


def test_more_samples_than_available_in_calibrate_and_sweep(x: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """samples=1000 with 32 samples: all 32 are used by calibrate and sweep, with a warning saying so."""
    with caplog.at_level(logging.WARNING, logger="onnx_eprune"):
        assert onnx_eprune.calibrate(_cnn(), x, samples=1000, device="cpu").samples == 32
        points = onnx_eprune.sweep(_cnn(), x, [0.3], samples=1000, **FAST)
    assert points[0].report["samples"] == 32
    assert "--samples 1000: the calibration data holds 32 samples; using all 32" in caplog.text


def test_memory_cap_is_reported_only_where_it_cuts_the_batch(x: np.ndarray, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """README: fewer samples per run than --batch-size when the tensors would pass 1 GiB, "-v says when".
    A huge --batch-size over 32 samples runs them all at once: nothing to say (was an info line naming
    the cap); a cap below the 32 samples is a debug line, what -v shows."""
    from onnx_eprune.calibrate import session

    with caplog.at_level(logging.DEBUG, logger="onnx_eprune"):
        onnx_eprune.calibrate(_cnn(), x, batch_size=10 ** 9, device="cpu")
    assert "at a time" not in caplog.text
    monkeypatch.setattr(session, "BATCH_BYTES", 1)
    with caplog.at_level(logging.DEBUG, logger="onnx_eprune"):
        onnx_eprune.calibrate(_cnn(), x, batch_size=10 ** 9, device="cpu")
    [line] = [r for r in caplog.records if "at a time" in r.getMessage()]
    assert line.levelno == logging.DEBUG
    assert line.getMessage().startswith("calibration runs 1 sample(s) at a time: 32 would fetch")


@pytest.mark.parametrize("batch_size", [1, 5, 32, 1000])
def test_batch_size_does_not_change_the_result(x: np.ndarray, reference: onnx_eprune.PruneResult,
                                               batch_size: int) -> None:
    """One sample per run, a size that does not divide 32, exactly 32 and more than there are: same model."""
    result = _prune(x, batch_size=batch_size)
    assert result.report["samples"] == 32 and _kept(result) == _kept(reference)
    _assert_close_weights(reference.model, result.model)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("n, batch_size", [(1, 64), (3, 64), (5, 64), (13, 3), (13, 1)])
def test_fixed_batch_model_with_samples_not_a_multiple(x: np.ndarray, batch: int, n: int, batch_size: int) -> None:
    """Fixed batch 1 or 4, 1-13 samples, --batch-size 3 or 1: the free-batch twin's model, input still fixed."""
    free = _prune(x[:n], keep_ratio=0.5, round_to=1)
    fixed = _prune(x[:n], _fixed(_cnn(), batch), keep_ratio=0.5, round_to=1, batch_size=batch_size)
    assert fixed.report["samples"] == n and _kept(fixed) == _kept(free)
    _assert_close_weights(free.model, fixed.model)
    assert fixed.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch


def test_fixed_batch_model_on_the_command_line(files: Path, x: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    """CLI: a batch-4 model, 7 samples, --batch-size 3: exit 0, the few-samples warning only, evaluate agrees."""
    onnx.save(_fixed(_cnn(), 4), str(files / "fixed.onnx"))
    np.save(files / "seven.npy", x[:7])
    argv = _prune_argv(files / "fixed.onnx", files / "out.onnx", "--calib", files / "seven.npy", "--batch-size", "3")
    code, lines = _cli(capsys, argv)
    assert code == 0 and len(lines) == 1 and "only 7 calibration sample" in lines[0], lines
    report = onnx_eprune.evaluate(str(files / "fixed.onnx"), str(files / "out.onnx"), x[:3], device="cpu")
    assert report["samples"] == 3 and set(report["latency_ms"]["pruned"]) == {"batch4"}


# -- --calib-images -------------------------------------------------------------------------

@pytest.fixture
def image_module() -> Any:
    """PIL.Image, or skip."""
    return pytest.importorskip("PIL.Image")


def _rgb(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(Image: Any, path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode else img).save(path)


def _images_argv(files: Path, folder: Path, *extra: str) -> list[Any]:
    return ["prune", files / "model.onnx", "-o", files / "out.onnx", "--calib-images", folder, "--keep-ratio", "0.5",
            "--method", "l1", "--device", "cpu", "-q", *extra]


def test_images_among_junk_files(files: Path, image_module: Any, capsys: pytest.CaptureFixture) -> None:
    """Non-image files are ignored; a zero-byte and a truncated PNG are skipped with a warning each; it prunes."""
    folder = files / "photos"
    for i in range(4):
        _save(image_module, folder / f"{i}.png", _rgb(i, 20, 24))
    (folder / "notes.txt").write_text("not an image")
    (folder / "labels.csv").write_text("0,1\n")
    (folder / "empty.png").write_bytes(b"")
    raw = (folder / "0.png").read_bytes()
    (folder / "cut.png").write_bytes(raw[:len(raw) // 2])
    code, lines = _cli(capsys, _images_argv(files, folder))
    assert code == 0, lines
    skipped = [line for line in lines if "skipping unreadable image" in line]
    assert len(skipped) == 2 and any("empty.png" in s for s in skipped) and any("cut.png" in s for s in skipped)
    assert any("only 4 calibration sample" in line for line in lines)
    onnx.checker.check_model(onnx.load(str(files / "out.onnx")), full_check=True)


@pytest.mark.parametrize("channels", [3, 1])
def test_sixteen_bit_png_is_not_saturated(tmp_path: Path, image_module: Any, channels: int) -> None:
    """A 16-bit grayscale PNG reaches an RGB or GRAY model as its 8-bit equivalent (value/65535 after --scale)."""
    from onnx_eprune.calibrate.images import load_image_folder

    a = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0 .. 65535
    _save(image_module, tmp_path / "deep" / "a.png", a)
    assert image_module.open(tmp_path / "deep" / "a.png").mode.startswith("I")
    model = _cnn() if channels == 3 else _gray_model()
    got = load_image_folder(tmp_path / "deep", model)
    want = np.broadcast_to(a / 65535.0, got.shape)
    np.testing.assert_allclose(got, want, atol=1.5 / 255)


def _gray_model() -> onnx.ModelProto:
    """A one-channel (N, 1, 16, 16) Conv -> Relu -> GAP -> Flatten -> Gemm classifier."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(10, 8)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "gray", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_cmyk_la_bilevel_and_32_bit_images(tmp_path: Path, image_module: Any) -> None:
    """CMYK (TIFF exact, JPEG lossy), gray+alpha, 1-bit and 32-bit integer images become RGB samples."""
    from onnx_eprune.calibrate.images import load_image_folder

    base = _rgb(5)
    folder = tmp_path / "modes"
    _save(image_module, folder / "a_cmyk.tif", base, "CMYK")
    _save(image_module, folder / "b_cmyk.jpg", base, "CMYK")
    _save(image_module, folder / "c_la.png", base, "LA")
    _save(image_module, folder / "d_bilevel.bmp", base, "1")
    _save(image_module, folder / "e_int32.tif", base, "I")
    got = load_image_folder(folder, _cnn(), scale=1.0)
    assert got.shape == (5, 3, 16, 16) and np.isfinite(got).all()
    np.testing.assert_array_equal(got[0], base.transpose(2, 0, 1))           # CMYK TIFF: exact
    assert np.abs(got[1] - base.transpose(2, 0, 1)).mean() < 20              # CMYK JPEG: close
    gray = np.asarray(image_module.fromarray(base).convert("L"), np.float32)
    for i in (2, 4):                                                         # LA and I: their luma
        np.testing.assert_array_equal(got[i], np.broadcast_to(gray, (3, 16, 16)))
    assert set(np.unique(got[3])) <= {0.0, 255.0}                            # bilevel


def test_images_smaller_than_the_input(files: Path, image_module: Any, capsys: pytest.CaptureFixture) -> None:
    """2x3 and 1x1 images are upscaled to the model's 16x16 (and to --size 24 for a dynamic model)."""
    from onnx_eprune.calibrate.images import load_image_folder

    folder = files / "tiny"
    for i in range(3):
        _save(image_module, folder / f"{i}.png", _rgb(i, 2, 3))
    _save(image_module, folder / "pixel.png", _rgb(9, 1, 1))
    assert load_image_folder(folder, _cnn()).shape == (4, 3, 16, 16)
    assert load_image_folder(folder, _dynamic_hw(residual()), size=24).shape == (4, 3, 24, 24)
    code, lines = _cli(capsys, _images_argv(files, folder))
    assert code == 0, lines


def test_symlink_loops_end(files: Path, image_module: Any, capsys: pytest.CaptureFixture) -> None:
    """A self-linked folder, two mutually linked files, a dangling link: the walk ends, bad links warn."""
    folder = files / "loop"
    for i in range(3):
        _save(image_module, folder / f"{i}.png", _rgb(i))
    os.symlink(folder, folder / "again")
    os.symlink(folder / "b.png", folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    code, lines = _cli(capsys, _images_argv(files, folder))
    assert code == 0, lines
    skipped = [line for line in lines if "skipping unreadable image" in line]
    assert sorted(Path(s.split("skipping unreadable image ")[1].split()[0]).name for s in skipped) == \
        ["a.png", "b.png", "dangling.png"], skipped
    assert any("only 3 calibration sample" in line for line in lines)


def test_folder_without_images(files: Path, image_module: Any, capsys: pytest.CaptureFixture) -> None:
    """Only text files, empty subfolders, a hidden folder's image and a folder named x.png: exit 2, no images."""
    folder = files / "none"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "x.png").mkdir()
    (folder / "readme.txt").write_text("nothing")
    _save(image_module, folder / ".cache" / "thumb.png", _rgb(0))
    _cli_fails(capsys, _images_argv(files, folder), contains=("no image files", str(folder)))
    assert not (files / "out.onnx").exists()


def test_nested_folders_in_path_order(tmp_path: Path, image_module: Any) -> None:
    """Images at several depths are read in relative-path order; hidden folders and folders named *.png are not."""
    from onnx_eprune.calibrate.images import load_image_folder

    folder = tmp_path / "nested"
    _save(image_module, folder / "b" / "c" / "d" / "deep.png", _rgb(1))
    _save(image_module, folder / "a.png", _rgb(2))
    _save(image_module, folder / "b" / "z.png", _rgb(3))
    _save(image_module, folder / ".hidden" / "h.png", _rgb(4))
    (folder / "dir.png").mkdir()
    got = load_image_folder(folder, _cnn(), scale=1.0)
    want = np.stack([_rgb(2), _rgb(1), _rgb(3)]).transpose(0, 3, 1, 2)  # a.png, b/c/d/deep.png, b/z.png
    np.testing.assert_array_equal(got, want)


def test_samples_limit_images(files: Path, image_module: Any, capsys: pytest.CaptureFixture) -> None:
    """--samples 2 reads two images; --samples 50 with 5 images uses all 5 and says so."""
    folder = files / "five"
    for i in range(5):
        _save(image_module, folder / f"{i}.png", _rgb(i))
    report = files / "r.json"
    code, lines = _cli(capsys, _images_argv(files, folder, "--samples", "2", "--report", str(report)))
    assert code == 0, lines
    assert json.loads(report.read_text())["samples"] == 2
    code, lines = _cli(capsys, _images_argv(files, folder, "--samples", "50"))
    assert code == 0 and any("--samples 50" in line and "using all 5" in line for line in lines), lines


@pytest.mark.parametrize("value", ["0", "-1"])
def test_samples_below_one_with_images_names_the_option(files: Path, image_module: Any,
                                                        capsys: pytest.CaptureFixture, value: str) -> None:
    """--calib-images with --samples 0 or -1: exit 2 naming --samples."""
    _save(image_module, files / "one" / "a.png", _rgb(0))
    _cli_fails(capsys, _images_argv(files, files / "one", "--samples", value), contains=("--samples",))
