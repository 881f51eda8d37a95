"""Every command a user runs lives in gpt1_jax/cli/ and treats its flags as the job treats its
config: each numeric flag at 0 and at -1 (and each float flag above 1, where a fraction would
end) is either accepted because its help says what it means, or refused while the flags are
parsed, as one `error:` line. Help texts print as written: absl
would expand a bare `%` in a docstring, and a backslash at a line's end in a plain string joins
the lines into a run of spaces.
"""
import ast
import json
import pathlib
import sys

import pytest

import jobs

CLI = jobs.REPO / "gpt1_jax" / "cli"

# command -> (flags it requires, {flag: the values of 0, -1 and (float flags) 1.5 that its help gives
# a meaning}); a fraction (top_p, dropout) refuses 1.5, a temperature, a count or seconds take it.
COMMANDS = {
    "sample": (["--init_from=x", "--prompt=p"],
               {"temperature": {0, 1.5}, "top_k": {0}, "seed": {0}, "stop_token": {0, -1}}),
    "convert": (["--from=openai", "--to=orbax"], {}),
    "zero_shot": (["--workdir=x"], {"max_examples": {0}}),
    "bench": ([], {"batch_size": {0}, "attention_block": {0}, "dropout": {0}, "warmup": {0}}),
    "bench_generate": (["--init_from=x"], {}),
    "aot": (["--config=configs/tiny.py", "--topology=v5e-8"], {}),
    "evaluate_lm": (["--init_from=x"], {"max_documents": {0}, "stride": {0}}),
    "harness": (["--init_from=x", "--tasks=t"], {"num_fewshot": {0}, "bench": {0}, "limit": {1.5}}),
    "sweep": (["--study=configs/sweeps/sst2_lr_lm_coef.py", "--root=x"], {"poll_secs": {1.5}}),
}
# Commands without numeric flags of their own: the job (its numbers are config keys, checked by
# config_rules and tests/test_config_rules.py), the harness's own command line, and the one-trial
# wrapper the sweep launchers run (its arguments come from the controller, not from a user).
FLAGLESS = {"main", "lm_eval_main", "sweep_trial"}

# In one fresh process (flags are global): each command's module imported, its command line parsed
# once per value, its flags deleted before the next command defines its own.
PROBE = """
import importlib, json, sys
from absl import flags
found = {}
for name, required in json.loads(sys.argv[1]).items():
    importlib.import_module(name)
    own = list(flags.FLAGS.flags_by_module_dict()[name])
    numeric = [f for f in own if type(f.parser).__name__ in ("IntegerParser", "FloatParser")]
    accepted = {}
    for flag in numeric:
        for value in (0, -1, 1.5) if type(flag.parser).__name__ == "FloatParser" else (0, -1):
            flags.FLAGS.unparse_flags()
            try:
                flags.FLAGS(["prog", *required, f"--{flag.name}={value}"])
            except flags.Error:
                continue
            accepted.setdefault(flag.name, []).append(value)
    found[name] = {"numeric": sorted(f.name for f in numeric), "accepted": accepted}
    for flag in own:
        delattr(flags.FLAGS, flag.name)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def probed() -> dict:
    commands = {f"gpt1_jax.cli.{command}": required for command, (required, _) in COMMANDS.items()}
    done = jobs.run([sys.executable, "-c", PROBE, json.dumps(commands)], timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_zero_and_negative_flags_are_documented_or_refused(probed, command):
    found = probed[f"gpt1_jax.cli.{command}"]
    assert found["numeric"], "a command without numeric flags needs no entry here"
    accepted = {name: set(values) for name, values in found["accepted"].items()}
    assert accepted == COMMANDS[command][1]


def test_every_command_module_is_in_the_table_and_no_alias_is_left():
    commands = {p.stem for p in CLI.glob("*.py")} - {"__init__", "common"}
    assert set(COMMANDS) | FLAGLESS == commands
    for alias in ("aot", "bench", "bench_generate", "sample", "evaluate_lm"):
        assert not (jobs.REPO / "gpt1_jax" / f"{alias}.py").exists()


def docstring(path: pathlib.Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")),
                         ids=lambda p: p.stem)
def test_help_texts_survive_absl(path):
    doc = docstring(path)
    if path.stem in ("__init__", "common"):
        return
    assert doc, f"{path} has no docstring for --help"
    assert doc.count("%") == 2 * doc.count("%%"), "absl would substitute into a bare %"
    source = path.read_text()
    literal = ast.get_source_segment(source, ast.parse(source).body[0].value)
    raw = literal[0] in "rR"
    assert raw or "\\\n" not in literal, "a backslash ending a line joins it to the next in --help"


@pytest.mark.parametrize("command, shows", [("aot", "--topology"), ("bench", "--reference"),
                                            ("sample", "--init_from")])
def test_help_prints_the_docstring_and_the_commands_own_flags(command, shows):
    # absl ends --help with status 1.
    done = jobs.run([sys.executable, "-m", f"gpt1_jax.cli.{command}", "--help"], expect_ok=False, timeout=120)
    doc = docstring(CLI / f"{command}.py")
    assert done.stdout.startswith(doc.strip().splitlines()[0]), done.stdout[:300]
    assert f"  {shows}" in done.stdout
    assert "gpt1_jax/cli/" in done.stdout and "python -m gpt1_jax.cli." in done.stdout


def test_bench_without_torch_names_the_extra():
    hide_torch = ("import importlib.util as u, runpy, sys\n"
                  "real = u.find_spec\n"
                  "u.find_spec = lambda n, *a: None if n in ('torch', 'transformers') else real(n, *a)\n"
                  "sys.argv = ['bench', '--shape=tiny']\n"
                  "runpy.run_module('gpt1_jax.cli.bench', run_name='__main__')\n")
    result = jobs.run([sys.executable, "-c", hide_torch], expect_ok=False, timeout=120)
    assert result.returncode == 1, jobs.output(result)
    assert result.stderr.strip().splitlines() == [
        'error: bench: --reference=hf needs torch and transformers: pip install ".[bench]" '
        "(or --reference=none to time the project alone)"]


@pytest.mark.parametrize("argv, expected", [
    (["sample", "--init_from=x", "--prompt=p", "--num_samples=0"],
     "error: flag --num_samples=0: 0 is not a positive integer"),
    (["convert", "--from=openai", "--to=orbax", "only_src"], "error: convert: usage:"),
])
def test_a_bad_command_line_is_one_error_line(argv, expected):
    result = jobs.run([sys.executable, "-m", f"gpt1_jax.cli.{argv[0]}", *argv[1:]], expect_ok=False, timeout=120)
    assert result.returncode == 1, jobs.output(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), jobs.output(result)
