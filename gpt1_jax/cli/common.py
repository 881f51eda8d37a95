"""What every command line shares: absl flags, quiet library logs, and problems the user
can fix (`errors.UserError`, `OSError`) reported as one `error: ...` line with status 1.
Anything else is a bug and keeps its traceback."""
import logging
import sys

from absl import app
from absl import logging as absl_logging

from gpt1_jax.errors import UserError


def run(main, name: str = "") -> None:
    """`app.run(main)` with the project's logging and error reporting."""
    def wrapped(argv):
        # Library chatter (orbax, XLA) at warnings only; this project's own progress at info.
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("gpt1_jax").setLevel(logging.INFO)
        try:
            main(argv)
        except (UserError, OSError) as e:
            print(f"error: {name + ': ' if name else ''}{e}", file=sys.stderr, flush=True)
            sys.exit(1)
    app.run(wrapped)
