"""One exception type for every user-facing error.

Messages are one line, name the parameter or path at fault and say how to fix it;
the CLI prints them without a traceback.
"""


class MedwbError(Exception):
    """A problem the user can fix: bad parameter, missing path, unusable model."""


def check_count(name: str, value, minimum: int = 1, meaning: str = "") -> int:
    """``value`` is a whole number >= ``minimum`` (bools are not numbers here), else one line
    naming ``name``; ``meaning`` adds what the number is, e.g. "0: all cores"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive" if minimum == 1 else f"a whole number >= {minimum}" if minimum else "a non-negative"
        raise MedwbError(f"{name} must be {kind}{' integer' if minimum in (0, 1) else ''}, got {value!r}"
                         + (f" ({meaning})" if meaning else ""))
    return value
