"""The sweep launcher expands a grid into jobs and gathers their summaries into tables."""
import csv
import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep", REPO / "launch" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_grid_expands_to_every_combination_with_readable_names(tmp_path):
    grid = sweep.parse_grid(["init_from=runs/pre,", "finetune.lm_coef=0.5,0"])
    runs = list(sweep.commands("configs/finetune.py:sst2", tmp_path, grid, ["data.data_dir=/d"]))
    names = [name for name, _, _ in runs]
    assert names == ["init_from=pre_lm_coef=0.5", "init_from=pre_lm_coef=0",
                     "init_from=none_lm_coef=0.5", "init_from=none_lm_coef=0"]
    argv = runs[2][2]
    assert "--config.init_from=" in argv and "--config.finetune.lm_coef=0.5" in argv
    assert "--config.data.data_dir=/d" in argv and f"--workdir={tmp_path / names[2]}" in argv


def test_gather_writes_one_row_per_run_in_markdown_and_csv(tmp_path):
    for name, acc in (("a", 0.75), ("b", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"task": "sst2", "lm_coef": 0.5, "eval": {"validation": {"accuracy": acc}}}))
    rows = sweep.gather(tmp_path)
    sweep.write_tables(rows, tmp_path)
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["run"], r["eval.validation.accuracy"]) for r in table] == [("a", "0.75"), ("b", "0.5")]
    markdown = (tmp_path / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| run |") and "eval.validation.accuracy" in markdown[0]
    assert len(markdown) == 4 and "| 0.75 |" in markdown[2]


def test_finished_runs_are_skipped(tmp_path, capsys):
    (tmp_path / "lm_coef=0").mkdir()
    (tmp_path / "lm_coef=0" / "summary.json").write_text(json.dumps({"eval": {}}))
    code = sweep.main(["--root", str(tmp_path), "--config", "configs/finetune.py:sst2",
                       "--grid", "finetune.lm_coef=0", "--dry_run"])
    assert code == 0 and "done already" in capsys.readouterr().out
