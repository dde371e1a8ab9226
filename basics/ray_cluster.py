"""Joining a Ray cluster (or starting a local one) for the commands that scale out:
``training/build_dataset.py --ray`` and ``runtime/generate.py --manifest ... --ray``.

Ray is an optional extra (``pip install 'img2music[ray]'``); one machine stays the default.
Work is handed to Ray Data's actor pools: each actor loads its models once, a killed
actor is restarted and its unfinished batch retried (Ray Data's defaults for actor pools:
``max_restarts=-1``, ``max_task_retries=-1``), and only the driver writes results, so the
on-disk caches see each finished batch exactly once. Output directories must be on a file
system every node sees (a local cluster always does).
"""

from __future__ import annotations

import logging
import os

from img2music.basics.errors import Img2MusicError

log = logging.getLogger(__name__)

LOCAL = "local"
"""``--ray`` without an address: start Ray on this machine."""


def connect(address: str, num_cpus: int | None = None, verbose: bool = False):
    """``ray`` after ``ray.init`` on ``address`` (``local``: a new local cluster with
    ``num_cpus``, default all cores). Worker logs reach the terminal only with ``verbose``."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise Img2MusicError("--ray needs Ray: pip install 'img2music[ray]'") from None
    if ray.is_initialized():
        return ray
    options = dict(include_dashboard=False, log_to_driver=verbose, logging_level=logging.INFO if verbose
                   else logging.ERROR)  # Ray's own notices (auth tokens, deprecations) are not the user's business
    # the job's working directory travels to the workers, so they import this checkout's packages
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runtime_env = {"env_vars": {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    try:
        if address == LOCAL:
            ray.init(num_cpus=num_cpus, runtime_env=runtime_env, **options)
        else:
            ray.init(address=address, runtime_env=runtime_env, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        cause = f" ({str(exc.__cause__).splitlines()[0]})" if exc.__cause__ else ""
        raise Img2MusicError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}{cause}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose  # the command shows its own progress bar
    log.info("Ray: %s", ray.cluster_resources())
    return ray


def actor_pool(ray, size: int):
    """Ray Data's compute strategy for a fixed pool of ``size`` actors."""
    return ray.data.ActorPoolStrategy(size=size)


def cluster_slots(ray, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many workers of that size the cluster holds (at least 1)."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
