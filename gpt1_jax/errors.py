"""The one base class of problems a user can fix: a bad config value, data file,
checkpoint or workdir, a full disk, a diverged run.

Entry points print these as one `error: ...` line (exit status 1); every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the job's inputs or environment, described for the user."""


class ConfigError(UserError, ValueError):
    """A config value (or flag) that cannot work; the message names the key."""


class DataError(UserError, ValueError):
    """A data file or dataset that cannot be read; the message names the file."""
