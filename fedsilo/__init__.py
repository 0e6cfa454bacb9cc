"""fedsilo: federated learning across data silos as Prefect flows on Dask workers.

``fedsilo.train(spec)`` trains a federation and returns the run read back
(``fedsilo.api.TrainedRun``); ``fedsilo.load_run`` reads a finished run,
``fedsilo.runs`` lists a checkpoint store's runs. They live in ``fedsilo.api``
and are imported on first use, so ``import fedsilo`` loads neither Prefect nor
Dask.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Names of ``fedsilo.api`` that ``fedsilo`` gives on first use.
_FROM_API = ("TrainedRun", "load_estimator", "load_run", "runs", "train")

__all__ = ["TrainedRun", "__version__", "load_estimator", "load_run", "runs", "train"]


def __getattr__(name: str) -> Any:
    """Import ``fedsilo.api`` the first time one of its names is asked for."""
    if name in _FROM_API:
        return getattr(importlib.import_module("fedsilo.api"), name)
    raise AttributeError(f"module 'fedsilo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_API})
