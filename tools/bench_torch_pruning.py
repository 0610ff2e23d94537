"""Peer row of the quality benchmark: Torch-Pruning on the same reference models, no fine-tuning.

Rebuilds LeNet-5, VGG-16 (BN) and ResNet-18 (CIFAR stem) from ../shared/reference as PyTorch
modules (state-dict keys and shapes must match the .pt files exactly; logits are checked against
the .onnx exports and the accuracy against the model card), then prunes them with Torch-Pruning's
``BasePruner`` (``MetaPruner`` is its deprecated alias) for every importance criterion, with
uniform per-layer ratios (global_pruning=False) and with global ranking (global_pruning=True).
The ``pruning_ratio`` (channel ratio) is bisected until the fraction of Conv/Linear parameters
(weights + biases) removed is within 1 point of each target. The final classifier's outputs are
never pruned (ignored_layers). Accuracy is measured on the full 10,000-image Fashion-MNIST test
split, preprocessed exactly as the ONNX benchmark feeds the models
(``onnx_eprune.datasets.preprocess``).

TaylorImportance needs a loss: cross-entropy on the first 256 calibration images
(calib28.npy / calib32.npy, drawn from the train split) against the model's OWN argmax predictions
as pseudo-labels (the calibration set has no labels), computed once per model in eval mode.

    OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py            # everything, resumable
    OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --models vgg16 --targets 0.73 0.89
    OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --match macs \
        --out bench/torch_pruning_macs.json --markdown bench/torch_pruning_macs.md   # equal MACs
    python tools/bench_torch_pruning.py --markdown-only               # rebuild bench/torch_pruning.md

Rows are appended to bench/torch_pruning.json as they finish; a row already there (same model,
criterion, global, target) is skipped, so an interrupted run continues where it stopped
(``--fresh`` starts over). Prints one line per run. Needs torch and torch-pruning (tools only:
the onnx_eprune package itself never imports torch).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

if __name__ == "__main__":
    # the models below subclass nn.Module, so torch is needed before argparse can run: say
    # what to install in one line rather than with an ImportError traceback
    try:
        import torch  # noqa: F401
        import torch_pruning  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_torch_pruning.py: {exc.name or exc} is not importable: "
                 "pip install torch==2.13.0 torch-pruning (tools only)")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from importlib.metadata import version as _dist_version

TP_VERSION = _dist_version("torch-pruning")  # tp.__version__ lags the wheel (says 1.6.0 in 1.6.1)

from onnx_eprune.datasets import load_fashion_mnist, preprocess

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
OUT_JSON = ROOT / "bench" / "torch_pruning.json"
OUT_MD = ROOT / "bench" / "torch_pruning.md"
TARGETS = [0.30, 0.50, 0.73, 0.84, 0.89]
# Order matters when time is short: the two targets that matter most come first.
DEFAULT_TARGET_ORDER = [0.73, 0.89, 0.84, 0.50, 0.30]
CRITERIA = ["magnitude_l1", "magnitude_l2", "bn_scale", "taylor", "lamp", "random", "fpgm"]
DEFAULT_CRITERIA = CRITERIA[:-1]  # FPGM is an extra (--criteria ... fpgm), run only when time allows
N_TAYLOR = 256
TOL = 0.01          # parameter target hit within 1 point
SEED = 0


# ------------------------------------------------------------------------------ models
class LeNet5(nn.Module):
    """conv 6@5x5 pad 2, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10 (input 1x28x28)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 5 * 5, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = torch.flatten(x, 1)
        return self.f3(F.relu(self.f2(F.relu(self.f1(x)))))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """13 x (conv 3x3 pad 1 no bias, BN, ReLU) with 5 max-pools, then fc 512, ReLU, fc 10."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = nn.Sequential()
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        o = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(o)) + self.sc(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, 4 stages x 2 basic blocks, GAP, fc 10."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(64)
        layers, c = [], 64
        for cout, s in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(c, cout, s), BasicBlock(cout, cout, 1)]
            c = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.layers(F.relu(self.b1(self.c1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {  # name: (class, input size, calibration file, final classifier getter)
    "lenet5": (LeNet5, 28, "calib28.npy", lambda m: m.f3),
    "vgg16": (VGG16, 32, "calib32.npy", lambda m: m.classifier[2]),
    "resnet18": (ResNet18, 32, "calib32.npy", lambda m: m.fc),
}


def load_model(name: str) -> nn.Module:
    cls = MODELS[name][0]
    net = cls()
    state = torch.load(REFERENCE / f"{name}.pt", map_location="cpu", weights_only=True)
    ours = net.state_dict()
    assert list(state) == list(ours), f"{name}: state-dict keys differ"
    for k in state:
        assert state[k].shape == ours[k].shape, f"{name}: {k} {tuple(state[k].shape)} != {tuple(ours[k].shape)}"
    net.load_state_dict(state, strict=True)
    return net.eval()


def check_against_onnx(name: str, net: nn.Module, x: np.ndarray) -> float:
    """Max |logit difference| between the rebuilt module and the reference .onnx on x; also layer counts."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(REFERENCE / f"{name}.onnx")).graph
    ops = [n.op_type for n in graph.node]
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    n_lin = sum(isinstance(m, nn.Linear) for m in net.modules())
    assert ops.count("Conv") == n_conv, (name, ops.count("Conv"), n_conv)
    assert ops.count("Gemm") + ops.count("MatMul") == n_lin, (name, ops.count("Gemm"), n_lin)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(REFERENCE / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        got = net(torch.from_numpy(x)).numpy()
    return float(np.abs(ref - got).max())


# ------------------------------------------------------------------------------ counting
def conv_linear_params(net: nn.Module) -> int:
    return sum(p.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for p in (m.weight, m.bias) if p is not None)


def macs(net: nn.Module, size: int) -> float:
    ops, _ = tp.utils.count_ops_and_params(net, torch.zeros(1, 1, size, size))
    return float(ops)


@torch.inference_mode()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 200) -> float:
    """Top-1 accuracy; channels-last copies and batches of 200 run ~1.5x faster on 1 CPU thread."""
    net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].contiguous(memory_format=torch.channels_last)
        correct += (net(xb).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def fingerprint(net: nn.Module) -> str:
    """Hash of every tensor in the state dict: two criteria that keep the very same channels give the same
    network (e.g. LAMP and L2 magnitude under local ranking, LAMP being monotone within a layer), whose
    accuracy is then measured once."""
    h = hashlib.sha1()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def collapsed(net: nn.Module) -> bool:
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and (m.out_channels == 0 or m.in_channels == 0):
            return True
        if isinstance(m, nn.Linear) and (m.out_features == 0 or m.in_features == 0):
            return True
    return False


# ------------------------------------------------------------------------------ pruning
def importance(criterion: str):
    imp = tp.importance
    return {
        "magnitude_l1": lambda: imp.MagnitudeImportance(p=1),
        "magnitude_l2": lambda: imp.MagnitudeImportance(p=2),
        "bn_scale": lambda: imp.BNScaleImportance(),
        "taylor": lambda: imp.TaylorImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "fpgm": lambda: imp.FPGMImportance(p=2),
        "random": lambda: imp.RandomImportance(),
    }[criterion]()


def taylor_grads(net: nn.Module, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """d CE(net(x), argmax net(x)) / d params on the calibration images, eval mode (BN stats untouched)."""
    net.eval()
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        pseudo = net(calib).argmax(1)
    loss = F.cross_entropy(net(calib), pseudo)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return grads


def prune_once(base: nn.Module, name: str, criterion: str, global_pruning: bool, ratio: float,
               grads: dict | None) -> nn.Module:
    size = MODELS[name][1]
    net = copy.deepcopy(base)
    if grads is not None:
        for k, p in net.named_parameters():
            if k in grads:
                p.grad = grads[k].clone()
    torch.manual_seed(SEED)  # RandomImportance: same scores for every trial of the bisection
    pruner = tp.pruner.MetaPruner(
        net, torch.zeros(1, 1, size, size), importance=importance(criterion),
        global_pruning=global_pruning, pruning_ratio=ratio,
        ignored_layers=[MODELS[name][3](net)])
    pruner.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


def removed_fraction(net: nn.Module, name: str, match: str, p0: int, m0: float) -> float:
    """Fraction of Conv/Linear parameters (``match="params"``) or of MACs removed."""
    if match == "macs":
        return 1 - macs(net, MODELS[name][1]) / m0
    return 1 - conv_linear_params(net) / p0


def search_ratio(base, name, criterion, global_pruning, target, grads, p0, m0, match, start=None):
    """Bisect pruning_ratio so that the removed fraction of parameters or MACs (``match``) is
    closest to target."""
    lo, hi = 0.0, 0.99
    best = None  # (|err|, ratio, net, removed)
    ratio = start if start is not None else 0.5
    trials = 0
    for _ in range(20):
        trials += 1
        net = prune_once(base, name, criterion, global_pruning, ratio, grads)
        removed = removed_fraction(net, name, match, p0, m0)
        bad = collapsed(net)
        err = abs(removed - target)
        if not bad and (best is None or err < best[0]):
            best = (err, ratio, net, removed)
        if best is not None and best[0] <= TOL / 4:
            break
        if bad or removed > target:
            hi = ratio
        else:
            lo = ratio
        if hi - lo < 1e-4:
            break
        ratio = (lo + hi) / 2
    if best is None:
        raise RuntimeError("every trial collapsed a layer to zero channels")
    return best[1], best[2], best[3], trials


# ------------------------------------------------------------------------------ output
def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)


def key(r: dict) -> tuple:
    return (r["model"], r["criterion"], r["global"], r["target_sparsity"])


def metric_label(rows: list[dict]) -> str:
    return "MACs" if any(r.get("match") == "macs" for r in rows) else "params"


def markdown(rows: list[dict]) -> str:
    runs = [r for r in rows if r["criterion"] != "baseline"]
    unit = metric_label(runs)
    target_text = ("fraction of Conv/Linear parameters (weights + biases)" if unit == "params"
                   else "fraction of multiply-accumulates (`tp.utils.count_ops_and_params`)")
    base = {r["model"]: r for r in rows if r["criterion"] == "baseline"}
    models = [m for m in MODELS if any(r["model"] == m for r in runs)]
    out = ["# Torch-Pruning on the reference models (peer row, no fine-tuning)", "",
           f"torch-pruning {TP_VERSION}, torch {torch.__version__}, CPU, 1 thread. "
           "One-shot `tp.pruner.MetaPruner` (= `BasePruner`), `pruning_ratio` bisected until the removed "
           f"{target_text} is within 1 point of the target; final "
           "classifier outputs never pruned; no fine-tuning. Accuracy on the full 10,000-image Fashion-MNIST "
           "test split fed through `onnx_eprune.datasets.preprocess`. *local* = uniform per-layer ratio "
           "(`global_pruning=False`), *global* = one ranking over all groups (`global_pruning=True`).", "",
           "Taylor: cross-entropy on 256 calibration images (train split, `calib28.npy`/`calib32.npy`) against "
           "the model's own argmax predictions as pseudo-labels (the calibration set has no labels). "
           "BN-scale is not applicable to LeNet-5 (no BatchNorm); on VGG-16 it leaves the fc-512 layer "
           "unpruned (no BN there). Random importance is the sanity floor (seed 0).", ""]
    out += ["## Reference check", "", "| model | card test acc | rebuilt module, full test split | "
            "max abs logit diff vs .onnx (256 test images) |", "|---|---|---|---|"]
    for m, b in base.items():
        out.append(f"| {m} | {100 * b['card_acc']:.2f} | {100 * b['accuracy']:.2f} | {b['onnx_max_abs_diff']:.2e} |")
    out.append("")
    out += ["## Best criterion per model and target", "",
            "Accuracy drop in points vs the card's test accuracy (best over criteria x local/global).", "",
            "| model | " + " | ".join(f"{int(round(100 * t))}% {unit}" for t in TARGETS) + " |",
            "|---|" + "---|" * len(TARGETS)]
    for m in models:
        cells = []
        for t in TARGETS:
            cand = [r for r in runs if r["model"] == m and r["target_sparsity"] == t and "accuracy" in r]
            if not cand:
                cells.append("not run")
                continue
            top = max(r["accuracy"] for r in cand)
            if top <= 0.1001:
                cells.append(f"{100 * (cand[0]['card_acc'] - top):.2f} (every criterion at chance, 10%)")
                continue
            winners = [r for r in cand if r["accuracy"] == top]
            who = " = ".join(f"{r['criterion']} {'global' if r['global'] else 'local'}" for r in winners)
            b = winners[0]
            cells.append(f"**{b['drop_points']:.2f}** ({who}; params -{100 * b['params_removed']:.1f}%, "
                         f"MACs -{100 * b['macs_removed']:.0f}%)")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out.append("")
    for m in models:
        card = next(r["card_acc"] for r in runs if r["model"] == m)
        out += [f"## {m} (card test accuracy {100 * card:.2f}%)", "",
                "Cell: accuracy % (drop in points) / params removed % / MACs removed %. Best per target in bold.", "",
                "| criterion | ranking | " + " | ".join(f"{int(round(100 * t))}%" for t in TARGETS) + " |",
                "|---|---|" + "---|" * len(TARGETS)]
        best = {}
        for t in TARGETS:
            cand = [r for r in runs if r["model"] == m and r["target_sparsity"] == t and "accuracy" in r]
            if cand:
                best[t] = max(r["accuracy"] for r in cand)
        for c in CRITERIA:
            for g in (False, True):
                mine = {r["target_sparsity"]: r for r in runs if r["model"] == m and r["criterion"] == c
                        and r["global"] == g}
                if not mine:
                    continue
                cells = []
                for t in TARGETS:
                    r = mine.get(t)
                    if r is None:
                        cells.append("not run")
                    elif "accuracy" not in r:
                        cells.append(f"failed: {r.get('error', '?')}")
                    else:
                        a = f"{100 * r['accuracy']:.2f} ({r['drop_points']:+.2f})"
                        if r["accuracy"] == best.get(t) and r["accuracy"] > 0.1001:  # no bold when all at chance
                            a = f"**{a}**"
                        miss = "" if r["hit"] else " (target missed)"
                        cells.append(f"{a} / {100 * r['params_removed']:.1f} / {100 * r['macs_removed']:.1f}{miss}")
                out.append(f"| {c} | {'global' if g else 'local'} | " + " | ".join(cells) + " |")
        out.append("")
    missing = []
    for m in MODELS:
        crit = [c for c in DEFAULT_CRITERIA if c != "bn_scale" or m != "lenet5"]
        for t in TARGETS:
            gone = [f"{c} {'global' if g else 'local'}" for c in crit for g in (False, True)
                    if not any(r["model"] == m and r["criterion"] == c and r["global"] == g
                               and r["target_sparsity"] == t for r in runs)]
            if gone:
                what = f"all {len(gone)} criterion x ranking runs" if len(gone) == 2 * len(crit) else ", ".join(gone)
                missing.append(f"{m} at {int(round(100 * t))}% {unit}: {what}")
    ext = [m for m in MODELS if not any(r["model"] == m and r["criterion"] == "fpgm" for r in runs)]
    out += ["## Not run yet", ""]
    if missing:
        out += ["Not reached in the time budget (the script resumes where it stopped):", ""]
        out += [f"- {x}" for x in missing]
    else:
        out.append("Every model x required criterion x ranking x target has a row.")
    if ext:
        out.append(f"- FPGM (extra criterion) not run on: {', '.join(ext)}")
    out.append("")
    out += ["## Commands", "", "```",
            "pip install torch==2.13.0 torch-pruning   # tools only; onnx_eprune itself never imports torch",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py        # all models, criteria, targets; resumable",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --models vgg16 resnet18 --targets 0.73 0.89",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --criteria fpgm   # the extra criterion",
            "python tools/bench_torch_pruning.py --markdown-only           # rebuild this file from the JSON",
            "```", "",
            "The rows here came from (in this order, stopped after ResNet-18 at 73% for the time budget):", "",
            "```",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --models lenet5 "
            "--criteria magnitude_l1 magnitude_l2 taylor lamp random fpgm",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --models vgg16 --targets 0.73",
            "OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --models resnet18 --targets 0.73",
            "python tools/bench_torch_pruning.py --markdown-only",
            "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--targets", nargs="+", type=float, default=DEFAULT_TARGET_ORDER)
    ap.add_argument("--criteria", nargs="+", default=DEFAULT_CRITERIA, choices=CRITERIA)
    ap.add_argument("--ranking", choices=["local", "global", "both"], default="both")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--markdown", type=Path, default=OUT_MD)
    ap.add_argument("--fresh", action="store_true", help="discard rows already in --out")
    ap.add_argument("--markdown-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--match", choices=["params", "macs"], default="params",
                    help="what the targets are fractions of (use a separate --out/--markdown per choice)")
    args = ap.parse_args(argv)

    rows = [] if args.fresh else load_rows(args.out)
    if args.markdown_only:
        args.markdown.write_text(markdown(rows))
        print(f"wrote {args.markdown}")
        return 0
    torch.set_num_threads(args.threads)
    done = {key(r) for r in rows}
    rankings = {"local": [False], "global": [True], "both": [False, True]}[args.ranking]

    images, labels = load_fashion_mnist("test")
    y_test = torch.from_numpy(labels.astype(np.int64))
    print(f"torch {torch.__version__}, torch-pruning {TP_VERSION}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)

    for name in args.models:
        _, size, calib_file, _ = MODELS[name]
        card = json.loads((REFERENCE / f"{name}.json").read_text())
        assert card["input_size"] == size
        x_np = preprocess(images, size)
        x_test = torch.from_numpy(x_np)
        base = load_model(name)
        p0, m0 = conv_linear_params(base), macs(base, size)
        if (name, "baseline", None, 0.0) not in done:
            t0 = time.perf_counter()
            diff = check_against_onnx(name, base, x_np[:256])
            acc = evaluate(base, x_test, y_test)
            ok = abs(acc - card["test_acc"]) <= 0.0005 and diff < 1e-3
            rows.append({"model": name, "criterion": "baseline", "global": None, "target_sparsity": 0.0,
                         "params_removed": 0.0, "macs_removed": 0.0, "accuracy": acc, "card_acc": card["test_acc"],
                         "drop_points": 100 * (card["test_acc"] - acc), "params": p0, "macs": m0,
                         "onnx_max_abs_diff": diff, "ok": ok, "seconds": time.perf_counter() - t0})
            save_rows(args.out, rows)
            done.add((name, "baseline", None, 0.0))
            print(f"{name:9s} baseline  acc {100 * acc:.2f}% (card {100 * card['test_acc']:.2f}%)  "
                  f"onnx max|diff| {diff:.1e}  params {p0}  MACs {m0 / 1e6:.1f}M  {'OK' if ok else 'MISMATCH'}",
                  flush=True)
            if not ok:
                print(f"{name}: rebuilt module does not reproduce the reference", file=sys.stderr)
                return 1
        calib = torch.from_numpy(np.load(REFERENCE / calib_file)[:N_TAYLOR])
        grads = None
        local_ratio = {}  # local ranking: per-layer channel counts depend on the ratio only, not the criterion
        for target in args.targets:
            for c in args.criteria:
                if c == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in base.modules()):
                    continue
                for g in rankings:
                    if (name, c, g, target) in done:
                        continue
                    if c == "taylor" and grads is None:
                        grads = taylor_grads(base, calib)
                    t0 = time.perf_counter()
                    row = {"model": name, "criterion": c, "global": g, "target_sparsity": target,
                           "match": args.match, "card_acc": card["test_acc"]}
                    try:
                        ratio, net, removed, trials = search_ratio(
                            base, name, c, g, target, grads if c == "taylor" else None, p0, m0, args.match,
                            start=local_ratio.get(target) if not g else None)
                        if not g:
                            local_ratio.setdefault(target, ratio)
                        t_prune = time.perf_counter() - t0
                        m1 = macs(net, size)
                        fp = fingerprint(net)
                        same = next((r for r in rows if r.get("fingerprint") == fp and "accuracy" in r), None)
                        acc = same["accuracy"] if same else evaluate(net, x_test, y_test)
                        row.update({"pruning_ratio": ratio, "bisection_trials": trials,
                                    "params_removed": 1 - conv_linear_params(net) / p0, "macs_removed": 1 - m1 / m0,
                                    "accuracy": acc, "drop_points": 100 * (card["test_acc"] - acc),
                                    "hit": abs(removed - target) <= TOL,
                                    "params": conv_linear_params(net), "macs": m1,
                                    "channels": [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                                                 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                                    "fingerprint": fp,
                                    "same_network_as": f"{same['criterion']} {'global' if same['global'] else 'local'}"
                                    if same else None,
                                    "prune_seconds": t_prune, "seconds": time.perf_counter() - t0})
                        line = (f"acc {100 * acc:6.2f}% drop {row['drop_points']:+6.2f}  "
                                f"params -{100 * row['params_removed']:5.1f}%  MACs -{100 * row['macs_removed']:5.1f}%"
                                f"{'' if row['hit'] else ' (MISS)'}  "
                                f"ratio {ratio:.4f}  {row['seconds']:.0f}s"
                                f"{'  (same network as ' + row['same_network_as'] + ')' if same else ''}")
                    except Exception as e:  # record and go on: one failing criterion must not stop the table
                        row.update({"error": f"{type(e).__name__}: {e}"[:300], "seconds": time.perf_counter() - t0})
                        line = f"FAILED {row['error']}"
                    rows.append(row)
                    done.add(key(row))
                    save_rows(args.out, rows)
                    print(f"{name:9s} {c:13s} {'global' if g else 'local ':6s} target {target:.2f}  {line}", flush=True)
        args.markdown.write_text(markdown(rows))
    args.markdown.write_text(markdown(rows))
    print(f"wrote {args.out} and {args.markdown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
