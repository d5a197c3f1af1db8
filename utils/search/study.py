"""The Optuna study: its storage, one space per study, resuming after a kill, and the ask/tell loop.

* Storage: `sqlite:///OUTPUT_DIR/study.db` by default; any SQLAlchemy URL (PostgreSQL, MySQL: several
  machines), or a journal file (`*.journal`, `*.log`: several processes on a shared file system). A storage
  that cannot be written is an error before any trial runs (a probe file for files, a connection for URLs).
* The space's canonical JSON is a study attribute: a search into an existing study with another space is
  refused (the trials would not be comparable), as is another --metric, seeds or splits.
* Each trial records the process that runs it (`worker`: host:pid). A trial left RUNNING by a process that no
  longer exists on this host was killed: it is marked FAIL and its parameters are queued again, so the
  search goes on where it stopped (trials of live workers, or of other hosts, are left alone).
* Trials are asked for and told (`ask`/`tell`) rather than run by `study.optimize`: `TrialLoop` drives a
  local search; with --ray, Ray Tune's OptunaSearch asks and `utils.search.ray_tune` tells, through the same
  `finished_twin`/`twin_outcome`/`tell`. A configuration train.py refuses is told PRUNED with the reason.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import UserError
from ..files import nearest_existing, probe_writable
from .space import FLOAT, INT, Space

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
JOURNAL_SUFFIXES = (".journal", ".log")
WORKER_ATTR = "worker"
FINISHED = ("COMPLETE", "PRUNED")


def default_storage(output_dir: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(output_dir), STUDY_FILE)


def open_storage(url: str):
    """An Optuna storage for `url`, proven writable before any trial (a UserError naming --storage)."""
    import optuna

    if url.endswith(JOURNAL_SUFFIXES) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        _check_file_place(url)
        try:
            return JournalStorage(JournalFileBackend(url))
        except OSError as exc:
            raise UserError(f"cannot open the journal file: {exc.strerror or exc}", "--storage") from None
    if url.startswith("sqlite:///"):
        _check_file_place(url[len("sqlite:///"):])
    elif "://" not in url:
        raise UserError(f"{url!r} is neither an SQLAlchemy URL (sqlite:///PATH, postgresql://...) nor a journal "
                        f"file ({' or '.join(JOURNAL_SUFFIXES)})", "--storage")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if "sqlite" not in url else {})
    except Exception as exc:  # SQLAlchemy's and the drivers' own errors: not writable, not reachable, no driver
        raise UserError(f"cannot open the study's storage: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                        "--storage") from None


def _check_file_place(path: str) -> None:
    if os.path.isdir(path):
        raise UserError("is a directory; give the study's file", path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError("is read-only: the study cannot record trials in it", path)
    parent = os.path.dirname(os.path.abspath(path))
    existing = nearest_existing(parent)
    if not os.path.isdir(existing):
        raise UserError(f"cannot create the study's folder: {existing} is a file", path)
    probe_writable(existing, path)
    os.makedirs(parent, exist_ok=True)


def open_study(storage, name: str, identity: Dict[str, str], sampler_seed: int, pruning: bool):
    """The study `name` in `storage` (created, or loaded when it exists), refused when it was made with
    another space, metric, seeds or splits (`identity`)."""
    import optuna

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if pruning else \
        optuna.pruners.NopPruner()
    sampler = trial_seeded_tpe(sampler_seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    known = study.user_attrs
    if not known:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return study
    for key, value in identity.items():
        if known.get(key) != value:
            raise UserError(f"study {name!r} in this storage was made with another {key}:\n  it has: "
                            f"{known.get(key)}\n  given:  {value}\nuse another --study_name (or --output_dir) "
                            "for another search", "--study_name")
    return study


def trial_seeded_tpe(seed: int):
    """TPE whose draws for trial N are seeded with (`seed`, N). Seeded once per process, every worker of a
    study (each given the same --sampler_seed, as are the processes of a resumed search) would draw the same
    startup configurations and run them twice; seeded per trial they differ, and one worker's search stays
    reproducible. Trial numbers come from the storage, so no two workers share one."""
    import optuna

    def tpe(trial_seed: int):
        return optuna.samplers.TPESampler(seed=trial_seed % 2 ** 32, n_startup_trials=4)

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self.tpe = tpe(seed)

        def before_trial(self, study, trial):  # (called by ask, under TrialLoop's lock)
            self.tpe = tpe(seed * 1_000_003 + trial.number)
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.tpe.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self.tpe.reseed_rng()

        def __reduce__(self):  # (Tune pickles its searcher, sampler included, into its experiment checkpoint)
            return trial_seeded_tpe, (seed,)

    return TrialSeededTPE()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: Optional[str]) -> bool:
    """Whether the worker `host:pid` may still be running (other hosts: assumed alive)."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def retry_killed_trials(study) -> int:
    """Trials left RUNNING by a dead process on this host: marked FAIL, their parameters queued again."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial.user_attrs.get(WORKER_ATTR)):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "note", "killed; its parameters were queued again")
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        if trial.params and not _waiting_with(study, trial.params):  # (two killed twins: queued once)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        logger.warning("trial %d was left running by a process that no longer exists: marked failed and queued "
                       "again", trial.number)
        count += 1
    return count


def _waiting_with(study, params: Dict[str, Any]) -> bool:
    from optuna.trial import TrialState

    return any(t.system_attrs.get("fixed_params") == params
               for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def finished_count(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED)


def suggest(trial, space: Space) -> Dict[str, Any]:
    """The trial's values, drawn by the sampler from the space."""
    params = {}
    for p in space.params:
        if p.kind == FLOAT:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        elif p.kind == INT:
            params[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1)
        else:
            params[p.name] = trial.suggest_categorical(p.name, p.choices)
    return params


def finished_twin(study, number: int, params: Dict[str, Any]):
    """A finished trial (not `number`) that ran exactly `params`, or None."""
    return next((t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED
                 and t.number != number and t.params == params), None)


def twin_outcome(same) -> Tuple[Any, Optional[float], Dict[str, Any]]:
    """What a trial repeating the finished trial `same` is told: its state, value and record, noted."""
    attrs = {key: value for key, value in same.user_attrs.items() if key not in (WORKER_ATTR, "retry_of")}
    attrs["note"] = f"the configuration of trial {same.number}: not run again" + (
        f" ({same.user_attrs['note']})" if same.user_attrs.get("note") else "")
    return same.state, same.value if same.state.name == "COMPLETE" else None, attrs


def tell(study, trial, state, value: Optional[float], attrs: Dict[str, Any]) -> None:
    """The trial's record as user attributes, then its state and value; one line on stderr."""
    for key, item in attrs.items():
        trial.set_user_attr(key, item)
    study.tell(trial, value, state=state)
    sys_write(f"[trial {trial.number}] {state.name.lower()}" + (
        f": mean - std {value:.4f} (mean {attrs['mean']:.4f}, std {attrs.get('std') or 0:.4f}, n "
        f"{attrs['n']})" if value is not None else f": {attrs.get('note', 'pruned after run 1')}") + "\n")


class TrialLoop:
    """Asks for trials until the study has `n_trials` finished ones, runs each with `run(number, params,
    report)` (a record, or raises) and tells the study: the local search. Thread-safe (a lock around the study)."""

    def __init__(self, study, space: Space, n_trials: int, run: Callable):
        self.study, self.space, self.n_trials, self.run = study, space, n_trials, run
        self.lock = threading.Lock()
        self.in_flight = 0

    def next_trial(self):
        with self.lock:
            if finished_count(self.study) + self.in_flight >= self.n_trials:
                return None
            self.in_flight += 1
            trial = self.study.ask()
            trial.set_user_attr(WORKER_ATTR, worker_id())
            return trial, suggest(trial, self.space)

    def work(self) -> None:
        """One worker: trials until the budget is used (or a trial fails the way every trial would)."""
        from .objective import InvalidConfiguration
        import optuna

        while True:
            asked = self.next_trial()
            if asked is None:
                return
            trial, params = asked
            if self.repeat(trial, params):
                continue
            try:
                record = self.run(trial.number, params, lambda value, step, *_: self._report(trial, value, step))
            except InvalidConfiguration as exc:
                self._tell(trial, optuna.trial.TrialState.PRUNED, None, {"note": f"not run: {exc}"})
                continue
            except UserError as exc:
                self._tell(trial, optuna.trial.TrialState.FAIL, None, {"note": str(exc)[:2000]})
                with self.lock:
                    completed = any_completed(self.study)
                if not completed:
                    raise  # no trial ever completed: the same error would end every trial
                continue
            except BaseException:
                with self.lock:
                    self.in_flight -= 1  # left RUNNING: the next start marks it failed and retries it
                raise
            state = optuna.trial.TrialState.PRUNED if record["pruned"] else optuna.trial.TrialState.COMPLETE
            self._tell(trial, state, None if record["pruned"] else record["value"], record)

    def repeat(self, trial, params: Dict[str, Any]) -> bool:
        """A configuration a finished trial already ran is not run again (a run is deterministic: same flags,
        same seed, same metric): the trial is told that trial's outcome, its note says which."""
        with self.lock:
            same = finished_twin(self.study, trial.number, params)
        if same is None:
            return False
        self._tell(trial, *twin_outcome(same))
        return True

    def _report(self, trial, value: float, step: int) -> bool:
        with self.lock:
            trial.report(value, step)
            return trial.should_prune()

    def _tell(self, trial, state, value, attrs: Dict[str, Any]) -> None:
        with self.lock:
            tell(self.study, trial, state, value, attrs)
            self.in_flight -= 1


def any_completed(study) -> bool:
    return any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def sys_write(text: str) -> None:
    import sys

    sys.stderr.write(text)
    sys.stderr.flush()
