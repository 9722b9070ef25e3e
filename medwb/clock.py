"""The project's one clock for stamps written into records, manifests and stores."""
from __future__ import annotations

import datetime as _dt


def now(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601 (``timespec`` as in ``datetime.isoformat``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)
