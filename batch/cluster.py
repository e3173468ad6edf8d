"""Running batch tasks on Ray: a pool of actors, each holding its models, fed one task at a time.

Why core actors and ``ray.wait`` rather than Ray Data: a task is one video that takes seconds to
minutes, its result must be written the moment it finishes (so a killed run keeps it), and a task
that fails must become a row with its message, not stop a pipeline. Each actor builds its worker
(loads the models) once; the driver hands every idle actor the next task and takes results in the
order they finish.

Faults:

* the worker raises for the task (a corrupt file, no face): the actor turns it into a failed
  outcome with the message (see :class:`_Actor`), and the run goes on;
* the worker *process* dies mid-task (killed, out of memory, a crash in native code): Ray restarts
  the actor (its constructor loads the models again) and runs the task again, up to ``retries``
  times; after that the task fails with "the worker process died..." and a fresh actor replaces
  the dead one;
* the models cannot be loaded (weights missing): the run stops at once with that message, since
  every task would fail the same way.

Ray is imported only here and only when a batch runs (``pip install '.[batch]'``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import DependencyError, LipSyncError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[batch]'"
# Set in every worker process before it imports anything: per-video progress bars would only fill
# the workers' log files (the driver shows one bar for the whole run).
WORKER_ENV = {"TQDM_DISABLE": "1"}


class Worker(Protocol):
    """What runs in an actor: built once (models loaded), then ``run`` per task."""

    def run(self, task: Any) -> dict[str, Any]: ...

    def versions(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Resources:
    """Where the run goes and what each worker gets."""

    address: str | None = None  # None: start a local Ray on this machine; "auto", "host:port", "ray://host:port"
    num_workers: int | None = None  # None: as many as the cluster's CPUs (or GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractions share a GPU between workers (Ray only schedules, it does not cap)
    retries: int = 2  # runs of a task again after its worker process died
    dashboard: bool = False
    worker_logs: bool = False  # stream the workers' stdout/stderr to this console


def import_ray():
    try:
        import ray
    except ImportError:
        raise DependencyError(f"the batch command runs on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(resources: Resources) -> Iterator[Any]:
    """Ray, started locally or joined; left running if this process had already started it."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": resources.worker_logs, "logging_level": logging.WARNING}
    try:
        if resources.address is None:
            ray.init(address="local", include_dashboard=resources.dashboard, **quiet)
        else:
            ray.init(address=resources.address, **quiet)
    except ConnectionError as exc:
        raise LipSyncError(f"could not join the Ray cluster at {resources.address}: {exc}. Start one with "
                           "`ray start --head`, or leave out --address to run on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Actor:
    """The code of each Ray actor: builds its worker once, then runs tasks and reports outcomes."""

    def __init__(self, make_worker: Callable[[], Worker]) -> None:
        self.problem = ""
        try:
            self.worker = make_worker()
        except LipSyncError as exc:  # e.g. weights missing: every task would fail, so the run stops
            self.problem = str(exc)

    def ready(self) -> dict[str, Any]:
        if self.problem:
            return {"problem": self.problem}
        return {"pid": os.getpid(), "versions": self.worker.versions()}

    def run(self, task: Any) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            outcome: dict[str, Any] = {"status": "ok", "error": None, **self.worker.run(task)}
        except LipSyncError as exc:
            outcome = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one video's unforeseen failure must not stop the run
            log.exception("unexpected error on %s", task)
            outcome = {"status": "failed", "error": f"unexpected {type(exc).__name__}: {exc}"}
        outcome.update(seconds=round(time.perf_counter() - start, 3), worker=f"{socket.gethostname()}:{os.getpid()}",
                       versions=self.worker.versions())
        return outcome


def worker_count(ray: Any, resources: Resources, tasks: int) -> int:
    """Workers to start: as asked, or what the cluster's CPUs and GPUs hold; never more than the tasks."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if resources.cpus_per_worker > cpus or resources.gpus_per_worker > gpus:
        message = (f"a worker asks for {resources.cpus_per_worker:g} CPUs and {resources.gpus_per_worker:g} GPUs, "
                   f"but the cluster has {cpus:g} CPUs and {gpus:g} GPUs")
        if resources.address is None:
            raise LipSyncError(message + ": lower --cpus-per-worker / --gpus-per-worker")
        log.warning("%s; waiting for the cluster to grow", message)
    if resources.num_workers is not None:
        wanted = resources.num_workers
    else:
        wanted = int(cpus // resources.cpus_per_worker) if resources.cpus_per_worker > 0 else tasks
        if resources.gpus_per_worker > 0:
            wanted = min(wanted, int(gpus // resources.gpus_per_worker))
    return max(1, min(wanted, tasks))


class Pool:
    """``size`` actors building workers with ``make_worker``; :meth:`run` yields each task's outcome."""

    def __init__(self, ray: Any, make_worker: Callable[[], Worker], resources: Resources, size: int) -> None:
        self.ray = ray
        self.make_worker = make_worker
        self.resources = resources
        self.size = size
        self.versions: dict[str, str] = {}
        retries = resources.retries
        self._actor_class = ray.remote(_Actor).options(
            num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker,
            max_restarts=retries, max_task_retries=retries, runtime_env={"env_vars": WORKER_ENV})
        self._actors: list[Any] = []

    def _start(self) -> tuple[Any, Any]:
        actor = self._actor_class.remote(self.make_worker)
        self._actors.append(actor)
        return actor, actor.ready.remote()

    def _retire(self, actor: Any) -> None:
        self._actors.remove(actor)
        self.ray.kill(actor)

    def run(self, tasks: Iterable[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(task, outcome)`` as each task finishes, in any order; the actors are ended afterwards."""
        ray = self.ray
        todo = deque(tasks)
        starting: dict[Any, Any] = {}  # ready() ref -> actor
        running: dict[Any, tuple[Any, Any]] = {}  # run() ref -> (actor, task)
        idle: list[Any] = []
        try:
            for _ in range(self.size):
                actor, ref = self._start()
                starting[ref] = actor
            while todo or running:
                while idle and todo:
                    actor = idle.pop()
                    task = todo.popleft()
                    running[actor.run.remote(task)] = (actor, task)
                (ref,), _ = ray.wait([*starting, *running], num_returns=1)
                if ref in starting:
                    idle.append(self._started(starting.pop(ref), ref))
                    continue
                actor, task = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # mostly RayActorError: the process died, retries spent
                    outcome = self._crashed(exc)
                    self._retire(actor)
                    actor, ready = self._start()
                    starting[ready] = actor
                else:
                    idle.append(actor)
                yield task, outcome
        finally:
            for actor in list(self._actors):
                self._retire(actor)

    def _started(self, actor: Any, ref: Any) -> Any:
        try:
            state = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            raise LipSyncError(f"a batch worker could not start: {_first_line(exc)}") from None
        if "problem" in state:
            raise LipSyncError(f"the batch workers could not load their models: {state['problem']}")
        self.versions = state["versions"]
        return actor

    def _crashed(self, exc: Exception) -> dict[str, Any]:
        attempts = self.resources.retries + 1
        log.warning("a worker process died; its task failed after %d attempts", attempts)
        return {"status": "failed", "seconds": None, "worker": None, "versions": self.versions,
                "error": f"the worker process died while processing this file ({attempts} attempt"
                         f"{'s' if attempts > 1 else ''}: killed, out of memory, or a crash in native code): "
                         f"{_first_line(exc)}"}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
