"""A study as its config file describes it (configs/sweeps/*.py), checked before any trial starts.

The definition is plain frozen values: the job config it sweeps and the overrides every trial
gets, the search space, the objective read from a finished trial, the intermediate metric read
from a running one (for pruning), the sampler, the pruner, how many trials and how many at once.
Its fingerprint (everything that decides which trials exist, not how many or where they run)
is stored with the study, so a storage written by another definition is refused, not mixed.
"""
import dataclasses
import hashlib
import itertools
import json
import math
import pathlib
import re
import sys

import ml_collections
import optuna

from gpt1_jax import config_files
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir

STUDY_KEYS = ("name", "job", "space", "objective", "intermediate", "sampler", "pruner", "num_trials",
              "parallel", "enqueue", "launcher")
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving")
DIRECTIONS = ("minimize", "maximize")
# What a job logs at every step (metrics.jsonl), and the scalars its summary.json holds.
LOGGED_METRICS = ("loss", "task_loss", "lm_loss", "accuracy", "perplexity", "grad_norm", "lr")
SUMMARY_SCALARS = ("train_loss", "val_loss", "val_perplexity", "train_val_gap", "step")
LAST_PREFIX = "last:"   # objective "last:val_loss": the last value of that key in metrics.jsonl


@dataclasses.dataclass(frozen=True)
class Param:
    """One swept config key and its range: categorical choices, or an int/float interval."""
    key: str
    type: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    job_config: str                 # as for `--config=`: PATH[:ARG]
    overrides: tuple[str, ...]      # KEY=VALUE for every trial, after the swept keys
    space: tuple[Param, ...]
    objective: str                  # dotted summary.json key, or "last:<metrics.jsonl key>"
    direction: str
    intermediate: str               # metrics.jsonl key reported for pruning ("" : none)
    intermediate_direction: str
    sampler: str
    seed: int
    startup_trials: int             # TPE: random trials before it models the results
    pruner: dict
    num_trials: int
    parallel: int
    enqueue: tuple[dict, ...]       # points tried first, in order (grid: every point)
    launcher: dict

    def fingerprint(self) -> str:
        """What decides which trials exist and how they are judged; not their count or placement."""
        defining = {k: v for k, v in dataclasses.asdict(self).items()
                    if k not in ("num_trials", "parallel", "launcher")}
        return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def distributions(self) -> dict:
        return {p.key: p.distribution() for p in self.space}

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler == "grid":
            return optuna.samplers.GridSampler({p.key: list(p.choices) for p in self.space}, seed=self.seed)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.startup_trials)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        p = self.pruner
        if p["name"] == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.get("startup_trials", 1),
                                               n_warmup_steps=p.get("warmup_steps", 0),
                                               interval_steps=p.get("interval_steps", 1))
        if p["name"] == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.get("min_resource", 1),
                                                          reduction_factor=p.get("reduction_factor", 3))
        return optuna.pruners.NopPruner()

    def trial_name(self, number: int, params: dict) -> str:
        """A grid trial is named by its values, as `launch/sweep.py --grid` always named runs."""
        return run_name({p.key: str(params[p.key]) for p in self.space}) if self.sampler == "grid" \
            else f"trial_{number:03d}"

    def trial_argv(self, workdir, params: dict) -> list[str]:
        """The command a user would run for this trial."""
        argv = [sys.executable, "-m", "gpt1_jax.cli.main", f"--config={self.job_config}", f"--workdir={workdir}"]
        argv += [f"--config.{p.key}={params[p.key]}" for p in self.space]
        return argv + [f"--config.{item}" for item in self.overrides]

    def grid_points(self) -> list[dict]:
        """Every combination, the last key varying fastest (`itertools.product`'s order)."""
        return [dict(zip([p.key for p in self.space], values))
                for values in itertools.product(*(p.choices for p in self.space))]


def run_name(assignment: dict[str, str]) -> str:
    """A readable, filesystem-safe name: last key part = value, joined by '_'."""
    parts = []
    for key, value in assignment.items():
        short = key.split(".")[-1]
        value = pathlib.Path(value).name if "/" in value else value
        parts.append(f"{short}={value or 'none'}")
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts)) or "run"


# --- reading a trial's results ---------------------------------------------------------------------

def metric_records(workdir) -> list[dict]:
    """The trial's metrics.jsonl so far (local or gs://); a line cut short by a writer is skipped."""
    path = rundir.path(workdir) / rundir.METRICS
    try:
        text = path.read_text()
    except (FileNotFoundError, OSError):
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_summary(workdir) -> dict | None:
    path = rundir.path(workdir) / rundir.SUMMARY
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def dotted(mapping: dict, key: str):
    value = mapping
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def objective_value(study: Study, workdir) -> float | None:
    """The objective of a finished trial, or None when it is missing or not a finite number."""
    if study.objective.startswith(LAST_PREFIX):
        key = study.objective[len(LAST_PREFIX):]
        values = [r[key] for r in metric_records(workdir) if isinstance(r.get(key), (int, float))]
        value = values[-1] if values else None
    else:
        value = dotted(read_summary(workdir) or {}, study.objective)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def intermediate_values(study: Study, workdir) -> dict[int, float]:
    """step -> the intermediate metric, signed so that the study's direction judges it."""
    if not study.intermediate:
        return {}
    sign = 1.0 if study.intermediate_direction == study.direction else -1.0
    return {int(r["step"]): sign * float(r[study.intermediate]) for r in metric_records(workdir)
            if isinstance(r.get(study.intermediate), (int, float)) and "step" in r
            and math.isfinite(r[study.intermediate])}


# --- building and checking a definition ----------------------------------------------------------

def load_job_config(job_config: str) -> ml_collections.ConfigDict:
    path, *args = job_config.split(":")
    if not pathlib.Path(path).is_file():
        raise ConfigError(f"job.config: no config file {path!r}")
    return config_files.load(path, *args)


def _has_key(config, key: str) -> bool:
    value = config
    for part in key.split("."):
        if not isinstance(value, (ml_collections.ConfigDict, dict)) or part not in value:
            return False
        value = value[part]
    return True


def _param(entry) -> Param:
    entry = dict(entry)
    key, kind = entry.get("key"), entry.get("type", "categorical")
    unknown = set(entry) - {"key", "type", "choices", "low", "high", "log", "step"}
    if not key or unknown:
        raise ConfigError(f"space: each entry needs a `key` (and type/choices/low/high/log/step); got {entry}")
    if kind == "categorical":
        choices = tuple(entry.get("choices") or ())
        if not choices:
            raise ConfigError(f"space: {key} has no choices")
        return Param(key, kind, choices=choices)
    if kind not in ("int", "float"):
        raise ConfigError(f"space: {key} has type {kind!r}; expected categorical, int or float")
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None or not low <= high or (entry.get("log") and low <= 0):
        raise ConfigError(f"space: {key} needs low <= high (and low > 0 on a log scale); got {low}, {high}")
    return Param(key, kind, low=low, high=high, log=bool(entry.get("log", False)), step=entry.get("step"))


def _is_logged(key: str) -> bool:
    """A metrics.jsonl key: a training metric, or `val_` + a training or task metric (evaluations;
    a task scored on several splits puts the split first: `val_matched_accuracy`)."""
    from gpt1_jax.metrics import TASK_METRICS
    metrics = {*LOGGED_METRICS, *(m for names in TASK_METRICS.values() for m in names)}
    return key in LOGGED_METRICS or (key.startswith("val_") and (
        key[4:] in metrics or key[4:].split("_", 1)[-1] in metrics))


def _check_objective(objective: str, job) -> None:
    if objective.startswith(LAST_PREFIX):
        key = objective[len(LAST_PREFIX):]
        if not _is_logged(key):
            raise ConfigError(f"objective.metric {objective!r}: {key!r} is not logged to metrics.jsonl; "
                              f"logged: {', '.join(LOGGED_METRICS)}, val_*")
        return
    if objective in SUMMARY_SCALARS:
        return
    parts = objective.split(".")
    if job.get("mode") == "finetune" and parts[0] == "eval" and len(parts) == 3:
        from gpt1_jax.data import tasks  # only to name the task's splits and metrics
        spec = tasks.get_task(job.task)
        if parts[1] in spec.eval_splits and parts[2] in spec.metrics:
            return
        raise ConfigError(f"objective.metric {objective!r}: task {spec.name} is scored on "
                          f"eval.{{{','.join(spec.eval_splits)}}}.{{{','.join(spec.metrics)}}}")
    raise ConfigError(f"objective.metric {objective!r}: expected eval.<split>.<metric> (fine-tuning), "
                      f"one of {', '.join(SUMMARY_SCALARS)}, or last:<metrics.jsonl key>")


def from_config(config) -> Study:
    """A checked Study from a study config (ConfigDict or dict); ConfigError names the bad key."""
    config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = sorted(set(config) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"unknown study key(s) {', '.join(unknown)}; known: {', '.join(STUDY_KEYS)}")
    job_section = dict(config.get("job") or {})
    job = load_job_config(job_section.get("config", ""))
    overrides = tuple(job_section.get("overrides") or ())
    space = tuple(_param(e) for e in config.get("space") or ())
    if not space:
        raise ConfigError("space: the search space is empty")
    for key in [p.key for p in space] + [o.split("=", 1)[0] for o in overrides]:
        if not _has_key(job, key):
            raise ConfigError(f"{key}: not a key of the job's config ({job_section['config']})")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"job.overrides: {item!r} is not KEY=VALUE")
    objective = dict(config.get("objective") or {})
    _check_objective(objective.get("metric", ""), job)
    intermediate = dict(config.get("intermediate") or {})
    sampler, pruner = dict(config.get("sampler") or {}), dict(config.get("pruner") or {"name": "none"})
    directions = objective.get("direction", "maximize"), intermediate.get("direction", "minimize")
    if not set(directions) <= set(DIRECTIONS):
        raise ConfigError(f"objective/intermediate direction: expected {' or '.join(DIRECTIONS)}; got {directions}")
    if sampler.get("name", "tpe") not in SAMPLERS or pruner.get("name") not in PRUNERS:
        raise ConfigError(f"sampler.name / pruner.name: expected {SAMPLERS} / {PRUNERS}; "
                          f"got {sampler.get('name')!r} / {pruner.get('name')!r}")
    metric = intermediate.get("metric", "")
    if metric and not _is_logged(metric):
        raise ConfigError(f"intermediate.metric {metric!r} is not logged to metrics.jsonl; "
                          f"logged: {', '.join(LOGGED_METRICS)}, val_*")
    if pruner["name"] != "none" and not metric:
        raise ConfigError(f"pruner.name={pruner['name']!r} needs intermediate.metric")
    enqueue = tuple(dict(point) for point in config.get("enqueue") or ())
    for point in enqueue:
        if set(point) != {p.key for p in space}:
            raise ConfigError(f"enqueue: {point} must give exactly the swept keys {[p.key for p in space]}")
    kind = sampler.get("name", "tpe")
    if kind == "grid":
        if any(p.type != "categorical" for p in space):
            raise ConfigError("sampler.name='grid' needs categorical choices for every key in space")
    study = Study(name=config.get("name") or "sweep", job_config=job_section["config"], overrides=overrides,
                  space=space, objective=objective["metric"], direction=directions[0],
                  intermediate=metric, intermediate_direction=directions[1], sampler=kind,
                  seed=int(sampler.get("seed", 0)), startup_trials=int(sampler.get("startup_trials", 10)),
                  pruner=pruner, num_trials=int(config.get("num_trials") or 0),
                  parallel=max(1, int(config.get("parallel") or 1)), enqueue=enqueue,
                  launcher=dict(config.get("launcher") or {"name": "local"}))
    if kind == "grid":  # every point once, in the order `--grid` always ran them
        points = study.grid_points()
        study = dataclasses.replace(study, enqueue=tuple(points), num_trials=study.num_trials or len(points))
    if study.num_trials < 1:
        raise ConfigError("num_trials: must be at least 1")
    return study


def load(path_and_args: str) -> Study:
    path, *args = path_and_args.split(":")
    if not pathlib.Path(path).is_file():
        raise ConfigError(f"--study: no study config file {path!r}")
    return from_config(config_files.load(path, *args))
