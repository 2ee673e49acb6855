"""The one exception type a user's mistake raises; the CLI prints it as one line and exits non-zero."""


class DistilError(Exception):
    """A problem with the user's input: the message names the input, the value and the fix."""
