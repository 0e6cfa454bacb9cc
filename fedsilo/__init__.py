"""fedsilo: federated learning across data silos as Prefect flows on Dask workers."""

__version__ = "0.1.0"
