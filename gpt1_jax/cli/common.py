"""What every command line shares: absl flags, quiet library logs, and every mistake the user
can fix reported as one `error: ...` line with status 1: a bad flag value, an unknown flag or
config key (with the likeliest intended one), a missing config file, and, from the command
itself, `app.UsageError`, `errors.UserError` and `OSError`. Anything else is a bug and keeps its traceback.
"""
import difflib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections.config_flags.config_flags import is_config_flag

from gpt1_jax.errors import UserError


def run(main, name: str = "") -> None:
    """`app.run(main)` with the project's logging and error reporting."""
    prefix = f"{name}: " if name else ""

    def wrapped(argv):
        # Library chatter (orbax, XLA) at warnings only; this project's own progress at info.
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("gpt1_jax").setLevel(logging.INFO)
        try:
            main(argv)
        except app.UsageError as e:
            fail(f"{prefix}{e} (--help lists the flags)")
        except (UserError, OSError) as e:
            fail(f"{prefix}{e}")
    app.run(wrapped, flags_parser=parse_flags)


def fail(message: str) -> None:
    """Ends the command with one `error:` line (a multi-line message is joined) and status 1."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, every mistake in one line.

    absl reports its own errors (a bad value, an unknown or missing flag) as `flags.Error`;
    ml_collections raises KeyError/AttributeError from inside the parse for an override of a
    key the config lacks, and OSError when the config file cannot be read.
    """
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (--help lists the flags)")
    except (KeyError, AttributeError, OSError) as e:
        fail(config_override_problem(argv) or str(e))
    # Without overrides, ml_collections defers a missing config file's error to the first read.
    problem = config_override_problem(argv, keys=False)
    if problem:
        fail(problem)
    return remaining


def _config_flag_names() -> list[str]:
    return [name for name, flag in flags.FLAGS._flags().items() if is_config_flag(flag)]


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value absl takes for --name: the last one given."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def config_keys(config) -> list[str]:
    """Every key path of a config, sections included: "train", "train.num_steps", ..."""
    paths = []
    for key, value in config.items():
        paths.append(key)
        if hasattr(value, "items"):
            paths += [f"{key}.{sub}" for sub in config_keys(value)]
    return paths


def config_override_problem(argv: list[str], keys: bool = True) -> str | None:
    """What is wrong with the --config=PATH / --config.KEY=VALUE flags of `argv` (only the
    files unless `keys`), or None."""
    from gpt1_jax import config_files
    for name in _config_flag_names():
        path = _flag_value(argv, name)
        if path is None:
            continue
        file_name, *args = path.split(":", 1)
        if not os.path.isfile(file_name):
            return f"--{name}={path}: no such config file {file_name!r}"
        if not keys:
            continue
        config = config_files.load(file_name, *args)
        known = config_keys(config)
        for arg in argv:
            if not arg.startswith(f"--{name}.") and not arg.startswith(f"--no{name}."):
                continue
            key = arg.split("=", 1)[0].split(".", 1)[1]
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean --{name}.{close[0]}?" if close else ""
                return f"--{name}.{key}: the config {file_name} has no key {key!r}{hint}"
    return None
