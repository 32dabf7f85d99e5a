"""The project's one error type for problems a user can fix.

Every error the project raises about a value, a file or a run (a config value out of
range, a dataset that does not parse, a checkpoint that does not fit, a run that cannot
go on) subclasses `UserError`. The command-line tools print such an error as one line
naming what is wrong, and exit with status 1 without a traceback (`--verbose` shows it);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message names the value or file and the fix."""
