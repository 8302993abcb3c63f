"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class SegkitError(Exception):
    """A problem with the user's input (file, csv row, config key) or environment, stated in one line.

    Raise it with a message that names the offending file, row or key; the CLI prints ``error: <message>`` and
    exits with status 2 instead of a traceback.
    """


class ConfigError(SegkitError):
    """Bad configuration: unknown key, wrong type, missing path."""


class DataError(SegkitError):
    """Bad competition data: unreadable image, size mismatch, malformed csv or RLE."""
