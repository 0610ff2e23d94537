"""Does the default re-fit ridge (auto-thin) prune a model to the same bytes as a fixed one?

    python tools/same_as_fixed_ridge.py ../shared/reference/lenet5.onnx ../shared/reference/calib28.npy \\
        --sparsity 0.3 0.5 0.73 --flops 0.3 0.73 [--ridge 0.01] [--modes sequential oneshot]

``auto-thin`` cross-validates the ridge only of consumers fitted on fewer than 2 rows per
kept feature (with at most 2048 of them). Where no consumer is thin the two runs must write
the same model (compared without the provenance metadata entry, which records the ridge
asked for), and then tables measured with the fixed ridge are also the default's. One
line per run (``same``, or ``DIFFERENT`` with the layers the default cross-validated), then
the counts.
"""

from __future__ import annotations

import argparse

import onnx

import onnx_eprune
from onnx_eprune.graph.model_io import PROVENANCE_KEY


def _network_bytes(model: onnx.ModelProto) -> bytes:
    """``model`` serialised without its provenance entry, which records the ridge asked for
    (``refit_ridge``) and so always differs between the two runs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [p for p in copy.metadata_props if p.key != PROVENANCE_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return copy.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("--sparsity", nargs="*", type=float, default=[])
    ap.add_argument("--flops", nargs="*", type=float, default=[])
    ap.add_argument("--ridge", type=float, default=0.01, help="the fixed ridge to compare with (default 0.01)")
    ap.add_argument("--modes", nargs="+", default=["sequential"], choices=["sequential", "oneshot"])
    args = ap.parse_args()
    targets = [("sparsity", v) for v in args.sparsity] + [("flops_reduction", v) for v in args.flops]
    if not targets:
        ap.error("give --sparsity and/or --flops levels")
    same = 0
    for mode in args.modes:
        for kind, value in targets:
            fixed = onnx_eprune.prune(args.model, args.calib, mode=mode, refit_ridge=args.ridge, **{kind: value})
            default = onnx_eprune.prune(args.model, args.calib, mode=mode, **{kind: value})
            equal = _network_bytes(fixed.model) == _network_bytes(default.model)
            same += equal
            crossed = ", ".join(default.report.get("refit_ridges", {}))
            verdict = "same" if equal else f"DIFFERENT (cross-validated: {crossed or '-'})"
            print(f"{mode} {kind} {value:g}: {verdict}")
    total = len(args.modes) * len(targets)
    print(f"{same} of {total} runs give the same bytes as --refit-ridge {args.ridge:g}")
    return 0 if same == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
