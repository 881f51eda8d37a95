#!/usr/bin/env python
"""Runs a grid of configs, one job after another, and gathers their results into one table.

    python launch/sweep.py --root=runs/table5 --config=configs/finetune.py:sst2 \
        --grid 'init_from=runs/pretrain,' --grid 'finetune.lm_coef=0.5,0' \
        --set data.data_dir=../shared/data/glue --set data.max_train_examples=2000

Every combination of the `--grid` values (comma-separated; an empty value is allowed) runs
as `python -m gpt1_jax.main --config=... --workdir=ROOT/<name> --config.KEY=VALUE ...`, where
<name> spells out the grid values. A run whose workdir already has a summary with an
`eval` entry is skipped, so an interrupted sweep continues where it stopped. At the end
(or with `--gather` alone) every `ROOT/*/summary.json` becomes one row of
`ROOT/results.md` and `ROOT/results.csv`. `--dry_run` prints the commands only. ROOT may
be local or gs://.
"""
import argparse
import csv
import io
import itertools
import pathlib
import re
import subprocess
import sys

from gpt1_jax import rundir


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """["a.b=1,2", "c="] -> [("a.b", ["1", "2"]), ("c", [""])]."""
    grid = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, values = item.split("=", 1)
        grid.append((key.strip(), values.split(",")))
    return grid


def run_name(assignment: dict[str, str]) -> str:
    """A readable, filesystem-safe name: last key part = value, joined by '_'."""
    parts = []
    for key, value in assignment.items():
        short = key.split(".")[-1]
        value = pathlib.Path(value).name if "/" in value else value
        parts.append(f"{short}={value or 'none'}")
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts)) or "run"


def commands(config: str, root, grid, fixed: list[str]):
    """(name, workdir, argv) of every combination."""
    keys = [k for k, _ in grid]
    for values in itertools.product(*(v for _, v in grid)):
        assignment = dict(zip(keys, values))
        name = run_name(assignment)
        workdir = rundir.path(root) / name
        argv = [sys.executable, "-m", "gpt1_jax.main", f"--config={config}", f"--workdir={workdir}"]
        argv += [f"--config.{k}={v}" for k, v in assignment.items()]
        argv += [f"--config.{item}" for item in fixed]
        yield name, workdir, argv


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def gather(root) -> list[dict]:
    """One flat row per `ROOT/*/summary.json` (nested keys joined with '.')."""
    rows = []
    for name in sorted(rundir.list_names(root)):
        path = rundir.path(root) / name / rundir.SUMMARY
        if path.exists():
            row = {"run": name}
            _flatten("", rundir.read_json(path), row)
            rows.append(row)
    return rows


def write_tables(rows: list[dict], root) -> None:
    root = rundir.path(root)
    columns = ["run"] + sorted({k for row in rows for k in row} - {"run"})
    with io.StringIO(newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        rundir.write_text(root / "results.csv", f.getvalue())

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    rundir.write_text(root / "results.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=rundir.path, help="local or gs://")
    parser.add_argument("--config", help="the config file (with :ARG), as for gpt1_jax.main")
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--gather", action="store_true", help="only gather existing results")
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args(argv)

    failed = []
    if not args.gather:
        if not args.config:
            parser.error("--config is required unless --gather")
        for name, workdir, cmd in commands(args.config, args.root, parse_grid(args.grid), args.set):
            summary = workdir / rundir.SUMMARY
            if summary.exists() and "eval" in rundir.read_json(summary):
                print(f"[sweep] {name}: done already")
                continue
            print(f"[sweep] {name}: {' '.join(cmd[1:])}", flush=True)
            if not args.dry_run and subprocess.call(cmd) != 0:
                failed.append(name)
    if not args.dry_run:
        rows = gather(args.root)
        write_tables(rows, args.root)
        print(f"[sweep] {len(rows)} runs -> {args.root / 'results.md'}, {args.root / 'results.csv'}")
    if failed:
        print(f"[sweep] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
