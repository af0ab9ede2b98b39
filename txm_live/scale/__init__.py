"""Where chunked analysis runs: in this process, on a local Dask cluster, or on a
facility's Dask scheduler (:func:`dask_runner`)."""

from .cluster import SCHEDULER_ENV, DaskRunner, dask_runner

__all__ = ["SCHEDULER_ENV", "DaskRunner", "dask_runner"]
