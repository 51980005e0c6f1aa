"""`posevla tokenizer fit`: equal-frequency pose-token bins from a data sample, with their quantisation error.

  posevla tokenizer fit --data grounding.yaml --out runs/pose_bins.json [--num-bins 1024]

Reads translations (object box centres; trajectory TCP positions) and sizes from the annotations of the
mixture's sources (no image is decoded), fits <trans_xy> (x and y pooled), <trans_z> and <size> bins so that
each token is used about equally often (the paper's Fig. 6: z is distributed unlike x and y), prints the
statistics per axis and the worst-case quantisation error in mm (half the widest bin inside the fitted
range; values outside it clamp to the end bins), and writes the bins. `posevla pretrain --bins FILE` trains
with them and stores them in the checkpoint (pose_bins.json beside the weights).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from posevla.model.pose_tokens import PoseTokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = sub.add_parser("fit", help="fit equal-frequency bins from a mixture's annotations", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--data", type=Path, required=True, help="mixture YAML (see docs/pretraining.md)")
    f.add_argument("--out", type=Path, required=True, help="output pose_bins.json")
    f.add_argument("--num-bins", type=int, default=1024, help="bins per token group (the paper: 1024)")
    f.add_argument("--max-items", type=int, default=20000, help="annotations read per source at most")
    f.add_argument("--seed", type=int, default=0)


def quantisation_report(tok: PoseTokenizer, translations: np.ndarray, sizes: np.ndarray) -> dict:
    """Worst-case and observed quantisation errors (mm, and degrees for rotation) of fitted bins."""
    rep: dict[str, dict] = {}
    for group, values in (("trans_xy", translations[:, :2]), ("trans_z", translations[:, 2]), ("size", sizes)):
        if group not in tok.edges or values.size == 0:
            continue
        e = tok.edges[group]
        half = np.diff(e) / 2.0
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        decoded = tok._decode(e, tok._encode(e, v))
        rep[group] = {"range_m": [float(e[0]), float(e[-1])], "worst_case_mm": float(half.max() * 1000.0),
                      "median_bin_half_width_mm": float(np.median(half) * 1000.0),
                      "max_error_on_sample_mm": float(np.abs(decoded - v).max() * 1000.0),
                      "mean_m": float(v.mean()), "std_m": float(v.std()), "count": int(v.size)}
    rep["rot"] = {"worst_case_deg": float(np.degrees(np.pi / tok.num_bins))}
    return rep


def fit(args: argparse.Namespace) -> dict:
    from posevla.pretrain.mixture import fit_values, read_mixture

    if args.num_bins < 2:
        raise ValueError(f"--num-bins={args.num_bins} must be >= 2")
    if args.max_items < 1:
        raise ValueError(f"--max-items={args.max_items} must be >= 1")
    specs = read_mixture(args.data)
    trans, sizes, counts = fit_values(specs, args.max_items, args.seed)
    if len(trans) < 2:
        raise ValueError(f"--data {args.data}: found {len(trans)} translations, need at least 2 to fit bins")
    tok = PoseTokenizer(args.num_bins).fit(trans, sizes if len(sizes) >= 2 else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    rep = quantisation_report(tok, trans, sizes)
    print(f"[tokenizer] {len(trans)} translations, {len(sizes)} sizes from {dict(counts)}")
    for g, r in rep.items():
        if g == "rot":
            print(f"[tokenizer] rot       uniform, worst case {r['worst_case_deg']:.3f} deg")
            continue
        print(f"[tokenizer] {g:9s} mean {r['mean_m']:+.3f} m, std {r['std_m']:.3f} m, range "
              f"[{r['range_m'][0]:+.3f}, {r['range_m'][1]:+.3f}] m: worst-case error {r['worst_case_mm']:.2f} mm "
              f"(median bin +-{r['median_bin_half_width_mm']:.3f} mm, max on the sample {r['max_error_on_sample_mm']:.2f} mm)")
    print(f"[tokenizer] wrote {args.out} ({args.num_bins} bins per group)")
    (args.out.with_suffix(".report.json")).write_text(json.dumps(rep, indent=1))
    return rep


def run(args: argparse.Namespace) -> int:
    try:
        fit(args)
    except ValueError as exc:
        print(f"posevla tokenizer fit: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posevla tokenizer")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
