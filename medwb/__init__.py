"""MedWB: a notebook workbench for private, CPU-only medical LLM deployment.

Importing medwb first turns every network path of the model stack off (see
``medwb.offline``); that is why it happens here, before anything else.
"""
from medwb import offline as _offline

_offline.apply()

from medwb.errors import MedwbError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MedwbError", "__version__"]
