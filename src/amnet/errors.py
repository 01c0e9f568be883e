"""The one exception type the command-line tools turn into a one-line message."""


class AMNetError(Exception):
    """A problem with the user's input (file, config, argument), described in one line."""
