"""The recipe matrix of issue 32 from finished runs: one row per ``results.json`` of benchmarks/recipes.py (a run
folder's, or its copy in docs/results), then one line per family that holds its runs against the issue's goals:
zero steps at least 90% of the CNN, every run at least the CNN's top-1 minus 1.0 point after the default
fine-tuning, at least 90% of the conv MACs converted at 224 px (85% for mobile families: those with depthwise
convs), and none diverged.

  python benchmarks/recipe_matrix.py docs/results/recipes_cpu_converged_resnet18_default11_amd.json ... \
      [--output docs/results/recipe_matrix.md]

Prints the table under the command that made it (and writes both to --output). Rows keep the order given; a
file whose run overrode the defaults (``--set``, ``--bases``, ...) says so in its row, so that the matrix shows which
rows ran at the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes import BUDGETS  # noqa: E402

from adderconvert.architectures.cnn import build_model  # noqa: E402
from adderconvert.conversion import DEPLOYMENT_SIZE  # noqa: E402
from adderconvert.conversion.plan import is_depthwise  # noqa: E402

TARGET_GAP = BUDGETS["cpu"].target_gap  # points below the CNN after the default fine-tuning
ZERO_STEP_SHARE = 0.90  # of the CNN's top-1, before any step
CONVERTED_SHARE = {False: 0.90, True: 0.85}  # of the conv MACs at DEPLOYMENT_SIZE px, by "has depthwise convs"
SHARE_KEY = f"converted_macs_share_{DEPLOYMENT_SIZE}"  # recipes.py's row key for it


@dataclass(frozen=True)
class Run:
    """One model's row of one results file."""

    file: str
    machine: str
    options: str
    row: dict


def read_runs(paths: list[Path]) -> list[Run]:
    """Every finished row (one with an adder top-1) of every file, in order. Raises SystemExit naming a file that
    is not a recipes.py results file."""
    runs = []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
            rows, machine = payload["rows"], payload["machine"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"Error: {path}: not a benchmarks/recipes.py results file ({error})") from None
        options = dict(payload.get("overrides", {}))
        if payload.get("conversion", {}).get("bases") is not None:  # --bases
            options["bases"] = payload["conversion"]["bases"]
        options = ", ".join(f"{k}={v}" for k, v in options.items())
        runs += [Run(path.name, machine, options, row) for row in rows if "adder_top1" in row]
    return runs


def has_depthwise(name: str) -> bool:
    """Whether torchvision's ``name`` has a depthwise conv."""
    return any(is_depthwise(m) for m in build_model(name, 10).modules() if isinstance(m, nn.Conv2d))


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def matrix_table(runs: list[Run]) -> str:
    """The per-run table and the per-family verdict, in markdown."""
    lines = [
        "| family | file | machine | options | CNN epochs | CNN top-1 | zero steps (% of CNN) | bases | MACs "
        f"converted, 32 / {DEPLOYMENT_SIZE} px | adder epochs | adder top-1 | gap | CNN s | adder s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = run.row
        lines.append(
            f"| {r['model']} | {run.file} | {run.machine} | {run.options or 'defaults'} | {r.get('cnn_epochs', '')} "
            f"| {r['cnn_top1']:.2f}% | {r['zero_step_top1']:.2f}% ({100 * r['zero_step_top1'] / r['cnn_top1']:.0f}%) "
            f"| {r.get('bases', '')} | {_percent(r['converted_macs_share'])} / "
            f"{_percent(r.get(SHARE_KEY))} | {len(r.get('adder_top1_by_epoch') or [])} "
            f"| {r['adder_top1']:.2f}% | {r['gap']:+.2f} | {r['cnn_seconds']:.0f} | {r['adder_seconds']:.0f} |"
        )
    lines += [
        "",
        "| family | runs | gaps | mean gap | zero steps, least | "
        f"MACs converted at {DEPLOYMENT_SIZE} px, least | verdict |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    families: dict[str, list[dict]] = {}
    for run in runs:
        families.setdefault(run.row["model"], []).append(run.row)
    for name, rows in families.items():
        gaps = [r["gap"] for r in rows]
        zero = min(r["zero_step_top1"] / r["cnn_top1"] for r in rows)
        shares = [r[SHARE_KEY] for r in rows if SHARE_KEY in r]
        share = min(shares) if shares else None
        floor = CONVERTED_SHARE[has_depthwise(name)]
        misses = [
            f"{sum(g > TARGET_GAP for g in gaps)} of {len(gaps)} runs more than {TARGET_GAP} pt short"
            if max(gaps) > TARGET_GAP
            else "",
            f"zero steps under {ZERO_STEP_SHARE:.0%}" if zero < ZERO_STEP_SHARE else "",
            f"under {floor:.0%} of the MACs converted" if share is None or share < floor else "",
            "diverged" if any(r.get("diverged") for r in rows) else "",
        ]
        verdict = "; ".join(m for m in misses if m) or "meets the goals"
        lines.append(
            f"| {name} | {len(rows)} | {' / '.join(f'{g:+.2f}' for g in gaps)} | {statistics.fmean(gaps):+.2f} "
            f"| {100 * zero:.0f}% | {_percent(share)} | {verdict} |"
        )
    lines += [
        "",
        f"Gap = CNN - adder top-1 (negative: above the CNN). Goals: zero steps at least {ZERO_STEP_SHARE:.0%} of the "
        f"CNN, every run within {TARGET_GAP} pt, at least {CONVERTED_SHARE[False]:.0%} of the conv MACs converted at "
        f"{DEPLOYMENT_SIZE} px ({CONVERTED_SHARE[True]:.0%} with depthwise convs), none diverged.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of benchmarks/recipes.py")
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    runs = read_runs(args.results)
    if not runs:
        raise SystemExit("Error: no finished row (adder top-1) in the files given")
    files = " ".join(str(path) for path in args.results)
    table = f"`python benchmarks/recipe_matrix.py {files}`\n\n{matrix_table(runs)}"
    print(table, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)


if __name__ == "__main__":
    sys.exit(main())
