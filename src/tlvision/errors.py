"""The one error type users see: a message that names the file and the fix, exit status 2."""


class UserError(Exception):
    """A problem with the user's input or environment that they can fix.

    The command line prints the message on one line (no traceback) and exits with status 2.
    """

    exit_status = 2
