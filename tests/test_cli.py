"""The ``onnx-eprune`` command line through ``onnx_eprune.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from models import conv_bn_relu_pool_flatten_gemm, io_signature, random_input, run_model
from cli_helpers import run_error
from onnx_eprune.cli import main


@pytest.fixture
def files(tmp_path, calib):
    """A model, its calibration data (.npy and .npz) and a second input set on disk."""
    model = tmp_path / "model.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "calib.npy", calib)
    np.savez(tmp_path / "calib.npz", x=calib)
    np.save(tmp_path / "data.npy", random_input(40, seed=5))
    return tmp_path


def prune_args(files, *extra, output="out.onnx"):
    return ["prune", str(files / "model.onnx"), "-o", str(files / output), "--calib", str(files / "calib.npy"),
            "--device", "cpu", "--method", "l1", *extra]


# -- prune -----------------------------------------------------------------------------------

def test_prune_writes_model_and_report(files, capsys):
    argv = prune_args(files, "--sparsity", "0.4", "--report", str(files / "report.json"))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "params" in out
    pruned = onnx.load(str(files / "out.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    original = onnx.load(str(files / "model.onnx"))
    assert io_signature(pruned) == io_signature(original)
    x = random_input(4, seed=9)
    assert run_model(pruned, x)["y"].shape == run_model(original, x)["y"].shape
    report = json.loads((files / "report.json").read_text())
    for key in ("params", "macs", "groups", "provider", "seconds"):
        assert key in report
    assert report["params"]["removed_fraction"] >= 0.4
    assert report["provider"] == "CPUExecutionProvider"
    assert report["output"] == str(files / "out.onnx")


@pytest.mark.parametrize("target", [["--keep-ratio", "0.5"], ["--flops-reduction", "0.3"]])
def test_prune_other_targets_and_npz(files, capsys, target):
    argv = prune_args(files, *target, "-q")
    argv[argv.index("--calib") + 1] = str(files / "calib.npz")
    assert main(argv) == 0
    assert capsys.readouterr().out == ""  # --quiet
    onnx.checker.check_model(onnx.load(str(files / "out.onnx")), full_check=True)


def test_prune_options_reach_the_report(files, capsys):
    argv = prune_args(files, "--keep-ratio", "0.5", "--mode", "oneshot", "--samples", "32", "--seed", "4",
                      "--report", str(files / "r.json"), "-q")
    argv[argv.index("--method") + 1] = "random"
    assert main(argv) == 0
    report = json.loads((files / "r.json").read_text())
    assert (report["method"], report["mode"], report["samples"], report["seed"]) == ("random", "oneshot", 32, 4)


@pytest.mark.parametrize("mode,tuned", [("sequential", True), ("oneshot", False)])
def test_prune_keeps_freed_memory_in_sequential_mode_only(files, capsys, monkeypatch, mode, tuned):
    """The malloc settings (allocator.py) go with sequential runs, where the stages reuse
    freed arrays; one-shot runs peak higher with them and gain no time."""
    import onnx_eprune.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(mode))
    assert main(prune_args(files, "--keep-ratio", "0.5", "--mode", mode, "-q")) == 0
    assert calls == ([mode] if tuned else [])


def test_missing_model(files, capsys):
    argv = prune_args(files, "--sparsity", "0.4")
    argv[1] = str(files / "nope.onnx")
    assert "not found" in run_error(capsys, argv)


def test_model_is_a_directory(files, capsys):
    (files / "dir.onnx").mkdir()
    argv = prune_args(files, "--sparsity", "0.4")
    argv[1] = str(files / "dir.onnx")
    assert "directory" in run_error(capsys, argv)


@pytest.mark.parametrize("content", [b"\x00\xffgarbage\x13\x37" * 50, b"", b"not an onnx model at all\n"])
def test_garbage_model(files, capsys, content):
    (files / "bad.onnx").write_bytes(content)
    argv = prune_args(files, "--sparsity", "0.4")
    argv[1] = str(files / "bad.onnx")
    run_error(capsys, argv)
    assert not (files / "out.onnx").exists()


@pytest.mark.parametrize("target", [["--sparsity", "1.2"], ["--sparsity", "-0.5"], ["--keep-ratio", "0"],
                                    ["--flops-reduction", "1"], ["--sparsity", "abc"], ["--sparsity", "nan"],
                                    ["--sparsity", "0.3", "--keep-ratio", "0.5"], []])
def test_bad_target(files, capsys, target):
    run_error(capsys, prune_args(files, *target))
    assert not (files / "out.onnx").exists()


@pytest.mark.parametrize("extra", [["--method", "magic"], ["--mode", "twice"], ["--samples", "0"],
                                   ["--batch-size", "0"], ["--device", "tpu"], ["--bogus-flag"],
                                   ["--refit-ridge", "-1"], ["--refit-ridge", "nan"], ["--refit-ridge", "some"]])
def test_bad_options(files, capsys, extra):
    run_error(capsys, prune_args(files, "--keep-ratio", "0.5", *extra))


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], "--batch-size"), (["--round-to", "0"], "--round-to"),
    (["--scale", "0"], "--scale"), (["--scale", "nan"], "--scale"),
    (["--no-reconstruct", "--refit-ridge", "0.1"], "--no-reconstruct"),
    (["--calib-random", "8", "--size", "32"], "fixes the height to 16"),
])
def test_bad_options_are_named(files, capsys, extra, words):
    argv = prune_args(files, "--keep-ratio", "0.5", *extra)
    if "--calib-random" in extra:
        del argv[argv.index("--calib"):argv.index("--calib") + 2]
    assert words in run_error(capsys, argv)
    assert not (files / "out.onnx").exists()


def test_more_samples_than_there_are(files, capsys):
    assert main(prune_args(files, "--keep-ratio", "0.5", "--samples", "1000")) == 0
    assert "--samples 1000: the calibration data holds 64 samples; using all 64" in capsys.readouterr().err


def test_no_reconstruct_takes_no_ridge_but_runs(files, capsys):
    assert main(prune_args(files, "--keep-ratio", "0.5", "--no-reconstruct", "-q")) == 0


@pytest.mark.parametrize("command, words", [("inspect", "more memory"), ("prune", "--samples")])
def test_out_of_memory_hint_fits_the_command(files, capsys, monkeypatch, command, words):
    import onnx_eprune.cli as cli

    def exhausted(args):
        raise MemoryError
    monkeypatch.setitem(cli.COMMANDS, command, exhausted)
    argv = ["inspect", str(files / "model.onnx")] if command == "inspect" else prune_args(files, "--sparsity", "0.4")
    line = run_error(capsys, argv, code=1)
    assert "out of memory" in line and words in line
    assert command != "inspect" or "--batch-size" not in line


def test_a_failed_scratch_write_names_the_file(files, capsys, monkeypatch):
    """A write() failure carries no file name (File too large, from ulimit -f): the
    scratch file adds its own."""
    import errno

    from onnx_eprune.calibrate import engine
    from onnx_eprune.calibrate.scratch import ScratchFile

    def too_large(self, block):
        raise OSError(errno.EFBIG, "File too large")
    monkeypatch.setattr(engine, "CACHE_MEMORY_BYTES", 0)  # every cached tensor goes to a scratch file
    monkeypatch.setattr(ScratchFile, "_write", too_large)
    line = run_error(capsys, prune_args(files, "--sparsity", "0.4"), code=1)
    assert ".bin: File too large" in line and "ulimit" in line


@pytest.mark.parametrize("value", [-0.1, float("inf"), "some", True])
def test_bad_refit_ridge_from_python(value):
    from onnx_eprune.errors import UsageError
    from onnx_eprune.config import PruneConfig

    with pytest.raises(UsageError, match="refit-ridge"):
        PruneConfig(sparsity=0.5, refit_ridge=value).check()


def test_auto_refit_ridge_reaches_the_report(files, capsys):
    argv = prune_args(files, "--sparsity", "0.4", "--refit-ridge", "auto", "--report-dir", str(files / "rep"), "-q")
    argv[argv.index("--method") + 1] = "entropic"
    assert main(argv) == 0
    report = json.loads((files / "rep" / "report.json").read_text())
    from onnx_eprune.select.reconstruct import AUTO_RIDGES
    assert report["refit_ridge"] == "auto" and set(report["refit_ridges"].values()) <= set(AUTO_RIDGES)
    assert "re-fit: yes (ridge auto: " in (files / "rep" / "report.md").read_text()


def test_few_rows_per_input(files, capsys):
    """64 samples for a Gemm reading 16 features per kept channel: under a fixed ridge the
    report, report.md and the log name it and suggest --refit-ridge auto; the default
    cross-validates its ridge instead. Either way the fidelity on calibration samples comes
    with the note that the re-fit was fitted to them."""
    argv = prune_args(files, "--sparsity", "0.4", "--refit-ridge", "0.01", "--report-dir", str(files / "rep"))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "--refit-ridge auto chooses their ridge" in err and "the re-fit was fitted to these samples" in out
    thin = json.loads((files / "rep" / "report.json").read_text())["thin_refits"]
    assert thin and all(v["rows"] == 64 < 2 * v["features"] and not v["cross_validated"] for v in thin.values())
    markdown = (files / "rep" / "report.md").read_text()
    assert "re-fitted on fewer than 2 rows per kept input: `" in markdown
    assert "calibration samples (the re-fit was fitted to these samples" in markdown
    assert main(prune_args(files, "--sparsity", "0.4", "--report-dir", str(files / "a"), output="a.onnx")) == 0
    out, err = capsys.readouterr()
    assert "--refit-ridge auto" not in err and "the re-fit was fitted to these samples" in out
    report = json.loads((files / "a" / "report.json").read_text())
    assert report["refit_ridge"] == "auto-thin" and set(report["refit_ridges"]) == set(report["thin_refits"]) == set(thin)
    assert all(v["cross_validated"] for v in report["thin_refits"].values())
    markdown = (files / "a" / "report.md").read_text()
    assert "re-fit: yes (ridge auto-thin: " in markdown and "re-fitted on fewer than" not in markdown


def test_output_is_the_input(files, capsys):
    before = (files / "model.onnx").read_bytes()
    argv = prune_args(files, "--sparsity", "0.4", output="model.onnx")
    assert "input" in run_error(capsys, argv)
    assert (files / "model.onnx").read_bytes() == before


def test_output_is_the_input_by_another_path(files, capsys):
    before = (files / "model.onnx").read_bytes()
    (files / "sub").mkdir()
    argv = prune_args(files, "--sparsity", "0.4", output="sub/../model.onnx")
    run_error(capsys, argv)
    assert (files / "model.onnx").read_bytes() == before


def test_report_is_the_input(files, capsys):
    before = (files / "model.onnx").read_bytes()
    run_error(capsys, prune_args(files, "--sparsity", "0.4", "--report", str(files / "model.onnx")))
    assert (files / "model.onnx").read_bytes() == before


def test_report_is_the_output(files, capsys):
    status = main(prune_args(files, "--keep-ratio", "0.5", "-q", "--report", str(files / "out.onnx")))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err


def test_missing_output_folder(files, capsys):
    argv = prune_args(files, "--sparsity", "0.4", output="no/such/folder/out.onnx")
    assert "folder" in run_error(capsys, argv)


def test_output_is_a_directory(files, capsys):
    (files / "outdir").mkdir()
    run_error(capsys, prune_args(files, "--sparsity", "0.4", output="outdir"))


def test_missing_report_folder(files, capsys):
    run_error(capsys, prune_args(files, "--sparsity", "0.4", "--report", str(files / "none" / "r.json")))
    assert not (files / "out.onnx").exists()


def _calib_error(files, capsys, name, array=None, npz=None):
    path = files / name
    if npz is not None:
        np.savez(path, **npz)
    else:
        np.save(path, array)
    argv = prune_args(files, "--sparsity", "0.4")
    argv[argv.index("--calib") + 1] = str(path)
    line = run_error(capsys, argv)
    assert not (files / "out.onnx").exists()
    return line


@pytest.mark.parametrize("shape", [(8, 3, 15, 15), (8, 1, 16, 16), (3, 16, 16), (8, 3, 16, 16, 1)])
def test_calibration_with_wrong_shape(files, capsys, shape):
    line = _calib_error(files, capsys, "wrong.npy", np.zeros(shape, np.float32))
    assert "shape" in line or "rank" in line


def test_calibration_with_nan(files, capsys, calib):
    bad = calib.copy()
    bad[3, 1, 2, 2] = np.nan
    assert "NaN" in _calib_error(files, capsys, "nan.npy", bad)


def test_calibration_with_inf(files, capsys, calib):
    bad = calib.copy()
    bad[0, 0, 0, 0] = np.inf
    _calib_error(files, capsys, "inf.npy", bad)


def test_npz_with_wrong_input_name(files, capsys, calib):
    assert "x" in _calib_error(files, capsys, "wrong.npz", npz={"input": calib})


def test_calibration_with_strings(files, capsys):
    _calib_error(files, capsys, "str.npy", np.array([["a"] * 3] * 2))


def test_calibration_file_missing_or_garbage(files, capsys):
    argv = prune_args(files, "--sparsity", "0.4")
    argv[argv.index("--calib") + 1] = str(files / "missing.npy")
    assert "not found" in run_error(capsys, argv)
    (files / "junk.npy").write_bytes(b"junk" * 10)
    argv[argv.index("--calib") + 1] = str(files / "junk.npy")
    run_error(capsys, argv)


def test_empty_calibration(files, capsys):
    _calib_error(files, capsys, "empty.npy", np.zeros((0, 3, 16, 16), np.float32))


def test_unreachable_target_is_a_runtime_error(files, capsys):
    from models import intermediate_output

    onnx.save(intermediate_output(), str(files / "model.onnx"))
    line = run_error(capsys, prune_args(files, "--sparsity", "0.9"), code=1)
    assert "out of reach" in line


def test_no_command_and_help(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "prune" in capsys.readouterr().out


def test_unknown_command(capsys):
    run_error(capsys, ["squash", "model.onnx"])


# -- inspect ---------------------------------------------------------------------------------

def test_inspect_table(files, capsys):
    assert main(["inspect", str(files / "model.onnx")]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["group", "channels", "status"]
    assert sum(1 for line in lines[1:-1] if "prunable" in line.split()) == 3
    assert "3 prunable groups" in lines[-1]
    assert "frozen" in out  # the output Gemm's group


@pytest.mark.parametrize("how", [["--input-shape", "2,3,16,16"], ["--calib", "calib.npy"], []])
def test_inspect_json(files, capsys, how):
    how = [str(files / h) if h.endswith(".npy") else h for h in how]
    assert main(["inspect", str(files / "model.onnx"), "--json", *how]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prunable_groups"] == 3
    assert summary["params"] > 0 and summary["macs"] > 0
    assert 0.0 < summary["prunable_mac_fraction"] <= 1.0
    prunable = [g for g in summary["groups"] if g["prunable"]]
    assert sorted(g["channels"] for g in prunable) == [8, 16, 32]
    assert all(g["frozen"] is None for g in prunable)
    assert all(g["frozen"] for g in summary["groups"] if not g["prunable"])


def test_inspect_frozen_reason(tmp_path, capsys):
    from models import unknown_op

    onnx.save(unknown_op("LRN"), str(tmp_path / "lrn.onnx"))
    assert main(["inspect", str(tmp_path / "lrn.onnx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prunable_groups"] == 1
    assert any(g["frozen"] and "LRN" in g["frozen"] for g in summary["groups"])


def test_inspect_shows_rows_per_channel_of_blocked_producers(tmp_path, capsys):
    """Producers added to a channel multiplier's outputs go m rows per channel: the table
    marks them (x m), the JSON lists every producer's rows."""
    from models import multiplier_sum

    onnx.save(multiplier_sum(width=4), str(tmp_path / "m.onnx"))
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "prunable" in line.split())
    assert "conv1, pw (x2), wide (x4)" in row
    assert main(["inspect", str(tmp_path / "m.onnx"), "--json"]) == 0
    group = next(g for g in json.loads(capsys.readouterr().out)["groups"] if g["prunable"])
    assert dict(zip(group["producers"], group["producer_rows"])) == {"conv1": 1, "pw": 2, "wide": 4}


def test_report_shows_rows_per_channel_of_blocked_producers(tmp_path, calib):
    """The pruning report lists each producer's rows per channel, and report.md marks them."""
    from models import multiplier_sum

    onnx.save(multiplier_sum(width=4), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", calib)
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--calib",
                 str(tmp_path / "calib.npy"), "--keep-ratio", "0.5", "--method", "l1", "--device", "cpu", "-q",
                 "--report-dir", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    group = next(g for g in report["groups"] if "kept_channels" in g)
    assert dict(zip(group["producers"], group["producer_rows"])) == {"conv1": 1, "pw": 2, "wide": 4}
    assert "conv1, pw (x2), wide (x4)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("option, value", [
    ("--scale", "1/0"), ("--scale", "0"), ("--scale", "inf"), ("--scale", "abc"), ("--mean", "0.5,a"),
    ("--std", "x"), ("--size", "0"), ("--size", "16,16,3"), ("--size", "a"), ("--calib-random", "0"),
    ("--calib-random", "many"),
])
def test_image_option_values_are_checked(files, capsys, option, value):
    """A value the image options cannot read is a one-line usage error that names the option
    and the value, before any model is read."""
    argv = ["prune", str(files / "missing.onnx"), "-o", str(files / "out.onnx"), "--sparsity", "0.5"]
    argv += ["--calib-random", value] if option == "--calib-random" else ["--calib-images", str(files), option, value]
    line = run_error(capsys, argv)
    assert option in line and repr(value) in line
    assert not (files / "out.onnx").exists()


def test_image_option_values_are_read():
    """``--scale`` takes a fraction, ``--mean`` / ``--std`` one value or one per channel and
    ``--size`` H or H,W."""
    from onnx_eprune.cli_parser import build_parser

    args = build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--calib-images", "d", "--sparsity", "0.5",
                                      "--scale", "1/127.5", "--mean", "0.485,0.456,0.406", "--std", "0.5",
                                      "--size", "224,160"])
    assert args.scale == 1 / 127.5 and args.mean == (0.485, 0.456, 0.406) and args.std == (0.5,)
    assert args.size == (224, 160)
    assert build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--calib-images", "d", "--sparsity", "0.5",
                                      "--size", "96"]).size == (96, 96)


def test_inspect_of_dynamic_input_needs_a_shape(tmp_path, capsys):
    """A model whose input height and width are dynamic cannot be inspected without
    --input-shape or --calib: the error names the input and its dimensions."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    line = run_error(capsys, ["inspect", str(tmp_path / "dyn.onnx")])
    assert "'x'" in line and "--input-shape" in line and "dynamic" in line
    assert main(["inspect", str(tmp_path / "dyn.onnx"), "--input-shape", "1,3,16,16", "-q"]) == 0


def test_calibrate_says_what_it_wrote(files, capsys):
    """Without -q, calibrate prints how many layers and samples its statistics cover."""
    out = files / "s.npz"
    assert main(["calibrate", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), "--stats-out", str(out),
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    samples = len(np.load(files / "calib.npy"))
    assert line.startswith("wrote statistics of ") and f"over {samples} samples to {out}" in line


def test_inspect_errors(files, capsys):
    run_error(capsys, ["inspect", str(files / "missing.onnx")])
    (files / "bad.onnx").write_bytes(b"\x01\x02garbage")
    run_error(capsys, ["inspect", str(files / "bad.onnx")])
    run_error(capsys, ["inspect", str(files / "model.onnx"), "--input-shape", "a,b"])


@pytest.mark.parametrize("shape", ["1,3,-16,16", "1,3,0,16", "1,1,16,16", "1,3,16"])
def test_inspect_input_shape_errors_name_the_option(files, capsys, shape):
    assert "--input-shape" in run_error(capsys, ["inspect", str(files / "model.onnx"), "--input-shape", shape])


# -- evaluate --------------------------------------------------------------------------------

@pytest.fixture
def pruned_pair(files, capsys):
    assert main(prune_args(files, "--keep-ratio", "0.5", "-q")) == 0
    capsys.readouterr()
    return files / "model.onnx", files / "out.onnx"


def test_evaluate_json(files, pruned_pair, capsys):
    original, pruned = pruned_pair
    labels = np.arange(40) % 10
    np.save(files / "labels.npy", labels)
    argv = ["evaluate", str(original), str(pruned), "--data", str(files / "data.npy"), "--labels",
            str(files / "labels.npy"), "--device", "cpu", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 40
    agreement = result["outputs"]["y"]["top1_agreement"]
    assert 0.0 <= agreement <= 1.0
    assert result["outputs"]["y"]["relative_error"] >= 0.0
    assert set(result["accuracy"]) == {"original", "pruned", "per_class"}
    assert result["size"]["pruned"]["params"] < result["size"]["original"]["params"]


def test_evaluate_batch_by_batch_gives_the_figures_of_the_whole_outputs(files, pruned_pair, monkeypatch):
    """With room for 7 samples' outputs per batch (segmentation outputs take MBs a sample),
    the fidelity and accuracy come out as computed on all 40 samples' outputs at once."""
    import onnx_eprune
    from onnx_eprune.calibrate import session

    original, pruned = pruned_pair
    data = np.load(files / "data.npy")
    labels = np.arange(40) % 10
    ref = run_model(onnx.load(str(original)), data)["y"].astype(np.float64)
    got = run_model(onnx.load(str(pruned)), data)["y"].astype(np.float64)
    monkeypatch.setattr(session, "BATCH_BYTES", 7 * 4 * ref.shape[1])
    result = onnx_eprune.evaluate(str(original), str(pruned), data, labels=labels, device="cpu")
    fid = result["outputs"]["y"]
    assert fid["relative_error"] == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-9)
    cosine = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert fid["cosine"] == pytest.approx(np.mean(cosine), rel=1e-9)
    assert fid["top1_agreement"] == np.mean(ref.argmax(1) == got.argmax(1))
    per_class = {"samples": [4] * 10, **{which: [float(np.mean(out.argmax(1)[labels == k] == k)) for k in range(10)]
                                         for which, out in (("original", ref), ("pruned", got))}}
    assert result["accuracy"] == {"original": np.mean(ref.argmax(1) == labels),
                                  "pruned": np.mean(got.argmax(1) == labels), "per_class": per_class}


def test_evaluate_table_and_identity(files, pruned_pair, capsys):
    original, pruned = pruned_pair
    assert main(["evaluate", str(original), str(original), "--data", str(files / "data.npy"),
                 "--device", "cpu", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["outputs"]["y"]["top1_agreement"] == 1.0
    assert same["outputs"]["y"]["relative_error"] == 0.0
    assert main(["evaluate", str(original), str(pruned), "--data", str(files / "data.npy"), "--device", "cpu"]) == 0
    assert "top-1 agreement" in capsys.readouterr().out


def test_evaluate_table_states_the_accuracy(files, pruned_pair, capsys):
    """With --labels the table's accuracy line gives both models' accuracy, as --json does."""
    original, pruned = pruned_pair
    np.save(files / "labels.npy", np.arange(40) % 10)
    argv = ["evaluate", str(original), str(pruned), "--data", str(files / "data.npy"), "--labels",
            str(files / "labels.npy"), "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert main(argv) == 0
    line, = (ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy:"))
    assert f"original {100 * acc['original']:.2f}%, pruned {100 * acc['pruned']:.2f}%" in line


def test_evaluate_names_the_class_that_lost_most(files, pruned_pair, capsys):
    """The per-class accuracy (a class without samples: null) and the text line naming the
    class whose accuracy fell most, the first of equals; where none fell, it says so."""
    original, pruned = pruned_pair
    data = np.load(files / "data.npy")
    ref, got = (run_model(onnx.load(str(m)), data)["y"].argmax(1) for m in (original, pruned))
    labels = ref.copy()  # what the original predicts: the classes the pruned model disagrees on lose accuracy
    labels[labels == 9] = 8  # no sample of class 9
    np.save(files / "labels.npy", labels)
    argv = ["evaluate", str(original), str(pruned), "--data", str(files / "data.npy"), "--labels",
            str(files / "labels.npy"), "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    per = json.loads(capsys.readouterr().out)["accuracy"]["per_class"]
    assert per["samples"] == np.bincount(labels, minlength=10).tolist() and per["samples"][9] == 0
    assert per["original"][9] is None and per["pruned"][9] is None
    drops = [(np.mean(ref[labels == k] == k) - np.mean(got[labels == k] == k), k) for k in range(9)
             if np.any(labels == k)]
    worst = min(drops, key=lambda d: (-d[0], d[1]))
    assert worst[0] > 0
    assert main(argv) == 0
    line, = (ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("largest drop of one class:"))
    assert line.startswith(f"largest drop of one class: class {worst[1]}, ")
    assert f"({-100 * worst[0]:+.2f} points on {per['samples'][worst[1]]} samples)" in line
    assert main(["evaluate", str(original), str(original), "--data", str(files / "data.npy"), "--labels",
                 str(files / "labels.npy"), "--device", "cpu"]) == 0
    assert "no class lost accuracy" in capsys.readouterr().out


def test_evaluate_errors(files, pruned_pair, capsys):
    original, pruned = pruned_pair
    data = str(files / "data.npy")
    run_error(capsys, ["evaluate", str(original), str(files / "missing.onnx"), "--data", data])
    run_error(capsys, ["evaluate", str(original), str(pruned), "--data", str(files / "missing.npy")])
    np.save(files / "labels.npy", np.zeros(7, np.int64))
    run_error(capsys, ["evaluate", str(original), str(pruned), "--data", data, "--labels", str(files / "labels.npy"),
                       "--device", "cpu"])
    run_error(capsys, ["evaluate", str(original), str(pruned)])  # --data is required


@pytest.mark.parametrize("labels, words", [
    (np.full(40, 0.5), "0.5"), (np.full(40, -1), "negative"), (np.full(40, 10), "10 classes"),
    (np.full(40, np.nan), "nan"), (np.array(["cat"] * 40), "integer"), (np.ones(40, bool), "bool"),
    (np.eye(10)[np.arange(40) % 10], "one class index per sample"),
])
def test_evaluate_refuses_labels_that_are_no_class_indices(files, pruned_pair, capsys, labels, words):
    np.save(files / "labels.npy", labels)
    line = run_error(capsys, ["evaluate", *map(str, pruned_pair), "--data", str(files / "data.npy"), "--labels",
                              str(files / "labels.npy"), "--device", "cpu"])
    assert words in line


@pytest.mark.parametrize("name, content", [
    ("labels.npz", None), ("labels.txt", b"1 2 3\n"), ("objects.npy", None), ("missing.npy", None),
])
def test_evaluate_refuses_label_files_it_cannot_read(files, pruned_pair, capsys, name, content):
    path = files / name
    if name.endswith(".npz"):
        np.savez(path, y=np.arange(40) % 10)
    elif name == "objects.npy":
        np.save(path, np.array([1, None] * 20, dtype=object), allow_pickle=True)
    elif content is not None:
        path.write_bytes(content)
    line = run_error(capsys, ["evaluate", *map(str, pruned_pair), "--data", str(files / "data.npy"), "--labels",
                              str(path), "--device", "cpu"])
    assert name in line


def test_evaluate_names_the_model_that_does_not_fit(files, pruned_pair, capsys):
    original, pruned = pruned_pair
    renamed = onnx.load(str(pruned))
    renamed.graph.output[0].name = "probs"
    renamed.graph.node[-1].output[0] = "probs"
    onnx.save(renamed, str(files / "renamed.onnx"))
    line = run_error(capsys, ["evaluate", str(original), str(files / "renamed.onnx"), "--data",
                              str(files / "data.npy")])
    assert "outputs differ" in line and "probs" in line and "renamed.onnx" in line
    wide = onnx.load(str(pruned))
    for axis in (2, 3):
        wide.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = 32
    onnx.save(wide, str(files / "wide.onnx"))
    line = run_error(capsys, ["evaluate", str(original), str(files / "wide.onnx"), "--data", str(files / "data.npy")])
    assert line.startswith("onnx-eprune: error: --data for the pruned model ") and "wide.onnx" in line


# -- demo (the full demo prunes LeNet-5 for several seconds: only its refusals here) ---------

def test_demo_refuses_a_missing_output_folder(tmp_path, capsys):
    assert "folder" in run_error(capsys, ["demo", "-o", str(tmp_path / "none" / "lenet.onnx"), "--device", "cpu"])


@pytest.mark.parametrize("name", ["lenet5_fmnist.onnx", "fashion_mnist_sample.npz"])
def test_demo_never_writes_over_its_shipped_files(tmp_path, capsys, monkeypatch, name):
    """Copies stand in for the shipped files: the real ones are never written to."""
    from onnx_eprune import demo

    for shipped in ("lenet5_fmnist.onnx", "fashion_mnist_sample.npz"):
        (tmp_path / shipped).write_bytes(demo.shipped(shipped).read_bytes())
    monkeypatch.setattr(demo, "shipped", lambda file: tmp_path / file)
    before = (tmp_path / name).read_bytes()
    (tmp_path / "sub").mkdir()
    assert "shipped" in run_error(capsys, ["demo", "-o", str(tmp_path / "sub" / ".." / name), "--device", "cpu"])
    assert (tmp_path / name).read_bytes() == before


def test_demo_refuses_a_bad_sparsity(tmp_path, capsys):
    run_error(capsys, ["demo", "-o", str(tmp_path / "lenet.onnx"), "--sparsity", "1.5", "--device", "cpu"])
    assert not (tmp_path / "lenet.onnx").exists()


def test_external_data_in_and_out(tmp_path, calib, capsys, monkeypatch):
    """A model whose weights live in an external file is read; above the protobuf limit
    (lowered here to a few kilobytes) onnxruntime gets the weights as in-memory external
    initializers, and the pruned model is written with external data too, next to it, and
    loads and runs from there."""
    from onnx_eprune.calibrate import session
    from onnx_eprune.graph import model_io

    model = conv_bn_relu_pool_flatten_gemm(True)
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (src.parent / "weights.bin").stat().st_size > 0.5 * model.ByteSize()
    np.save(tmp_path / "calib.npy", calib)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
    monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    assert main(["prune", str(src), "-o", str(out), "--calib", str(tmp_path / "calib.npy"), "--keep-ratio", "0.5",
                 "--device", "cpu", "--method", "l1", "-q"]) == 0
    assert (out.parent / "pruned.onnx.data").exists()
    assert out.stat().st_size < 4096  # the graph only; weights are in the .data file
    pruned = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    x = random_input(4, seed=9)
    assert run_model(pruned, x)["y"].shape == run_model(onnx.load(str(src)), x)["y"].shape
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]


def test_sessions_of_models_above_the_protobuf_limit_compute_the_same(calib, monkeypatch):
    """With the limit lowered, every session gets its weights as in-memory external
    initializers: the same statistics, hence the same pruned model."""
    from onnx_eprune.calibrate import session
    from onnx_eprune.graph import model_io
    from onnx_eprune.pipeline import prune

    model = conv_bn_relu_pool_flatten_gemm(True)
    small = prune(model, calib, sparsity=0.4, device="cpu").model.SerializeToString(deterministic=True)
    built = []
    real = session._without_large_initializers
    monkeypatch.setattr(session, "_without_large_initializers", lambda m: built.append(1) or real(m))
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 4096)
    monkeypatch.setattr(session, "_LARGE_INITIALIZER", 256)
    large = prune(model, calib, sparsity=0.4, device="cpu").model.SerializeToString(deterministic=True)
    assert built and large == small


def test_outputs_get_the_usual_permissions(files):
    """Atomic writes go through temporary files, which are owner-only; the outputs get what
    a plain open() would give them (the umask's), so a model server can read them."""
    import os
    import stat

    report = files / "r.json"
    assert main(prune_args(files, "--sparsity", "0.3", "--report", str(report), "-q")) == 0
    mask = os.umask(0)
    os.umask(mask)
    for path in (files / "out.onnx", report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
