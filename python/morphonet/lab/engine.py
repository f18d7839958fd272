"""Execution on Optuna: every experiment (one arm at one seed) is one Optuna trial.

A hypothesis is one study (named by its id and a hash of its design, so a changed design never
reuses old trials). The lab enqueues a trial per missing (arm, seed) with its full config as
user attributes; workers take waiting trials (``study.optimize`` one trial at a time, so
Optuna's heartbeat and failure bookkeeping apply) and record the metrics as user attributes
and the hypothesis' metric as the trial's value.

Storage: Optuna's journal file (``JournalStorage`` + ``JournalFileBackend``, file-locked, many
processes on one machine) by default, or an RDB URL (PostgreSQL) that workers on several
machines share, with a heartbeat so a dead machine's trials are failed after ``GRACE_S`` and
run again.

Resuming: a finished trial is never redone. A trial left RUNNING by a killed worker on this
machine (its process is gone) or, with the journal, by a worker that died before it said who
it was, is marked failed and enqueued again; trials still WAITING are run as they are. The
analysis reads the lowest-numbered finished trial of each (arm, seed) (an order every machine
agrees on), so a resumed run reports exactly what an uninterrupted one does — given that each
(arm, seed) experiment is deterministic, which nothing here checks.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

from .experiments import Experiment, RunContext

__all__ = ["GRACE_S", "HEARTBEAT_S", "JournalFlock", "Plan", "collect", "execute", "open_storage",
           "storage_url"]

HEARTBEAT_S = 10   # RDB heartbeat of a running trial
GRACE_S = 60       # ... and how long without one before it counts as dead
_RDB = ("postgresql", "postgres", "mysql", "sqlite")


@dataclass(frozen=True)
class Plan:
    """The experiments of one hypothesis: its study, the experiment, every arm's full
    parameters, the seeds and the metric."""

    hypothesis: str
    study: str
    experiment: Experiment
    arms: dict          # arm -> params (experiment defaults, hypothesis params, arm's own)
    control: str
    seeds: tuple
    metric: str
    direction: str

    def keys(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.arms for s in self.seeds]


def _is_rdb(spec: str) -> bool:
    return spec.split(":", 1)[0].split("+", 1)[0] in _RDB


def storage_url(spec: str) -> str:
    """``spec`` as the lab records it: an RDB URL as given, a journal path made absolute."""
    return spec if _is_rdb(spec) else os.path.abspath(spec)


def _driver(url: str) -> str:
    """A PostgreSQL URL without a driver gets the one installed: SQLAlchemy 2.1 assumes
    psycopg 3, this package declares psycopg2 (``postgres://`` is accepted as well)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    return f"postgresql+{driver}{sep}{rest}"


def open_storage(spec: str) -> Any:
    """An Optuna storage: an RDB URL (``postgresql://...``, ``sqlite:///...``) with a
    heartbeat, or a journal file path (`JournalStorage` on a `JournalFileBackend`)."""
    import optuna

    if _is_rdb(spec):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(_driver(spec), heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    os.makedirs(os.path.dirname(os.path.abspath(spec)), exist_ok=True)
    return JournalStorage(JournalFileBackend(spec, lock_obj=JournalFlock(spec)))


class JournalFlock:
    """The journal's lock: ``fcntl.flock`` on ``<journal>.flock``, which the kernel releases
    when its holder dies. Optuna's own file locks (a symlink or lock file) outlive a SIGKILLed
    holder and make everyone else wait their 30 s grace period; and a write cut short by the
    kill leaves half a line that the next append would turn into a corrupt log. So, holding
    the lock (no live writer is mid-write then), a journal whose last line has no newline is
    cut back to its last complete line: that record was never written."""

    def __init__(self, journal: str):
        self._journal, self._path, self._fd = journal, journal + ".flock", -1

    def acquire(self) -> bool:
        import fcntl

        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._repair()
        return True

    def release(self) -> None:
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1

    def _repair(self) -> None:
        try:
            size = os.path.getsize(self._journal)
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self._journal, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            keep = f.read().rfind(b"\n") + 1
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def _key(attrs: dict) -> tuple[str, int] | None:
    if "lab_arm" not in attrs:
        return None
    return attrs["lab_arm"], int(attrs["lab_seed"])


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's: its heartbeat (RDB) decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    try:  # a killed worker whose parent died too stays a zombie until init reaps it
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _study(storage: Any, plan: Plan) -> Any:
    import optuna

    try:
        return optuna.create_study(study_name=plan.study, storage=storage,
                                   direction=plan.direction, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:  # created by another machine just now
        return optuna.load_study(study_name=plan.study, storage=storage)


def _fail_stale(study: Any, storage: Any, unnamed: bool) -> int:
    """Mark trials left RUNNING by dead workers of this machine as failed (and, when
    ``unnamed``, those whose worker died before it wrote its name); returns how many."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("lab_worker")
        if (worker is None and unnamed) or (worker is not None and not _alive(worker)):
            storage.set_trial_user_attr(t._trial_id, "lab_stale", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


def _enqueue(study: Any, plan: Plan, skip: set) -> int:
    """Enqueue a trial for every (arm, seed) that has no finished, running or waiting trial
    (and is not in ``skip``); returns how many."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    have = {_key(t.user_attrs) for t in study.get_trials(deepcopy=False, states=live)}
    n = 0
    for arm, seed in plan.keys():
        if (arm, seed) in have or (arm, seed) in skip:
            continue
        config = {"hypothesis": plan.hypothesis, "experiment": plan.experiment.name,
                  "arm": arm, "seed": seed, "params": plan.arms[arm], "metric": plan.metric}
        study.enqueue_trial({}, user_attrs={"lab_arm": arm, "lab_seed": seed,
                                            "lab_config": config})
        n += 1
    return n


def _errors(study: Any, since: int) -> dict[tuple[str, int], str]:
    """(arm, seed) → the error of trials numbered ``since`` or later that raised."""
    from optuna.trial import TrialState

    return {_key(t.user_attrs): t.user_attrs["lab_error"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number >= since and "lab_error" in t.user_attrs}


def _objective(plan: Plan, device: str, workdir: str):
    import optuna

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any) -> float:
        attrs = trial.user_attrs
        if "lab_arm" not in attrs:  # the queue emptied while this worker asked: not ours
            trial.set_user_attr("lab_spare", True)
            raise optuna.TrialPruned("no waiting experiment")
        trial.set_user_attr("lab_worker", worker)
        ctx = RunContext(attrs["lab_arm"], device, workdir)
        t0 = time.perf_counter()
        try:
            metrics = plan.experiment.run(dict(attrs["lab_config"]["params"]),
                                          int(attrs["lab_seed"]), ctx)
            metrics = {k: float(v) for k, v in metrics.items()}
            if plan.metric not in metrics:
                raise KeyError(f"experiment {plan.experiment.name!r} returned no "
                               f"{plan.metric!r} (it returned {sorted(metrics)})")
        except Exception as e:
            trial.set_user_attr("lab_error", f"{type(e).__name__}: {e}")
            raise
        trial.set_user_attr("lab_metrics", metrics)
        trial.set_user_attr("lab_seconds", time.perf_counter() - t0)
        return metrics[plan.metric]

    return objective


def _waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def work(spec: str, plans: list[Plan], device: str, workdir: str, threads: int = 0) -> None:
    """Run waiting trials of ``plans`` (in order) until none is left: one worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        import torch

        torch.set_num_threads(threads)
    storage = open_storage(spec)
    for plan in plans:
        study = optuna.load_study(study_name=plan.study, storage=storage)
        objective = _objective(plan, device, workdir)
        while _waiting(study):
            study.optimize(objective, n_trials=1, catch=(Exception,))


def execute(spec: str, plans: list[Plan], workers: int, device: str, workdir: str,
            threads: int = 1, poll: float = 2.0, log=None) -> None:
    """Run every experiment of ``plans`` that has no finished trial, with ``workers``
    processes (1: in this process), then wait for trials other machines are running. Raises
    ``RuntimeError`` naming the experiments that raised."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(spec)
    journal = not _is_rdb(spec)
    studies = {p.study: _study(storage, p) for p in plans}
    since = {p.study: len(studies[p.study].trials) for p in plans}
    first = True
    while True:
        queued = 0
        for p in plans:
            s = studies[p.study]
            stale = _fail_stale(s, storage, unnamed=journal and first)
            if not journal:  # trials whose heartbeat stopped (another machine died)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(s)
            queued += _enqueue(s, p, skip=set() if first else set(_errors(s, since[p.study])))
            if log and (stale or first):
                done = len(collect(s, p))
                log(f"[{p.hypothesis}] {done}/{len(p.keys())} experiments finished"
                    + (f", {stale} left running by a dead worker run again" if stale else ""))
        first = False
        if any(_waiting(studies[p.study]) for p in plans):
            _run_workers(spec, plans, workers, device, workdir, threads)
        missing = {p.study: set(p.keys()) - set(collect(studies[p.study], p)) for p in plans}
        if not any(missing.values()):
            return
        errors = {(p.hypothesis, k): e for p in plans
                  for k, e in _errors(studies[p.study], since[p.study]).items()
                  if k in missing[p.study]}
        running = _running(studies, plans)
        if errors and not running:
            lines = [f"{h} arm {a!r} seed {s}: {e}" for (h, (a, s)), e in sorted(errors.items())]
            raise RuntimeError("experiments failed:\n  " + "\n  ".join(lines))
        if running:  # another machine (or process) is on them: wait
            time.sleep(poll)


def _running(studies: dict, plans: list[Plan]) -> bool:
    from optuna.trial import TrialState

    return any(studies[p.study].get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               for p in plans)


def _run_workers(spec: str, plans: list[Plan], workers: int, device: str, workdir: str,
                 threads: int) -> None:
    """``workers`` processes running `work`. They are fresh interpreters
    (``python -m morphonet.lab.worker``: no fork of a process whose torch may hold thread
    pools, no re-import of the caller's script), except for an experiment defined in the
    caller's ``__main__``, which only a forked process can reach."""
    if workers == 1:
        work(spec, plans, device, workdir)
        return
    args = (spec, plans, device, workdir, threads)
    if any(getattr(p.experiment.run, "__module__", None) == "__main__" for p in plans):
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=work, args=args) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        codes = [p.exitcode for p in procs]
    else:
        os.makedirs(workdir, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=workdir, prefix=".plans_", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(args, f)
        try:
            procs = [subprocess.Popen([sys.executable, "-m", "morphonet.lab.worker", path])
                     for _ in range(workers)]
            codes = [p.wait() for p in procs]
        finally:
            os.unlink(path)
    if any(codes):
        raise RuntimeError(f"lab worker processes exited with {codes} (their errors are "
                           f"printed above)")


def collect(study: Any, plan: Plan) -> dict[tuple[str, int], dict]:
    """(arm, seed) → metrics of the lowest-numbered finished trial of each of the plan's
    experiments."""
    from optuna.trial import TrialState

    out: dict = {}
    wanted = set(plan.keys())
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.number):
        k = _key(t.user_attrs)
        if k in wanted and k not in out:
            out[k] = t.user_attrs["lab_metrics"]
    return out


def load(spec: str, plan: Plan) -> dict[tuple[str, int], dict]:
    """`collect` from the storage ``spec`` (the study must exist)."""
    import optuna

    return collect(optuna.load_study(study_name=plan.study, storage=open_storage(spec)), plan)
