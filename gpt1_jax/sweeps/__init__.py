"""Sweeps: an Optuna study over ordinary jobs of this project.

definition.py  the study as a config file describes it: space, objective, sampler, pruner; checked
launchers.py   where trials run: local processes, a SLURM array, (GKE: see the README)
controller.py  the ask/tell loop: launch, read the trials' metrics, prune, record; results and the best run
"""
