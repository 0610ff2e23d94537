"""The error contract of ``onnx-eprune``: every failure exits 2 (usage) or 1 (runtime), or 130
when interrupted, with one line on stderr that names the problem and what to do; a traceback
only with --debug. The input model is never touched (same bytes, same mtime) and a failed run
leaves no output file and no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import conv_bn_relu_pool_flatten_gemm, intermediate_output
from onnx_eprune.cli import main


def _tree(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


class Case:
    """A folder with model.onnx and calib.npy; ``fail`` runs a command that must fail."""

    def __init__(self, folder, capsys):
        self.dir, self.capsys = folder, capsys
        self.model = folder / "model.onnx"
        self.calib = folder / "calib.npy"
        self.out = folder / "out.onnx"

    def args(self, model=None, calib=None, target=("--sparsity", "0.4"), *extra, out=None):
        return ["prune", str(model or self.model), "-o", str(out or self.out), "--calib", str(calib or self.calib),
                "--device", "cpu", "--method", "l1", *target, "-q", *extra]

    def save_model(self, model: onnx.ModelProto, name: str):
        path = self.dir / name
        path.write_bytes(model.SerializeToString())
        return path

    def save_calib(self, name: str, array=None, **npz):
        path = self.dir / name
        if npz:
            np.savez(path, **npz)
        else:
            np.save(path, array)
        return path

    def _snapshot(self):
        inputs = [p for p in self.dir.rglob("*") if p.is_file()]
        return _tree(self.dir), {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in inputs}

    def fail(self, argv, code=2, *, contains=(), line_start="onnx-eprune: error: "):
        """Run ``argv``: exit ``code``, exactly one stderr line, nothing written, nothing touched."""
        self.capsys.readouterr()
        names, files = self._snapshot()
        status = main(argv)
        captured = self.capsys.readouterr()
        assert status == code, captured.err
        assert "Traceback" not in captured.err
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1, captured.err
        line = lines[0]
        assert line.startswith(line_start), line
        assert len(line) > len(line_start) + 10
        for word in ([contains] if isinstance(contains, str) else contains):
            assert word in line, line
        assert _tree(self.dir) == names, "files left behind"
        for path, (data, mtime) in files.items():  # the model and every other input untouched
            assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, path
        return line

    def succeed(self, argv):
        self.capsys.readouterr()
        status = main(argv)
        captured = self.capsys.readouterr()
        assert status == 0, captured.err
        return captured.err


@pytest.fixture
def case(tmp_path, capsys, calib):
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    return Case(tmp_path, capsys)


def _raw(case) -> bytes:
    return case.model.read_bytes()


def _two_input_model() -> onnx.ModelProto:
    """The CNN fed by Add(x, x2): two graph inputs."""
    m = conv_bn_relu_pool_flatten_gemm(True)
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 16, 16]))
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            if name == "x":
                node.input[i] = "x_sum"
    m.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["x_sum"], name="add_inputs"))
    onnx.checker.check_model(m, full_check=True)
    return m


def _no_prunable_model() -> onnx.ModelProto:
    """Flatten -> Gemm -> output: the only groups are the graph input and the graph output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 768)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"], axis=1, name="flatten"),
                               helper.make_node("Gemm", ["f", "W"], ["y"], transB=1, name="gemm")], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# -- the model -------------------------------------------------------------------------------

def test_model_path_missing(case):
    case.fail(case.args(model=case.dir / "nope.onnx"), contains="not found")


def test_model_path_is_a_directory(case):
    (case.dir / "dir.onnx").mkdir()
    case.fail(case.args(model=case.dir / "dir.onnx"), contains="directory")


@pytest.mark.parametrize("content", [b"not an onnx model at all\n", b"", b"\x93NUMPY\x01\x00garbage" * 8,
                                     b"PK\x03\x04" + bytes(60)])
def test_not_an_onnx_file(case, content):
    (case.dir / "bad.onnx").write_bytes(content)
    case.fail(case.args(model=case.dir / "bad.onnx"), contains="bad.onnx")


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.5, 0.9, 0.999])
def test_truncated_protobuf(case, fraction):
    raw = _raw(case)
    (case.dir / "cut.onnx").write_bytes(raw[:int(len(raw) * fraction)])
    line = case.fail(case.args(model=case.dir / "cut.onnx"), contains="cut.onnx")
    assert "ONNX model" in line and "again" in line


def test_corrupted_protobuf_wire_format(case):
    raw = bytearray(_raw(case))
    raw[2:6] = b"\xff\xff\xff\xff"  # a field header early in the message
    (case.dir / "corrupt.onnx").write_bytes(bytes(raw))
    case.fail(case.args(model=case.dir / "corrupt.onnx"), contains=("corrupt.onnx", "again"))


def test_corrupted_protobuf_that_still_parses(case):
    raw = _raw(case)
    assert b"kernel_shape" in raw
    (case.dir / "corrupt.onnx").write_bytes(raw.replace(b"kernel_shape", b"kern?l_shape", 1))
    case.fail(case.args(model=case.dir / "corrupt.onnx"), contains=("not a valid ONNX model", "kern?l_shape"))


def _edited(edit) -> onnx.ModelProto:
    m = conv_bn_relu_pool_flatten_gemm(True)
    edit(m)
    return m


@pytest.mark.parametrize("name, edit, words", [
    ("dangling", lambda m: m.graph.node[1].input.__setitem__(0, "nowhere"), "nowhere"),
    ("unknown_op", lambda m: setattr(m.graph.node[0], "op_type", "Konv"), "Konv"),
    ("unknown_domain", lambda m: setattr(m.graph.node[0], "domain", "com.example"), "com.example"),
    ("no_opset", lambda m: m.ClearField("opset_import"), "opset"),
    ("future_ir", lambda m: setattr(m, "ir_version", 99), "ir_version"),
])
def test_valid_protobuf_invalid_model(case, name, edit, words):
    path = case.save_model(_edited(edit), f"{name}.onnx")
    case.fail(case.args(model=path), contains=("not a valid ONNX model", words))


def test_valid_protobuf_of_another_kind_or_empty(case):
    tensor = numpy_helper.from_array(np.zeros(3, np.float32), "t")
    (case.dir / "tensor.onnx").write_bytes(tensor.SerializeToString())
    case.fail(case.args(model=case.dir / "tensor.onnx"), contains="tensor.onnx")
    (case.dir / "empty.onnx").write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    case.fail(case.args(model=case.dir / "empty.onnx"), contains="no graph nodes")


def test_model_whose_weights_do_not_fit_is_a_runtime_error(case):
    def narrow_first_conv(m):
        w = m.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, :2], w.name))
    path = case.save_model(_edited(narrow_first_conv), "narrow.onnx")
    case.fail(case.args(model=path), code=1, contains="onnxruntime")


def test_runtime_model_error_is_one_line_on_the_file_descriptor(case):
    """onnxruntime's own logger stays silent: the terminal (file descriptor 2 of a fresh
    process) shows exactly the one error line."""
    import subprocess
    import sys

    def narrow_first_conv(m):
        w = m.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, :2], w.name))
    path = case.save_model(_edited(narrow_first_conv), "narrow.onnx")
    proc = subprocess.run([sys.executable, "-m", "onnx_eprune.cli", *case.args(model=path)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: "), proc.stderr


def test_no_prunable_channels_is_a_runtime_error(case):
    """Documented: nothing to prune is a runtime error (exit 1); nothing is written and
    'onnx-eprune inspect' is named as the way to see why every group is frozen."""
    path = case.save_model(_no_prunable_model(), "gemm_only.onnx")
    case.fail(case.args(model=path), code=1, contains=("no prunable channel group", "inspect"))
    case.fail(case.args(model=path, target=("--keep-ratio", "1.0")), code=1, contains="no prunable")


def _quantized_weights_model() -> onnx.ModelProto:
    """The small CNN with every Conv and Gemm weight stored as int8 behind DequantizeLinear,
    as onnxruntime's QDQ quantization writes it."""
    model = conv_bn_relu_pool_flatten_gemm()
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for init in [i for i in model.graph.initializer if i.name in weights]:
        w = numpy_helper.to_array(init)
        scale = np.float32(np.abs(w).max() / 127)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(init)
        model.graph.initializer.extend([numpy_helper.from_array(q, init.name + "_q"),
                                        numpy_helper.from_array(np.array(scale), init.name + "_s")])
        model.graph.node.insert(0, helper.make_node("DequantizeLinear", [init.name + "_q", init.name + "_s"],
                                                    [init.name], name=init.name + "_dq"))
    onnx.checker.check_model(model, full_check=True)
    return model


def _qlinear_conv_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> QLinearConv (8 channels) -> DequantizeLinear -> Relu -> Conv -> y:
    the QOperator format of onnxruntime's quantize_static."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("s", np.array(0.05, np.float32)), ("zp", np.array(0, np.uint8)),
        ("wq", rng.integers(-60, 60, (8, 3, 3, 3)).astype(np.int8)), ("ws", np.array(0.01, np.float32)),
        ("wzp", np.array(0, np.int8)), ("W2", rng.normal(size=(4, 8, 3, 3)).astype(np.float32))]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s", "zp", "wq", "ws", "wzp", "s", "zp"], ["hq"], pads=[1] * 4),
             helper.make_node("DequantizeLinear", ["hq", "s", "zp"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["y"], pads=[1] * 4)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("build", [_quantized_weights_model, _qlinear_conv_model], ids=["qdq", "qoperator"])
def test_quantized_weights_name_the_remedy(case, build):
    """A quantized model has no float weights to prune: the error says the weights are
    quantized and to prune the float model first, instead of 'non-constant weights' or
    'not understood'."""
    path = case.save_model(build(), "quantized.onnx")
    case.fail(case.args(model=path), code=1,
              contains=("no prunable channel group", "quantized weights", "prune the float model"))


# -- calibration data ------------------------------------------------------------------------

def test_calibration_file_missing(case):
    case.fail(case.args(calib=case.dir / "missing.npy"), contains=("not found", "missing.npy"))


@pytest.mark.parametrize("name, content, words", [
    ("calib.csv", b"1,2,3\n4,5,6\n", "not a .npy or .npz"),
    ("empty.npy", b"", "not a .npy or .npz"),
    ("junk.npy", b"junk" * 10, "not a .npy or .npz"),
    ("damaged.npz", b"PK\x03\x04" + b"\x00" * 40, "damaged .npz"),
    ("header.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "header"),
])
def test_calibration_file_of_the_wrong_format(case, name, content, words):
    (case.dir / name).write_bytes(content)
    case.fail(case.args(calib=case.dir / name), contains=(name, words))


def test_calibration_file_is_the_model_or_a_directory(case):
    case.fail(case.args(calib=case.model), contains="not a .npy or .npz")
    (case.dir / "folder").mkdir()
    case.fail(case.args(calib=case.dir / "folder"), contains="directory")


def test_calibration_file_truncated(case, calib):
    raw = case.calib.read_bytes()
    (case.dir / "cut.npy").write_bytes(raw[:len(raw) // 2])
    case.fail(case.args(calib=case.dir / "cut.npy"), contains=("truncated", "numpy.save"))
    np.savez(case.dir / "full.npz", x=calib)
    raw = (case.dir / "full.npz").read_bytes()
    (case.dir / "cut.npz").write_bytes(raw[:len(raw) // 2])
    case.fail(case.args(calib=case.dir / "cut.npz"), contains="cut.npz")


def test_calibration_file_with_python_objects(case):
    np.save(case.dir / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    case.fail(case.args(calib=case.dir / "objects.npy"), contains="Python objects")


@pytest.mark.parametrize("shape", [(8, 3, 15, 15), (8, 1, 16, 16), (3, 16, 16), (8, 3, 16, 16, 1), (8, 16, 16, 3)])
def test_calibration_of_the_wrong_shape(case, shape):
    path = case.save_calib("shape.npy", np.ones(shape, np.float32))
    line = case.fail(case.args(calib=path))
    assert "shape" in line or "rank" in line


@pytest.mark.parametrize("dtype", ["U1", np.complex64])
def test_calibration_of_a_wrong_dtype(case, calib, dtype):
    path = case.save_calib("dtype.npy", calib.astype(dtype))
    case.fail(case.args(calib=path), contains="dtype")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8, np.bool_])
def test_calibration_of_a_safe_dtype_is_cast(case, calib, dtype):
    """Numbers of another type are cast to the model's float type (documented in the README)."""
    if dtype is np.bool_:
        data = calib > 0
    elif np.dtype(dtype).kind in "iu":
        data = np.clip(calib * 40 + 100, 0, 255).astype(dtype)
    else:
        data = calib.astype(dtype)
    path = case.save_calib("cast.npy", data)
    assert case.succeed(case.args(calib=path)) == ""
    assert case.out.exists()


def test_calibration_beyond_the_model_float_range(case, calib):
    path = case.save_calib("huge.npy", calib.astype(np.float64) * 1e40)
    case.fail(case.args(calib=path), contains=("beyond the range of float32", "rescale"))


def test_too_few_samples(case, calib):
    """Documented: fewer than 16 samples work, with one warning; zero samples is a usage error."""
    path = case.save_calib("one.npy", calib[:1])
    lines = case.succeed(case.args(calib=path)).splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: warning: only 1 calibration sample"), lines
    case.out.unlink()
    path = case.save_calib("none.npy", calib[:0])
    case.fail(case.args(calib=path), contains="no samples")
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--samples", "0"), contains="--samples")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_calibration_with_nan_or_inf(case, calib, value):
    bad = calib.copy()
    bad[5, 2, 3, 4] = value
    path = case.save_calib("bad.npy", bad)
    case.fail(case.args(calib=path), contains="NaN or Inf")


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_all_constant_calibration(case, calib, value):
    path = case.save_calib("flat.npy", np.full_like(calib, value))
    case.fail(case.args(calib=path), contains=("constant", "varying"))


def test_npz_with_the_wrong_input_name(case, calib):
    path = case.save_calib("names.npz", input=calib)
    case.fail(case.args(calib=path), contains=("lacks model input", "x", "input"))


def test_multiple_graph_inputs(case, calib):
    model = case.save_model(_two_input_model(), "two.onnx")
    case.fail(case.args(model=model), contains=("2 inputs", ".npz"))
    case.fail(case.args(model=model, calib=case.save_calib("one.npz", x=calib)), contains="x2")
    case.fail(case.args(model=model, calib=case.save_calib("counts.npz", x=calib, x2=calib[:10])), contains="samples")
    assert case.succeed(case.args(model=model, calib=case.save_calib("both.npz", x=calib, x2=calib[::-1]))) == ""


def test_integer_model_input(case, calib):
    """A model whose input is an integer tensor (a Cast to float inside) cannot be
    calibrated: the error names the input, whatever type the calibration array has."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    x = model.graph.input[0]
    x.type.tensor_type.elem_type = onnx.TensorProto.INT64
    model.graph.node.insert(0, onnx.helper.make_node("Cast", [x.name], ["x_float"], to=onnx.TensorProto.FLOAT))
    for node in model.graph.node[1:]:
        node.input[:] = ["x_float" if i == x.name else i for i in node.input]
    path = case.save_model(model, "ints.onnx")
    for data in (calib, np.round(calib).astype(np.int64)):
        case.fail(case.args(model=path, calib=case.save_calib("c.npy", data)),
                  contains=(f"model input {x.name!r} is not a float tensor",))


# -- targets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [("--sparsity", "1.2"), ("--sparsity", "-0.5"), ("--sparsity", "1"),
                                    ("--flops-reduction", "1.0"), ("--flops-reduction", "-0.1"),
                                    ("--keep-ratio", "0"), ("--keep-ratio", "1.5"), ("--sparsity", "nan"),
                                    ("--sparsity", "inf"), ("--sparsity", "half")])
def test_target_out_of_range(case, target):
    case.fail(case.args(target=target))


def test_target_out_of_range_is_refused_before_any_work(case):
    """The target is checked before the calibration file is even looked at."""
    line = case.fail(case.args(calib=case.dir / "missing.npy", target=("--sparsity", "1.2")))
    assert "sparsity" in line and "[0, 1)" in line


def test_target_the_prunable_part_cannot_reach(case):
    model = case.save_model(intermediate_output(), "feat.onnx")
    line = case.fail(case.args(model=model, target=("--sparsity", "0.9")), code=1, contains="out of reach")
    reach = float(line.split("removes ")[1].split()[0])  # says what it can reach
    assert 0.0 < reach < 0.9


def test_npz_member_with_python_objects(case):
    path = case.save_calib("objects.npz", x=np.array([1, "a", None], dtype=object))
    case.fail(case.args(calib=path), contains=("objects.npz", "Object arrays"))


def test_unreadable_calibration_file_is_a_usage_error(case, monkeypatch):
    """Like an unreadable model (exit 2), with the permissions hint."""
    from onnx_eprune.calibrate import data

    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path) == str(case.calib):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(data, "open", refuse, raising=False)
    case.fail(case.args(), contains=("calib.npy", "Permission denied", "permissions"))


# -- statistics files ------------------------------------------------------------------------

@pytest.fixture
def stats(case):
    """A statistics file of case's model and calibration data."""
    path = case.dir / "s.npz"
    case.succeed(["calibrate", str(case.model), "--calib", str(case.calib), "--stats-out", str(path),
                  "--device", "cpu", "-q"])
    return path


def _stats_args(case, *paths, extra=()):
    argv = case.args(*extra)
    at = argv.index("--calib")
    argv[at:at + 2] = [a for p in paths for a in ("--stats", str(p))]
    return argv


def test_the_same_statistics_twice(case, stats):
    """By the same path or as a copy: its samples would count twice."""
    case.fail(_stats_args(case, stats, stats), contains=("same shard", "twice"))
    copy = case.dir / "copy.npz"
    copy.write_bytes(stats.read_bytes())
    case.fail(_stats_args(case, stats, copy), contains=("s.npz", "copy.npz", "same shard"))


@pytest.mark.parametrize("damage, words", [
    ("truncate", "BadZipFile"), ("calibration", "single array"), ("moment shape", "shapes"), ("rows", "rows"),
])
def test_damaged_statistics_file(case, stats, damage, words):
    if damage == "truncate":
        stats.write_bytes(stats.read_bytes()[:len(stats.read_bytes()) // 2])
    elif damage == "calibration":
        stats = case.calib
    else:
        with np.load(stats) as f:
            arrays = dict(f)
        key = next(k for k in arrays if k.endswith(".cxx" if damage == "moment shape" else ".n"))
        arrays[key] = np.zeros((3, 3)) if damage == "moment shape" else np.array(-5)
        np.savez(stats, **arrays)
    case.fail(_stats_args(case, stats), contains=words)


@pytest.mark.parametrize("difference, words", [
    (("--seed", "1"), ("different --seed or --positions",)), (("--positions", "3"), ("different --seed or --positions",)),
    ("model", ("different models",)),
])
def test_shards_that_do_not_add_up(case, stats, difference, words):
    """Shards calibrated with another seed, other positions or on another model cannot be
    added to this one: their rows were sampled differently or come from other layers."""
    other, calib = case.dir / "other.npz", case.dir / "other.npy"
    np.save(calib, np.load(case.calib)[::-1] + 0.5)  # other samples: another shard, not a copy
    model = case.model
    if difference == "model":
        model = case.dir / "other.onnx"
        onnx.save(conv_bn_relu_pool_flatten_gemm(False), str(model))
        difference = ()
    case.succeed(["calibrate", str(model), "--calib", str(calib), "--stats-out", str(other), "--device", "cpu",
                  "-q", *difference])
    case.fail(_stats_args(case, stats, other), contains=words)


@pytest.mark.parametrize("edit, words", [
    ("format", ("not an onnx-eprune statistics file", "format")), ("samples", ("damaged", "0 samples")),
    ("meta", ("not an onnx-eprune statistics file", "KeyError")),
])
def test_statistics_file_with_a_wrong_record(case, stats, edit, words):
    """A statistics file whose record of what it holds is missing, of another format or
    counts no samples is refused by name."""
    with np.load(stats) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    if edit == "meta":
        del arrays["meta"]
    else:
        meta.update({"format": 99} if edit == "format" else {"samples": 0})
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(stats, **arrays)
    case.fail(_stats_args(case, stats), contains=words)


def test_samples_and_positions_belong_to_calibrate(case, stats):
    for extra in (["--samples", "16"], ["--positions", "3"]):
        case.fail(_stats_args(case, stats, extra=(None, None, ("--sparsity", "0.4"), *extra)),
                  contains=(extra[0], "calibrate"))


# -- the output ------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["model.onnx", "sub/../model.onnx", "./model.onnx"])
def test_output_equal_to_the_input(case, out):
    (case.dir / "sub").mkdir(exist_ok=True)
    case.fail(case.args(out=case.dir / out), contains="input")


def test_output_equal_to_the_input_by_a_link(case):
    os.symlink(case.model, case.dir / "link.onnx")
    case.fail(case.args(out=case.dir / "link.onnx"), contains="input")


def test_output_in_a_missing_directory(case):
    case.fail(case.args(out=case.dir / "no" / "such" / "out.onnx"), contains=("does not exist", "create"))


def test_output_is_a_directory(case):
    (case.dir / "outdir").mkdir()
    case.fail(case.args(out=case.dir / "outdir"), contains="directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_not_writable(case):
    locked = case.dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        case.fail(case.args(out=locked / "out.onnx"), contains="not writable")
    finally:
        locked.chmod(0o755)


def test_output_not_writable_as_the_access_check_sees_it(case, monkeypatch):
    locked = case.dir / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode, **kw))
    case.fail(case.args(out=locked / "out.onnx"), contains=("not writable", "permissions"))


def test_output_refused_by_the_file_system(case, monkeypatch):
    """The access check passes but creating the file fails (read-only mount, ACLs, ...)."""
    import tempfile

    from onnx_eprune.graph import model_io

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(case.dir))
    monkeypatch.setattr(model_io.tempfile, "mkstemp", refuse)
    assert model_io.tempfile is tempfile
    case.fail(case.args(), code=1, contains=("Permission denied", "permissions"))


@pytest.mark.parametrize("argv, words", [
    (["prune", "{m}", "-o", "{d}/calib.npy", "--calib", "{d}/calib.npy"], "-o"),
    (["prune", "{m}", "-o", "{d}/out.onnx", "--report", "{d}/calib.npy", "--calib", "{d}/calib.npy"], "--report"),
    (["prune", "{m}", "-o", "{d}/out.onnx", "--report-dir", "{d}/rep", "--calib", "{d}/rep/report.md"], "--report-dir"),
    (["prune", "{m}", "-o", "{d}/hard.npy", "--calib", "{d}/calib.npy"], "-o"),  # a hard link to --calib
    (["prune", "{m}", "-o", "{d}/s.npz", "--stats", "{d}/s.npz"], "--stats"),
    (["calibrate", "{m}", "--calib", "{d}/calib.npy", "--stats-out", "{d}/calib.npy"], "--stats-out"),
    (["sweep", "{m}", "--calib", "{d}/calib.npy", "--report-dir", "{d}/rep", "--data", "{d}/rep/sweep.json"],
     "--data"),
    (["sweep", "{m}", "--calib", "{d}/calib.npy", "--report-dir", "{d}/rep", "--data", "{d}/calib.npy", "--labels",
      "{d}/rep/sweep.md"], "--labels"),
])
def test_no_output_may_be_an_input(case, argv, words):
    """The calibration, statistics, data and label files are inputs as much as the model."""
    (case.dir / "rep").mkdir()
    for name in ("rep/report.md", "rep/sweep.json", "rep/sweep.md", "s.npz"):
        (case.dir / name).write_bytes(case.calib.read_bytes())
    os.link(case.calib, case.dir / "hard.npy")
    target = ["--sparsity", "0.4"] if argv[0] != "calibrate" else []
    line = case.fail([a.format(m=case.model, d=case.dir) for a in argv] + target + ["--device", "cpu", "-q"],
                     contains=(words, "never overwritten"))
    assert "is the" in line or "is a --stats file" in line


def test_output_that_is_not_a_regular_file(case):
    """A FIFO (or a device such as /dev/null) would be replaced by a regular file."""
    os.mkfifo(case.dir / "pipe")
    case.fail(case.args(out=case.dir / "pipe"), contains=("-o", "not a regular file"))
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report", str(case.dir / "pipe")),
              contains="--report")
    assert (case.dir / "pipe").is_fifo()


@pytest.mark.parametrize("option", ["--report", "--report-dir"])
def test_report_paths_are_checked_before_any_work(case, option):
    case.fail(case.args(None, None, ("--sparsity", "0.4"), option, str(case.dir / "none" / "r")),
              contains="does not exist")


def test_report_path_equal_to_the_input_or_output(case):
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report", str(case.model)), contains="input")
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report", str(case.out)), contains="same file")


def test_report_dir_clashes(case):
    (case.dir / "afile").write_text("x")
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(case.dir / "afile")), contains="file")
    rep = case.dir / "rep"
    rep.mkdir()
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(rep), out=rep / "report.md"),
              contains="-o")
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(rep), "--report",
                        str(rep / "report.json")), contains="--report")


# -- disk full and Ctrl-C --------------------------------------------------------------------

def _full_disk_open(module, monkeypatch, after=1000, exc=None, only=""):
    """``open`` in ``module`` writes ``after`` bytes of a file opened for writing whose name
    contains ``only``, then fails."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:after])
            raise exc or OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "w" in mode and only in os.path.basename(str(path)) else f
    monkeypatch.setattr(module, "open", fake_open, raising=False)


def test_disk_full_while_writing_the_model(case, monkeypatch):
    from onnx_eprune import files  # the model is written through files.write_atomic

    _full_disk_open(files, monkeypatch)
    case.fail(case.args(), code=1, contains=("No space left on device", "free some disk space"))


def test_disk_full_raised_by_the_model_writer(case, monkeypatch):
    from onnx_eprune.graph import model_io

    def full(model, path, keep=()):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(model_io, "save_model", full)
    case.fail(case.args(), code=1, contains=("out.onnx", "No space left on device", "free some disk space"))


def test_disk_full_while_writing_the_report_removes_the_model(case, monkeypatch):
    import onnx_eprune.report as report_module

    class FullJson:
        @staticmethod
        def dumps(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(report_module, "json", FullJson)
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report", str(case.dir / "r.json")), code=1,
              contains=("r.json", "No space left", "free some disk space"))


def test_disk_full_while_writing_the_report_dir(case, monkeypatch):
    from onnx_eprune import files as atomic_files

    _full_disk_open(atomic_files, monkeypatch, after=10, only="report")
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(case.dir / "rep")), code=1,
              contains=("report.json", "No space left"))  # the new folder goes too


def test_interrupted_during_the_run(case, monkeypatch):
    from onnx_eprune.pipeline import Pruner

    def interrupt(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Pruner, "run", interrupt)
    case.fail(case.args(), code=130, contains="interrupted")


def test_interrupted_while_writing(case, monkeypatch):
    from onnx_eprune import files

    _full_disk_open(files, monkeypatch, exc=KeyboardInterrupt())
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report", str(case.dir / "r.json")), code=130,
              contains="interrupted")


def test_interrupted_after_the_model_was_written(case, monkeypatch):
    from onnx_eprune import files as atomic_files

    _full_disk_open(atomic_files, monkeypatch, exc=KeyboardInterrupt())
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(case.dir / "rep")), code=130,
              contains="interrupted")


def _terminate_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises in the main thread before this ends


def test_terminated_during_the_run(case, monkeypatch):
    """SIGTERM unwinds like Ctrl-C (the same clean-up), exits 143 and puts the previous
    handler back."""
    from onnx_eprune.pipeline import Pruner

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Pruner, "run", _terminate_self)
    case.fail(case.args(), code=143, contains="terminated")
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminated_while_writing_leaves_no_temporary_file(case, monkeypatch):
    from onnx_eprune import files

    real_open = open

    def open_then_terminate(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and "report.md" in str(path):  # the model and report.json are written by now
            _terminate_self()
        return f
    monkeypatch.setattr(files, "open", open_then_terminate, raising=False)
    case.fail(case.args(None, None, ("--sparsity", "0.4"), "--report-dir", str(case.dir / "rep")), code=143,
              contains="terminated")


def test_existing_output_survives_a_failed_write(case, monkeypatch):
    """Writing goes to a temporary file renamed into place: an old OUT stays whole."""
    from onnx_eprune import files

    case.out.write_bytes(b"previous result")
    _full_disk_open(files, monkeypatch)
    case.fail(case.args(), code=1, contains="No space left")
    assert case.out.read_bytes() == b"previous result"


# -- --debug, stderr without -q, other commands ----------------------------------------------

@pytest.mark.parametrize("argv, code, words", [
    (lambda case: case.args(model=case.dir / "nope.onnx"), 2, "UsageError: model file not found"),
    (lambda case: case.args() + ["--bogus-flag"], 2, "UsageError: unrecognized arguments"),
    (lambda case: case.args(model=case.save_model(intermediate_output(), "feat.onnx"), target=("--sparsity", "0.9")),
     1, "out of reach"),
])
def test_debug_shows_the_traceback_and_keeps_the_exit_status(case, argv, code, words):
    assert main(argv(case) + ["--debug"]) == code
    err = case.capsys.readouterr().err
    assert err.startswith("Traceback") and words in err.splitlines()[-1]


def test_without_quiet_the_error_is_the_last_and_only_error_line(case, capsys):
    model = case.save_model(intermediate_output(), "feat.onnx")
    argv = [a for a in case.args(model=model, target=("--sparsity", "0.9")) if a != "-q"]
    assert main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert all(line.startswith("onnx-eprune: ") for line in lines)


@pytest.mark.parametrize("argv, words", [
    (["calibrate", "{dir}/nope.onnx", "--calib", "{dir}/calib.npy", "--stats-out", "{dir}/s.npz"], "not found"),
    (["calibrate", "{dir}/model.onnx", "--calib", "{dir}/flat.npy", "--stats-out", "{dir}/s.npz"], "constant"),
    (["calibrate", "{dir}/model.onnx", "--calib", "{dir}/calib.npy", "--stats-out", "{dir}/model.onnx"], "input"),
    (["inspect", "{dir}/bad.onnx"], "bad.onnx"),
    (["inspect", "{dir}/model.onnx", "--calib", "{dir}/model.onnx"], "not a .npy or .npz"),
    (["evaluate", "{dir}/model.onnx", "{dir}/nope.onnx", "--data", "{dir}/calib.npy"], "not found"),
])
def test_other_commands(case, calib, argv, words):
    np.save(case.dir / "flat.npy", np.zeros_like(calib))
    (case.dir / "bad.onnx").write_bytes(b"\x01\x02garbage")
    case.fail([a.format(dir=case.dir) for a in argv] + ["-q"], contains=words)


def test_inspect_says_nothing_about_few_samples(case):
    """inspect probes shapes with one sample: no "few samples" warning."""
    assert main(["inspect", str(case.model), "-q"]) == 0
    assert case.capsys.readouterr().err == ""


def test_a_pruned_model_that_fails_where_the_original_runs_is_refused(monkeypatch, tmp_path, capsys):
    """If onnxruntime fails on the pruned model for calibration samples the original ran on
    (a detector whose pruned network finds no box), the run is refused with an error that
    says so, and nothing is written."""
    import onnx_eprune.pipeline as pipeline
    from onnx_eprune.errors import EPruneError

    real_run = pipeline.run

    def failing(session, *args, **kwargs):
        if session is pruned_session[0]:
            raise EPruneError("onnxruntime failed to run the model: Reshape: input shape {0,364}")
        return real_run(session, *args, **kwargs)

    pruned_session: list = [None]
    real_build = pipeline.build_pruned
    real_make = pipeline.make_session

    def make(model, *args, **kwargs):
        session = real_make(model, *args, **kwargs)
        if model is built[-1]:
            pruned_session[0] = session
        return session

    built: list = [None]

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(pipeline, "run", failing)
    monkeypatch.setattr(pipeline, "make_session", make)
    monkeypatch.setattr(pipeline, "build_pruned", build)
    model_path, calib_path, out = tmp_path / "m.onnx", tmp_path / "c.npy", tmp_path / "out.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(), str(model_path))
    np.save(calib_path, np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32))
    code = main(["prune", str(model_path), "-o", str(out), "--calib", str(calib_path), "--sparsity", "0.5", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert "the pruned model fails on calibration samples that the original runs on" in err
    assert "Reshape" in err and "Traceback" not in err
