"""The clinical apps: the shared core (long-lived model workers, the SQLite feedback store)
and one folder per app (``diagnosis/``)."""
