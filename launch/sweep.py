#!/usr/bin/env python
"""A grid of configs as an Optuna grid study: today's `--grid` command line, run by the sweep
controller (gpt1_jax/sweeps/), N at a time, surviving its own restart.

    python launch/sweep.py --root=runs/table5 --config=configs/finetune.py:sst2 \
        --grid 'init_from=runs/pretrain,' --grid 'finetune.lm_coef=0.5,0' \
        --set data.data_dir=../shared/data/glue --set data.max_train_examples=2000 [--parallel=2]

Every combination of the `--grid` values (comma-separated; an empty value is allowed) runs
as `python -m gpt1_jax.cli.main --config=... --workdir=ROOT/<name> --config.KEY=VALUE ...`, where
<name> spells out the grid values, in `itertools.product` order. A run whose workdir already
has a finished summary is recorded without running it again, and the study's journal in
ROOT/_sweep/ lets an interrupted sweep continue where it stopped. At the end (or with
`--gather` alone) ROOT/results.md and results.csv hold one row per run (its state, the
objective, wall time and every summary.json value). `--dry_run` prints the commands only.
For search spaces beyond a grid, pruning and SLURM: `python -m gpt1_jax.cli.sweep`.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the code beside it, not an older install
from gpt1_jax.errors import ConfigError, UserError  # noqa: E402
from gpt1_jax.storage import rundir  # noqa: E402
from gpt1_jax.sweeps import controller, launchers  # noqa: E402
from gpt1_jax.sweeps import definition as definition_lib  # noqa: E402


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """["a.b=1,2", "c="] -> [("a.b", ["1", "2"]), ("c", [""])]."""
    grid = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, values = item.split("=", 1)
        grid.append((key.strip(), values.split(",")))
    return grid


def grid_study(config: str, grid, fixed: list[str], objective: str = "train_loss", direction: str = "minimize",
               parallel: int = 1) -> definition_lib.Study:
    """The `--grid` sweep as a study definition: categorical string choices, the grid sampler."""
    return definition_lib.from_config({
        "name": "grid", "job": {"config": config, "overrides": tuple(fixed)},
        "space": [{"key": key, "type": "categorical", "choices": tuple(values)} for key, values in grid],
        "objective": {"metric": objective, "direction": direction}, "sampler": {"name": "grid"},
        "parallel": parallel})


def commands(config: str, root, grid, fixed: list[str]):
    """(name, workdir, argv) of every combination, in the order the study runs them."""
    study = grid_study(config, grid, fixed)
    for number, point in enumerate(study.grid_points()):
        name = study.trial_name(number, point)
        workdir = rundir.path(root) / name
        yield name, workdir, study.trial_argv(workdir, point)


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
        summary = definition_lib.read_summary(rundir.path(root) / name)
        if summary is not None:
            row = {"run": name}
            _flatten("", summary, row)
            rows.append(row)
    return rows


def write_tables(rows: list[dict], root) -> None:
    """The gathered rows as ROOT/results.csv and results.md, the run name first."""
    controller.write_tables([{"run": row.get("run"), **row} for row in rows], root)


def study_rows(study, definition, root) -> list[dict]:
    """The study's rows (state, objective, seconds), each with its run's summary values."""
    summaries = {row["run"]: row for row in gather(root)}
    return [{**row, **{k: v for k, v in summaries.get(row["run"], {}).items() if k != "run"}}
            for row in controller.result_rows(study, definition)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="local or gs://")
    parser.add_argument("--config", help="the config file (with :ARG), as for gpt1_jax.cli.main")
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once on this machine")
    parser.add_argument("--objective", default="train_loss", help="summary.json key the table ranks by")
    parser.add_argument("--direction", default="minimize", choices=definition_lib.DIRECTIONS)
    parser.add_argument("--state_dir", default="", help="journal and logs (default ROOT/_sweep; needed for gs://)")
    parser.add_argument("--gather", action="store_true", help="only gather existing results")
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args(argv)
    if args.gather and not args.config:
        write_tables(gather(args.root), args.root)
        print(f"[sweep] results -> {rundir.path(args.root) / 'results.md'}")
        return 0
    if not args.config:
        parser.error("--config is required unless --gather")
    definition = grid_study(args.config, parse_grid(args.grid), args.set, args.objective, args.direction, args.parallel)
    state_dir = controller.state_dir(args.root, args.state_dir)
    if args.dry_run:
        for name, workdir, cmd in commands(args.config, args.root, parse_grid(args.grid), args.set):
            done = (definition_lib.read_summary(workdir) or {}).get("finished")
            print(f"[sweep] {name}: " + ("done already" if done else " ".join(cmd[1:])))
        return 0
    if not args.gather:
        launcher = launchers.LocalLauncher(args.parallel)
        study = controller.Controller(definition, args.root, launcher, state_dir).run()
    else:
        study = controller.open_study(definition, state_dir)
    write_tables(study_rows(study, definition, args.root), args.root)
    failed = [t.user_attrs.get("name", str(t.number)) for t in study.get_trials(deepcopy=False)
              if t.state.name == "FAIL" and not t.user_attrs.get("requeued")]
    print(f"[sweep] {len(study.trials)} runs -> {rundir.path(args.root) / 'results.md'}, results.csv")
    if failed:
        print(f"[sweep] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (UserError, OSError) as e:
        print(f"error: sweep: {e}", file=sys.stderr)
        sys.exit(1)
