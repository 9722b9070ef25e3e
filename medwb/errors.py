"""One exception type for every user-facing error.

Messages are one line, name the parameter or path at fault and say how to fix it;
the CLI prints them without a traceback.
"""


class MedwbError(Exception):
    """A problem the user can fix: bad parameter, missing path, unusable model."""
