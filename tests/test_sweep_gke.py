"""The GKE launcher against a stand-in kubectl (tests/standins/kubectl) that runs each JobSet's pod
as a local process: one JobSet per trial, rendered by `launch/gke.py trial` and named after the
trial it runs; a pruned trial's JobSet is deleted, its job stops with 42, the trial is recorded pruned."""
import json
import os
import subprocess
import sys

import jsonschema
import optuna
import pytest

import jobs
import sweeps
from test_launch_gke import SCHEMA, strict

STANDINS = jobs.REPO / "tests" / "standins"


def test_a_trial_jobset_validates_against_the_crd_and_is_never_restarted_by_the_jobset(tmp_path):
    spec = str(tmp_path / "_sweep" / "trials" / "trial_000.json")
    result = subprocess.run([sys.executable, "launch/gke.py", "trial", "--name=root-trial-000-1a2b", "--image=i:1",
                             "--gpus=1", "--volume-claim=sweep-state", "--service-account=trainer", spec],
                            cwd=jobs.REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    validator = jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())["schema"]))
    assert [e.message for e in validator.iter_errors(manifest)] == []
    assert manifest["spec"]["failurePolicy"]["maxRestarts"] == 0  # the controller requeues, not the JobSet
    (replicated,) = manifest["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "gpt1_jax.cli.sweep_trial", spec]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    # The runner writes its exit record beside the spec: the pod mounts the state folder there.
    assert container["volumeMounts"] == [{"name": "sweep-state", "mountPath": str(tmp_path / "_sweep")}]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "sweep-state"}
    assert pod["serviceAccountName"] == "trainer"
    wrong = subprocess.run([sys.executable, "launch/gke.py", "trial", "--name=Trial_0", "--image=i", spec],
                           cwd=jobs.REPO, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: --name=Trial_0: ") and wrong.stdout == ""


@pytest.mark.slow
def test_trials_run_as_jobsets_and_a_pruned_trials_jobset_is_deleted(pretrained, shared_data, tmp_path):
    # Trial 0 (λ = 0.5) finishes; trial 1 (λ = 8, ten times its loss) is pruned after the warm-up.
    study_file = sweeps.write_study(
        tmp_path, pretrained, shared_data / "glue", num_trials=2, parallel=1,
        enqueue=({"optimizer.learning_rate": 1e-4, "finetune.lm_coef": 0.5},
                 {"optimizer.learning_rate": 1e-4, "finetune.lm_coef": 8.0}),
        launcher={"name": "gke", "image": "gpt1-jax:test", "namespace": "sweeps", "volume_claim": "sweep-state",
                  "python": sys.executable})
    root, kube = tmp_path / "root", tmp_path / "kube"
    env = sweeps.sweep_env(tmp_path, PATH=f"{STANDINS}{os.pathsep}{os.environ['PATH']}", KUBECTL_STANDIN_DIR=str(kube))
    result = jobs.run(sweeps.sweep_argv(study_file, root), env)
    study = sweeps.load(root)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE,
                                               optuna.trial.TrialState.PRUNED], result.stdout[-3000:]
    names = [t.user_attrs["job"] for t in study.trials]
    assert [n.rsplit("-", 1)[0] for n in names] == ["root-trial-000", "root-trial-001"]
    for t, name in zip(study.trials, names):
        # The pod of the trial's JobSet ran that trial's spec, and nothing else ran it.
        starts = sweeps.trial_record(root, t.user_attrs["name"], ".starts")
        assert [s["jobset"] for s in starts] == [name]
        [record] = [json.loads(p.read_text()) for p in (kube / "sweeps").glob(f"{name}*.json")]
        (container,) = record["manifest"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
            "containers"]
        assert container["command"][-1] == str(root / "_sweep" / "trials" / f"{t.user_attrs['name']}.json")
    completed = json.loads((kube / "sweeps" / f"{names[0]}.json").read_text())
    assert completed["state"] == "Completed" and completed["exit_code"] == 0
    # The pruned trial's JobSet was deleted (its pod got SIGTERM, committed, exited 42) and is gone.
    deleted = json.loads((kube / "sweeps" / f"{names[1]}.deleted.json").read_text())
    assert deleted["exit_code"] == 42 and not (kube / "sweeps" / f"{names[1]}.json").exists()
    calls = [json.loads(line)["args"] for line in (kube / "calls.jsonl").read_text().splitlines()]
    assert [c[2] for c in calls if c[0] == "delete"] == [names[1]]
    assert sweeps.trial_record(root, "trial_001", ".exit")["status"] == 42
    assert json.loads((root / "trial_001" / "summary.json").read_text())["step"] < sweeps.NUM_STEPS
