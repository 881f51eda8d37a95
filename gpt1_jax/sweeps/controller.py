"""The study's controller: an Optuna ask/tell loop over trials that are ordinary jobs.

Each pass it reads every running trial's metrics.jsonl, reports the intermediate metric to
the study and stops the trials the pruner gives up on; it records trials that ended
(complete with the objective from their summary, pruned, or failed with their error line)
and asks the study for new ones while slots are free. Everything it knows lives in the study
storage (a file journal in the state folder) and the trials' own files, so a controller
killed at any point and started again reruns no finished trial: it adopts the trials still
running, requeues (same workdir: the job resumes from its checkpoint) those whose job ended
without a result, and continues to the requested count.
"""
import csv
import io
import json
import pathlib
import time

import optuna

from gpt1_jax import plots
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir
from gpt1_jax.sweeps import definition as definition_lib
from gpt1_jax.train import stopping

JOURNAL = "study.journal"
STATE_DIR = "_sweep"          # beside the trials' workdirs: the journal, trial specs, logs, exit records
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def state_dir(root, override: str = "") -> pathlib.Path:
    """Where the journal and trial records live: beside the trials, or (gs:// roots, whose objects
    cannot be appended to or locked) a local or shared folder given explicitly."""
    if override:
        return pathlib.Path(override)
    if rundir.is_remote(root):
        raise ConfigError(f"--root={root} is in a bucket: give --state_dir, a local or shared folder "
                          f"for the study journal and the trials' logs")
    return pathlib.Path(str(root)) / STATE_DIR


def open_study(study: definition_lib.Study, directory: pathlib.Path) -> optuna.Study:
    """Creates the study (enqueuing its first points) or loads it; refuses a storage written
    by another definition."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trials").mkdir(exist_ok=True)
    journal = directory / JOURNAL
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(storage)
    fingerprint = study.fingerprint()
    if names and names != [study.name]:
        raise ConfigError(f"{journal}: holds study {names}, not {study.name!r}; use another root")
    if names:
        loaded = optuna.load_study(study_name=study.name, storage=storage, sampler=study.make_sampler(),
                                   pruner=study.make_pruner())
        stored = loaded.user_attrs.get("fingerprint")
        if stored != fingerprint:
            raise ConfigError(f"{journal}: written by another definition of study {study.name!r} "
                              f"(fingerprint {stored}, this one {fingerprint}); use another root")
        return loaded
    created = optuna.create_study(study_name=study.name, storage=storage, direction=study.direction,
                                  sampler=study.make_sampler(), pruner=study.make_pruner())
    created.set_user_attr("fingerprint", fingerprint)
    created.set_user_attr("job_config", study.job_config)
    for point in study.enqueue:
        created.enqueue_trial(point)
    return created


class Controller:
    """Runs `study` to its `num_trials` in `root` through `launcher`, `parallel` trials at once;
    `directory` holds the journal and the trial records (see `state_dir`)."""

    def __init__(self, study: definition_lib.Study, root, launcher, directory: pathlib.Path,
                 poll_secs: float = 2.0, out=print):
        self.study, self.root, self.launcher, self.directory = study, rundir.path(root), launcher, directory
        self.poll_secs, self.out = poll_secs, out
        self.optuna = open_study(study, directory)

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> optuna.Study:
        while True:
            trials = self.optuna.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            changed = [self._poll(t) for t in running]
            if any(changed):
                write_results(self.optuna, self.study, self.root, self.directory)
                continue
            counted = sum(t.state in ENDED and not t.user_attrs.get("requeued") for t in trials) + len(running)
            asks = min(self.study.parallel - len(running), self.study.num_trials - counted)
            if asks > 0:
                self._launch(asks)
                continue
            if not running:
                break
            time.sleep(self.poll_secs)
        write_results(self.optuna, self.study, self.root, self.directory, plots=True)
        return self.optuna

    def _launch(self, count: int) -> None:
        specs, asked = [], []
        for _ in range(count):
            trial = self.optuna.ask(self.study.distributions())
            name = trial.user_attrs.get("name") or self.study.trial_name(trial.number, trial.params)
            workdir = trial.user_attrs.get("workdir") or str(self.root / name)
            trial.set_user_attr("name", name)
            trial.set_user_attr("workdir", workdir)
            value = definition_lib.objective_value(self.study, workdir)
            summary = definition_lib.read_summary(workdir) or {}
            if summary.get("finished") and value is not None:  # a run from an earlier sweep of this root
                self.out(f"[sweep] {name}: done already ({self.study.objective}={value:.4g})")
                self.optuna.tell(trial, value)
                continue
            argv = self.study.trial_argv(workdir, trial.params)
            files = self._trial_files(name)
            files["exit"].unlink(missing_ok=True)  # a requeued trial's earlier end is not this one's
            files["spec"].write_text(json.dumps({"name": name, "argv": argv, **{k: str(v) for k, v in files.items()
                                                                                if k != "spec"}}, indent=1))
            self.out(f"[sweep] trial {trial.number} {name}: {' '.join(argv[1:])}")
            specs.append(files["spec"])
            asked.append(trial)
        if specs:
            for trial, job in zip(asked, self.launcher.submit(specs)):
                trial.set_user_attr("job", job)
                trial.set_user_attr("launched", time.time())

    def _trial_files(self, name: str) -> dict[str, pathlib.Path]:
        base = self.directory / "trials" / name
        return {"spec": base.with_suffix(".json"), "log": base.with_suffix(".log"),
                "exit": base.with_suffix(".exit"), "starts": base.with_suffix(".starts")}

    def _poll(self, frozen: optuna.trial.FrozenTrial) -> bool:
        """Reports what the trial logged, prunes it or records its end; True when it ended."""
        attrs = frozen.user_attrs
        if "job" not in attrs:
            return self._requeue(frozen, "the controller stopped before launching it")
        files = self._trial_files(attrs["name"])
        trial = optuna.trial.Trial(self.optuna, frozen._trial_id)
        values = definition_lib.intermediate_values(self.study, attrs["workdir"])
        for step in sorted(set(values) - set(frozen.intermediate_values)):
            trial.report(values[step], step)
        ended = _read_json(files["exit"])
        if ended is None and self.launcher.alive(attrs["job"]):
            if "pruned_at" not in attrs and values and trial.should_prune():
                self.out(f"[sweep] trial {frozen.number} {attrs['name']}: pruned at step {max(values)}; stopping it")
                trial.set_user_attr("pruned_at", max(values))
                self.launcher.stop(attrs["job"])
            return False
        ended = ended or _read_json(files["exit"])  # it may have ended between the two looks
        if ended:
            trial.set_user_attr("seconds", ended["seconds"])
        value = definition_lib.objective_value(self.study, attrs["workdir"])
        finished = (definition_lib.read_summary(attrs["workdir"]) or {}).get("finished", True)
        pruned = "pruned_at" in attrs
        if pruned and ended and ended["status"] == 0 and finished and value is not None:
            # Judged at its last step (the loop's final evaluation), it finished before the stop came.
            pruned = False
            trial.set_user_attr("pruned_at", None)
            self.out(f"[sweep] trial {frozen.number} {attrs['name']}: finished before its stop arrived")
        if pruned:
            self.optuna.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
            self.out(f"[sweep] trial {frozen.number} {attrs['name']}: pruned")
            return True
        if ended is None:
            return self._requeue(frozen, "its job ended without an exit record (killed, or cancelled)")
        if ended["status"] == 0 and finished and value is not None:
            self.optuna.tell(frozen.number, value)
            self.out(f"[sweep] trial {frozen.number} {attrs['name']}: {self.study.objective}={value:.4g}")
            return True
        if ended["status"] == stopping.EXIT_RESUME or (ended["status"] == 0 and not finished):
            return self._requeue(frozen, f"stopped by its scheduler (exit {ended['status']}): resuming")
        error = ended["error"] or f"{self.study.objective} missing from {attrs['workdir']}"
        trial.set_user_attr("error", error)
        self.optuna.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        self.out(f"[sweep] trial {frozen.number} {attrs['name']}: failed (exit {ended['status']}): {error}")
        return True

    def _requeue(self, frozen: optuna.trial.FrozenTrial, why: str) -> bool:
        """Fails this attempt and queues the same point in the same workdir (the job resumes)."""
        trial = optuna.trial.Trial(self.optuna, frozen._trial_id)
        trial.set_user_attr("requeued", why)
        self.optuna.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        keep = {k: frozen.user_attrs[k] for k in ("name", "workdir") if k in frozen.user_attrs}
        self.optuna.enqueue_trial(frozen.params, user_attrs=keep)
        self.out(f"[sweep] trial {frozen.number} {keep.get('name', '')}: requeued: {why}")
        return True


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --- results -------------------------------------------------------------------------------------

def result_rows(study: optuna.Study, definition: definition_lib.Study) -> list[dict]:
    """One row per trial attempt: params, state, objective, wall time, workdir, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower() + (" (requeued)" if t.user_attrs.get("requeued") else "")
        row = {"trial": t.number, "run": t.user_attrs.get("name", ""), "state": state,
               **{f"param:{k}": v for k, v in t.params.items()},
               definition.objective: t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
               "pruned_at_step": t.user_attrs.get("pruned_at"), "seconds": t.user_attrs.get("seconds"),
               "workdir": t.user_attrs.get("workdir", ""),
               "error": t.user_attrs.get("error") or t.user_attrs.get("requeued") or ""}
        rows.append(row)
    return rows


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    return study.best_trial if complete else None


def write_results(study: optuna.Study, definition: definition_lib.Study, root, directory: pathlib.Path,
                  plots: bool = False) -> None:
    """ROOT/results.md and results.csv; with `plots`, the history, parallel-coordinate and
    importance PNGs (those that the finished trials can draw)."""
    root = rundir.path(root)
    best = best_trial(study)
    write_tables(result_rows(study, definition), root, preamble=[
        f"# Study {definition.name}: {definition.direction} {definition.objective}", "",
        f"best: trial {best.number} ({best.user_attrs.get('name')}), {definition.objective}={best.value:.4g}, "
        f"workdir {best.user_attrs.get('workdir')}" if best else "best: no finished trial yet", ""])
    if plots:
        for name, png in render_plots(study).items():
            rundir.write_bytes(root / name, png)


def write_tables(rows: list[dict], root, preamble: list[str] = ()) -> None:
    """ROOT/results.csv and ROOT/results.md (after `preamble`'s lines): one row per run."""
    root = rundir.path(root)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with io.StringIO(newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        rundir.write_text(root / "results.csv", f.getvalue())

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
    lines = [*preamble, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    rundir.write_text(root / "results.md", "\n".join(lines) + "\n")


def render_plots(study: optuna.Study) -> dict[str, bytes]:
    """optuna.visualization.matplotlib's figures as PNG bytes; a plot the trials cannot draw yet
    (importances need two finished trials that differ) is left out."""
    import warnings

    plots.pyplot()  # drawing into memory
    from optuna.visualization import matplotlib as optuna_plots
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    pngs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" warnings on every call
        makers = {"optimization_history.png": lambda: optuna_plots.plot_optimization_history(study),
                  "parallel_coordinate.png": lambda: optuna_plots.plot_parallel_coordinate(study)}
        if len(complete) >= 2 and len(study.best_trial.params) and len({t.value for t in complete}) > 1:
            makers["param_importances.png"] = lambda: optuna_plots.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        for name, make in makers.items():
            if not complete:
                break
            axes = make()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            pngs[name] = plots.png_bytes(figure, dpi=120)
    return pngs
