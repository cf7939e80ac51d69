"""One exception type for mistakes a user can make, so the CLI can print a message instead of a traceback."""


class ImtextError(Exception):
    """A problem the user can fix (bad path, bad input, missing weights). The message says what to do."""


class DataError(ImtextError):
    """A dataset that cannot be read as asked (missing files, unknown split, no usable pairs)."""
