"""Choosing where Dask work runs (private module; names re-exported by the package).

One object, :class:`DaskRunner`, hides the difference between

- ``'threads'`` / ``'sync'``: this process (dask's threaded or synchronous scheduler);
- ``'local'`` or ``'local:N'``: a ``dask.distributed.LocalCluster`` of N worker
  processes started here, listening on 127.0.0.1 only, closed with the runner;
- ``'tcp://host:port'`` (or ``tls://…``): an existing scheduler, e.g. the facility's
  Dask cluster; workers must see the same file system paths as this process.

``None`` reads the environment variable :data:`SCHEDULER_ENV` (the IPython profile and
``txm-live analyze3d`` use it), and falls back to ``'threads'``.
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["SCHEDULER_ENV", "DaskRunner", "dask_runner"]

#: Environment variable naming the scheduler (``tcp://host:8786``, ``local:4``, ``threads``).
SCHEDULER_ENV = "TXM_LIVE_DASK_SCHEDULER"
_IN_PROCESS = ("threads", "sync")
_REMOTE_PREFIXES = ("tcp://", "tls://", "inproc://", "ucx://")
#: How long a local worker may take to start and reach the scheduler (dask's default is
#: 30 s; a loaded analysis machine importing numba in every new worker can exceed it).
LOCAL_CONNECT_TIMEOUT = "120s"
#: glibc's variable that dask.distributed's nannies set to 65536 for every worker. Setting
#: it fixes glibc's mmap threshold at 128 KiB, so every chunk-sized array is a fresh
#: mmap whose pages fault in one by one: on the per-voxel fit that cost 1.4-1.6x the
#: in-process wall time (workers' system time doubled); without it 1.0x, for ~100 MiB
#: more resident per worker (benchmarks/bench_xanes3d.py --parts fit).
MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


class DaskRunner:
    """Runs tasks and dask graphs in the place :func:`dask_runner` chose.

    Attributes
    ----------
    scheduler : str
        What was asked for (after reading the environment).
    client : distributed.Client or None
        None in process.
    """

    def __init__(self, scheduler: str, client=None, cluster=None):
        self.scheduler = scheduler
        self.client = client
        self._cluster = cluster

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def n_workers(self) -> int:
        """Worker processes (1 in process)."""
        if self.client is None:
            return 1
        return len(self.client.scheduler_info()["workers"])

    def compute(self, *collections):
        """``dask.compute`` on this runner's scheduler."""
        import dask

        if self.client is not None:
            return tuple(self.client.compute(list(collections), sync=True))
        return dask.compute(*collections, scheduler=self.scheduler)

    def map(self, func: Callable, items, **kwargs) -> list:
        """``[func(item, **kwargs) for item in items]``, one task per item on a cluster
        (in order; the first failure is raised after all tasks ended)."""
        items = list(items)
        if self.client is None:
            return [func(item, **kwargs) for item in items]
        futures = [self.client.submit(func, item, pure=False, **kwargs) for item in items]
        return self.client.gather(futures)

    def close(self) -> None:
        """Close the client, and the cluster if this runner started it."""
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self.client = self._cluster = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"DaskRunner({self.scheduler!r}, workers={self.n_workers()})"


def _local_cluster(n_workers: int, threads_per_worker: int, memory_limit, malloc_trim: bool):
    import dask
    from dask.distributed import LocalCluster

    # numba (the XANES kernel) would start one thread per core in every worker: give
    # each worker its own share instead of oversubscribing the cores.
    env = {"NUMBA_NUM_THREADS": str(threads_per_worker),
           "OMP_NUM_THREADS": str(threads_per_worker)}
    config = {"distributed.comm.timeouts.connect": LOCAL_CONNECT_TIMEOUT}
    if not malloc_trim:  # None removes the variable from what the nannies set
        config[f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM_ENV}"] = None
    with dask.config.set(config):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                            processes=True, host="127.0.0.1", dashboard_address=None,
                            memory_limit=memory_limit, env=env)


def dask_runner(scheduler: str | None = None, *, n_workers: int | None = None,
                threads_per_worker: int = 1, memory_limit="auto", malloc_trim: bool = False) -> DaskRunner:
    """A :class:`DaskRunner` for ``scheduler``.

    Parameters
    ----------
    scheduler : str or None
        ``'threads'``, ``'sync'``, ``'local'``, ``'local:N'``, or a scheduler address
        (``'tcp://10.0.0.5:8786'``). None: ``$TXM_LIVE_DASK_SCHEDULER``, else
        ``'threads'``.
    n_workers : int, optional
        Workers of a ``'local'`` cluster (default: the CPUs this process may use, or N
        of ``'local:N'``).
    threads_per_worker : int
        Threads per local worker (numba and FFT threads follow it).
    memory_limit : str or int
        Per-worker memory limit of a local cluster (``dask.distributed`` syntax).
    malloc_trim : bool
        Keep dask's ``MALLOC_TRIM_THRESHOLD_=65536`` in a local cluster's workers: less
        memory kept by each worker, at the cost of page faults on every large array
        (:data:`MALLOC_TRIM_ENV`). Default False: glibc's own adaptive thresholds, as in
        this process.

    Raises
    ------
    ValueError
        An unknown scheduler string (named, with the accepted forms).
    """
    spec = scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV) or "threads"
    spec = str(spec).strip()
    if spec in _IN_PROCESS:
        return DaskRunner(spec)
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if count and not count.isdigit():
            raise ValueError(f"scheduler {spec!r}: expected 'local:N' with N a worker count")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n = int(count) if count else (n_workers or max(1, cpus or 1))
        if n < 1 or int(threads_per_worker) < 1:
            raise ValueError(f"need n_workers >= 1 and threads_per_worker >= 1; got {n}, {threads_per_worker}")
        from dask.distributed import Client

        cluster = _local_cluster(n, int(threads_per_worker), memory_limit, bool(malloc_trim))
        return DaskRunner(spec, Client(cluster), cluster)
    if spec.startswith(_REMOTE_PREFIXES):
        from dask.distributed import Client

        return DaskRunner(spec, Client(spec))
    raise ValueError(f"unknown scheduler {spec!r}: expected 'threads', 'sync', 'local', 'local:N' "
                     f"or an address such as 'tcp://host:8786' (also via ${SCHEDULER_ENV})")
