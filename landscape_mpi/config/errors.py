"""User-facing errors and the process exit codes (documented in README.md)."""

#: Every point of the grid is computed.
EXIT_COMPLETE = 0
#: An internal error (a bug, an out-of-memory, a failed rank): the message and traceback are printed.
EXIT_FAILURE = 1
#: A user error: bad argument, missing file, mismatched resume. One line on stderr names the fix.
EXIT_USER_ERROR = 2
#: Stopped early (SIGTERM, SIGINT, SIGUSR1) with every finished point written: rerun the same command to resume.
#: 75 is EX_TEMPFAIL from sysexits.h ("try again later").
EXIT_RESUMABLE = 75


class UserError(Exception):
    """A mistake the user can fix. The message is one line that says what is wrong and how to fix it."""
