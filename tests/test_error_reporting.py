"""How `python -m gpt1_jax.cli.main` ends on a problem: a problem the user can fix (`UserError`)
is one `error: ...` line and status 1; any other exception is a bug and keeps its traceback,
never dressed up as an `error:` line.

The bug is planted from outside, as a test must do it: a fresh interpreter imports the entry
point, replaces its `run_job` with one that raises, and runs `main` as `python -m` would.
"""
import sys
import threading

import pytest

import jobs

# argv[1:] are the job's flags; run_job raises the exception named by GPT1_JAX_TEST_BUG.
PLANTED_BUG = """
import os, sys
from gpt1_jax.cli import main
from gpt1_jax.cli import common

def run_job(config, workdir, stop):
    raise eval(os.environ["GPT1_JAX_TEST_BUG"])

main.run_job = run_job
sys.argv = ["gpt1_jax.cli.main", *sys.argv[1:]]
common.run(main.main)
"""


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def small_corpus(tmp_path) -> list[str]:
    """Flags that point a job at a few lines of text (halves of ~500 tokens, so both hold a
    window) and a token cache of its own."""
    text_file = tmp_path / "book.txt"
    text_file.write_text("It was the best of times, it was the worst of times.\n" * 40, encoding="utf-8")
    return [f"--config.data.text_files={text_file}", f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.val_fraction=0.5"]


# ValueError too: ConfigError and DataError are ValueErrors, yet a plain one is a bug.
@pytest.mark.parametrize("bug", ['KeyError("bug")', 'ValueError("bug")'])
def test_a_programming_error_keeps_its_traceback_and_is_no_error_line(tmp_path, bug):
    result = jobs.run([sys.executable, "-c", PLANTED_BUG, "--config=configs/tiny.py",
                       f"--workdir={tmp_path / 'run'}", "--config.train.progress=False"],
                      jobs.env(GPT1_JAX_TEST_BUG=bug), expect_ok=False)
    report = jobs.output(result)
    assert result.returncode == 1, report
    assert "Traceback (most recent call last)" in result.stderr, report
    name = bug.split("(")[0]
    assert f"{name}: " in result.stderr.rstrip().splitlines()[-1], report  # the exception, last
    assert "in run_job" in result.stderr, report  # ...where it was raised
    assert error_lines(result.stderr) == [], report


def test_a_config_mistake_is_one_error_line_and_status_1(tmp_path):
    # configs/tiny.py has d_model=32, which 5 heads cannot split.
    result = jobs.main("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
                       "--config.model.n_head=5", *small_corpus(tmp_path), expect_ok=False)
    report = jobs.output(result)
    assert result.returncode == 1, report
    assert error_lines(result.stderr) == ["error: model.d_model=32 is not divisible by model.n_head=5"], report
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: "), report
    assert "Traceback" not in result.stderr, report


# A checkpoint read that fails fails in every concurrent read beside it (orbax reads arrays on an
# asyncio loop); asyncio logs those it was never asked for when they are collected, as orbax's
# threads let go of them on exit.
FAILED_READS = """
import asyncio, atexit, sys
from gpt1_jax import checkpoint
from gpt1_jax.cli import common

_siblings = []
atexit.register(_siblings.clear)

def main(argv):
    loop = asyncio.new_event_loop()
    with checkpoint._reading("/run/checkpoints/6"):
        for name in sys.argv[1:]:
            sibling = loop.create_future()
            sibling.set_exception(ValueError(f"OUT_OF_RANGE reading {name}"))
            _siblings.append(sibling)
        _siblings.append(loop)
        raise ValueError("OUT_OF_RANGE reading /run/checkpoints/6/state h_0.attn")

common.run(main, "a_command")
"""


def test_a_damaged_checkpoint_is_one_error_line_though_its_concurrent_reads_failed_too():
    result = jobs.run([sys.executable, "-c", FAILED_READS, "h_0.mlp", "h_1.attn"], expect_ok=False)
    report = jobs.output(result)
    assert result.returncode == 1, report
    assert error_lines(result.stderr) == [
        "error: a_command: checkpoint /run/checkpoints/6 cannot be read: "
        "OUT_OF_RANGE reading /run/checkpoints/6/state h_0.attn"], report
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: "), report
    assert "never retrieved" not in result.stderr, report


def test_futures_that_failed_outside_a_checkpoint_read_are_still_reported():
    # The same program with a bug that is not a checkpoint read: asyncio's report is kept.
    program = FAILED_READS.replace('with checkpoint._reading("/run/checkpoints/6"):', "if True:")
    result = jobs.run([sys.executable, "-c", program, "h_0.mlp"], expect_ok=False)
    assert "Future exception was never retrieved" in result.stderr, jobs.output(result)


def test_a_collective_broken_by_a_peer_that_failed_ends_with_that_peers_line(monkeypatch, capfd):
    # Process 1 posted its error and left; process 0's collective then failed ("Connection closed
    # by peer"). Process 0 ends with process 1's line, once, not the collective's traceback.
    from gpt1_jax import distributed

    class Coordinator:
        def key_value_try_get(self, key):
            assert key == distributed._ERROR_KEY
            return "process 1: /tmp/a_file/cache: Not a directory"

    class Exited(Exception):
        pass

    def exit_(status):
        raise Exited(status)

    monkeypatch.setattr(distributed, "is_multiprocess", lambda: True)
    monkeypatch.setattr(distributed, "_client", Coordinator)
    monkeypatch.setattr(distributed, "_said", threading.Lock())
    monkeypatch.setattr(distributed, "_COORDINATOR_LINGER_SECS", 0.0)
    monkeypatch.setattr(distributed.os, "_exit", exit_)
    with pytest.raises(Exited) as ended:
        distributed.end_if_another_process_failed(wait_secs=0.0)
    assert ended.value.args == (1,)
    assert capfd.readouterr().err == "error: process 1: /tmp/a_file/cache: Not a directory\n"
    # This process's own post is not another's failure: nothing to end with.
    monkeypatch.setattr(Coordinator, "key_value_try_get", lambda self, key: "process 0: its own")
    assert distributed.end_if_another_process_failed(wait_secs=0.0) is None
