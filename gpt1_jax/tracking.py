"""Weights & Biases beside TensorBoard: the scalars `reporting.MetricsWriter` writes to
metrics.jsonl, mirrored to one W&B run per workdir (`pip install ".[wandb]"`).

Off by default (`tracking.wandb=False`). On process 0 only. The run's id is kept in
`<workdir>/wandb_id`, so a resumed job continues the same W&B run. Steps go in as a
`step` metric rather than W&B's own step counter: a job resumed from an earlier checkpoint
logs again the steps its killed predecessor logged after it, and W&B refuses a step that
goes backwards; readers take a step's last value, as metrics.jsonl keeps it.

Nothing here may stop a job: without the package, or when W&B cannot start (no network in
online mode, a bad key), the job logs one warning and goes on with TensorBoard only.
`WANDB_MODE=offline` (or `tracking.wandb_mode="offline"`) writes the run under
`<workdir>/wandb/` for a later `wandb sync`; a gs:// workdir keeps those files in a local
temporary directory instead (online mode sends them as it goes).
"""
import logging
import os
import tempfile
import uuid
from typing import Any

import jax

from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

ID_FILE = "wandb_id"
STEP_METRIC = "step"


class WandbTracker:
    """One W&B run per workdir; `log(step, metrics)` and `close()`, both never raising."""

    def __init__(self, workdir, config: dict, project: str = "gpt1-jax", entity: str | None = None,
                 mode: str | None = None, name: str | None = None):
        import wandb  # an optional extra: only process 0 of a job that asks for it imports it
        self._wandb = wandb
        workdir = rundir.path(workdir)
        id_file = workdir / ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else None
        resumed = run_id is not None
        if run_id is None:
            run_id = uuid.uuid4().hex[:16]
            rundir.write_text(id_file, run_id + "\n")
        local_dir = str(workdir) if not rundir.is_remote(workdir) else tempfile.mkdtemp(prefix="wandb_")
        self.run = wandb.init(project=project, entity=entity, id=run_id, resume="allow", dir=local_dir,
                              mode=mode or os.environ.get("WANDB_MODE") or "online",
                              name=name or workdir.name, config=config,
                              settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.id, self.resumed = run_id, resumed

    def log(self, step: int, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        try:
            self.run.log({STEP_METRIC: int(step), **scalars})
        except Exception as e:  # noqa: BLE001  (a tracker must never stop training)
            log.warning("W&B: could not log step %d: %s", step, e)

    def close(self) -> None:
        try:
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B: could not finish the run: %s", e)


def from_settings(workdir, enabled: bool, config: dict, project: str = "gpt1-jax",
                  entity: str | None = None, mode: str | None = None) -> WandbTracker | None:
    """A tracker for process 0 when `enabled` and W&B can start; else None (with a warning
    when it was asked for). Config keys: tracking.wandb, tracking.wandb_project,
    tracking.wandb_entity, tracking.wandb_mode ("online", "offline", "disabled")."""
    if not enabled or jax.process_index() != 0:
        return None
    try:
        return WandbTracker(workdir, _plain(config), project, entity or None, mode or None)
    except ImportError:
        log.warning("tracking.wandb=True but wandb is not installed (pip install '.[wandb]'); "
                    "going on with TensorBoard only")
    except Exception as e:  # noqa: BLE001  (no network, no key, a W&B outage: train anyway)
        log.warning("W&B could not start (%s); going on with TensorBoard only", e)
    return None


def _plain(config: Any) -> dict:
    """A ConfigDict or dict as plain JSON-able values."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return {k: _plain(v) if isinstance(v, dict) else v if isinstance(v, str | int | float | bool | type(None))
            else list(v) if isinstance(v, tuple | list) else str(v) for k, v in dict(config).items()}
