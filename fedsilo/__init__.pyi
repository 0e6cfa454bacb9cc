# What type checkers see of ``fedsilo``: the names fedsilo/__init__.py gives
# from ``fedsilo.api`` on first use (an import there would load the API, and
# with it Prefect, whenever any part of fedsilo is imported).
from fedsilo.api import TrainedRun as TrainedRun
from fedsilo.api import load_estimator as load_estimator
from fedsilo.api import load_run as load_run
from fedsilo.api import runs as runs
from fedsilo.api import train as train

__version__: str
__all__ = ["TrainedRun", "__version__", "load_estimator", "load_run", "runs", "train"]
