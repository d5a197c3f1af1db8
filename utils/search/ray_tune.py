"""search.py --ray: the trials as Ray Tune trials on a cluster, suggested by Tune's OptunaSearch into the
search's own Optuna study.

    Tuner(with_resources(tune_trial, {"cpu": 1}),
          TuneConfig(search_alg=StudySearch(the study), scheduler=StudyPruning(the study's pruner),
                     num_samples=<trials the study still needs>, max_concurrent_trials=--parallel or the CPUs),
          RunConfig(storage_path=OUTPUT_DIR/ray_tune, name=--study_name))

* The searcher is Tune's `OptunaSearch` on the search's study: the same storage, study name and TPE sampler, and
  a define-by-run space (`study.suggest`). Its config adds the Optuna trial's number, which names the trial's
  folder (`trials/<n>/`), and the number of a finished trial that already ran the same values, if any.
* A Tune trial (one CPU, on whichever node has one free) runs the trial's runs exactly as a local search does
  (`objective.run_trial` with `local_executor`: train.py in a subprocess, multirun's folders) and reports to
  Tune after each run: the run's dev metric, the running mean - std, the trial's record so far.
* Pruning is Optuna's, as a Tune scheduler (`StudyPruning`): each run but a trial's last is the Optuna trial's
  intermediate value at the run's index (as locally) and the study's pruner decides; "prune" stops the trial.
* When a Tune trial ends, `StudySearch.on_trial_complete` tells the study what the local loop would (complete
  with mean - std, pruned, a repeat of a finished configuration, a configuration train.py refuses, a failed
  run, with the record) and trials.tsv is rewritten. A run that fails before any trial completed stops the
  search with its error (it would end every trial). Trials Tune stops without an end of their own (that stop,
  Ctrl-C, a kill) stay running in the study. Resuming is a new Tuner on the same study: trials a stopped or
  killed search left running are queued again (`study.retry_killed_trials`), and only the missing trials run.
* Tune imports Ray Data, whose import refuses pyarrow < 17 (paddlenlp 2.8.1 needs < 17) unless
  RAY_DISABLE_PYARROW_VERSION_CHECK=1: set here before `import ray.tune`, and in the trials' runtime_env.
  Tune runs trials without Ray Data (no Dataset is made); what it uses of pyarrow is `pyarrow.fs` for its
  experiment folder (docs/how-to/search.md, "Ray Tune and pyarrow").

The trials run the driver's `python` and `train.py` in the driver's working directory and write into the
search's folder: all three must be at the same path on every node (one machine, or a shared file system).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from ..errors import UserError
from ..serving.ray_infer import CONNECT_TIMEOUT, connect, import_ray
from .objective import InvalidConfiguration, TrialSetup, local_executor, run_trial
from .space import Space
from .study import WORKER_ATTR, any_completed, finished_count, finished_twin, suggest, tell, twin_outcome, worker_id

PYARROW_CHECK = "RAY_DISABLE_PYARROW_VERSION_CHECK"
os.environ[PYARROW_CHECK] = "1"  # before ray.tune's import: see the docstring
ray = import_ray()
from ray import tune  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

TUNE_DIR = "ray_tune"  # OUTPUT_DIR/ray_tune/<study name>/: Tune's experiment (its trials' result.json)
FORWARDED_PREFIX = "PTUNING_"  # the driver's PTUNING_* variables reach train.py as in a local search
# A trial's config beside its parameters; what it reports to Tune after each run.
TRIAL, SAME_AS = "optuna_trial", "same_as"
OBJECTIVE, RUN_METRIC, STEP, LAST, OUTCOME, RECORD, NODE = (
    "objective", "run_metric", "step", "last", "outcome", "record", "node")
RAN, SAME, INVALID, FAILED = "ran", "same", "invalid", "failed"


def trial_result(config: Dict[str, Any], outcome: str, record: Dict[str, Any], last: bool, node: str,
                 metric: Optional[float] = None, step: Optional[int] = None) -> Dict[str, Any]:
    """What a trial reports to Tune: how it went (`outcome`), whether it is its `last` report, the run's dev
    `metric` at `step` (the run's index), the node, and the trial's record as JSON (Tune flattens dicts)."""
    return {OBJECTIVE: record.get("value"), RUN_METRIC: metric, STEP: step, LAST: last, OUTCOME: outcome,
            TRIAL: config[TRIAL], SAME_AS: config[SAME_AS], NODE: node, RECORD: json.dumps(record, ensure_ascii=False)}


def tune_trial(config: Dict[str, Any], setup: TrialSetup, names: List[str], cwd: str) -> None:
    """A Tune trial's body, on a node: the Optuna trial's runs as a local search runs them, reported after each."""
    os.chdir(cwd)  # Tune starts trials in their own folder; train.py's relative paths are the driver's

    def send(outcome: str, record: Dict[str, Any], last: bool, metric: Optional[float] = None,
             step: Optional[int] = None) -> bool:
        tune.report(trial_result(config, outcome, record, last, ray.get_runtime_context().get_node_id(), metric, step))
        return False  # a pruned trial is stopped by the scheduler: Tune ends it while it waits here

    if config[SAME_AS] >= 0:
        send(SAME, {}, True)
        return
    params = {name: config[name] for name in names}
    try:
        record = run_trial(setup, config[TRIAL], params, local_executor,
                           lambda metric, step, so_far: send(RAN, so_far, False, metric, step))
    except InvalidConfiguration as exc:
        send(INVALID, {"note": f"not run: {exc}"}, True)
        return
    except UserError as exc:
        send(FAILED, {"note": str(exc)[:2000], "message": exc.message, "path": exc.path}, True)
        return
    send(RAN, record, True)


def trial_folder(trial) -> str:
    """A Tune trial's folder under ray_tune/<study>/: the Optuna trial it ran (its values are in params.json)."""
    return f"optuna_trial_{trial.config[TRIAL]}_{trial.trial_id}"


def trial_by_number(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


class StudySearch(OptunaSearch):
    """Tune's OptunaSearch on the search's study, telling it what the local loop tells (`study.tell`)."""

    def __init__(self, study, storage, space: Space, on_told: Callable[[], None]):
        self.study, self.space, self.on_told = study, space, on_told
        self.fatal: Optional[UserError] = None
        super().__init__(space=self.define_by_run, metric=OBJECTIVE, mode="max", study_name=study.study_name,
                         storage=storage, sampler=study.sampler)

    def define_by_run(self, trial) -> Dict[str, Any]:
        """The trial's values, drawn by the study's sampler; its number; a finished trial with the same values."""
        trial.set_user_attr(WORKER_ATTR, worker_id())  # the driver: a killed search's trials are retried
        params = suggest(trial, self.space)
        same = finished_twin(self.study, trial.number, params)
        return {TRIAL: trial.number, SAME_AS: -1 if same is None else same.number}

    def optuna_trial(self, trial_id: str):
        return self._ot_trials[trial_id]

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        """Nothing: `StudyPruning` reported the run to the study (Tune calls the scheduler first)."""

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        tell(self.study, self.optuna_trial(trial_id), *self.outcome(result, error))
        self.on_told()

    def outcome(self, result: Optional[Dict], error: bool):
        """The state, value and record the study is told for a Tune trial that ended with `result`."""
        from optuna.trial import TrialState

        if error or not result:
            return TrialState.FAIL, None, {"note": "the Tune trial raised (its error.txt is under ray_tune/)" if error
                                           else "not run: the search stopped first"}
        if result[OUTCOME] == SAME:
            return twin_outcome(trial_by_number(self.study, result[SAME_AS]))
        record = json.loads(result[RECORD])
        record[NODE] = result[NODE]
        if result[OUTCOME] == INVALID:
            return TrialState.PRUNED, None, record
        if result[OUTCOME] == FAILED:
            if self.fatal is None and not any_completed(self.study):  # the same error would end every trial
                self.fatal = UserError(record["message"], record["path"])
            return TrialState.FAIL, None, {"note": record["note"], NODE: record[NODE]}
        record["pruned"] = not result[LAST]  # stopped by the scheduler after that run
        return (TrialState.PRUNED, None, record) if record["pruned"] else (TrialState.COMPLETE, record["value"], record)

    def save(self, checkpoint_path: str) -> None:
        """The search's state is its study (a new search resumes from it), not a pickle of this object."""
        with open(checkpoint_path, "w", encoding="utf-8") as fp:
            json.dump({"optuna_study": self.study.study_name}, fp)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a search resumes from its Optuna study: run the same search.py command again")


class StudyPruning(FIFOScheduler):
    """Optuna's pruning as a Tune scheduler: a run's dev metric (each run but the trial's last) is the Optuna
    trial's intermediate value at the run's index, and the study's pruner decides whether the trial stops."""

    def __init__(self, study, searcher: StudySearch):
        super().__init__()
        self.study, self.searcher = study, searcher

    def on_trial_result(self, tune_controller, trial, result: Dict) -> str:
        if result[LAST]:
            return TrialScheduler.CONTINUE
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        ot_trial.report(result[RUN_METRIC], result[STEP])
        pruned = self.study.pruner.prune(self.study, trial_by_number(self.study, ot_trial.number))
        return TrialScheduler.STOP if pruned else TrialScheduler.CONTINUE


class StopOnFatal(Stopper):
    """Ends the whole Tune run once a trial failed the way every trial would (`StudySearch.fatal`)."""

    def __init__(self, searcher: StudySearch):
        self.searcher = searcher

    def __call__(self, trial_id: str, result: Dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.searcher.fatal is not None


class TuneCluster:
    """A connection to the cluster (`with`); `run` the study's missing trials as Tune trials on it."""

    def __init__(self, address: str):
        self.address = address

    def __enter__(self) -> "TuneCluster":
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # all of utils/
        env = {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIX)}
        connect(ray, self.address, CONNECT_TIMEOUT,
                runtime_env={"py_modules": [package_dir], "env_vars": {**env, PYARROW_CHECK: "1"}})
        return self

    def __exit__(self, *exc) -> None:
        ray.shutdown()

    def run(self, setup: TrialSetup, study, storage, space: Space, n_trials: int, parallel: Optional[int],
            on_told: Callable[[], None]) -> None:
        """Tuners until the study has `n_trials` finished trials (a round whose trials all failed ends it)."""
        count = parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        sys.stderr.write(f"[ray] {count} trial(s) at once, as Ray Tune trials on the cluster at {self.address}\n")
        nodes: Dict[str, int] = {}
        try:
            while finished_count(study) < n_trials:
                before = finished_count(study)
                self.fit(setup, study, storage, space, n_trials - before, count, on_told, nodes)
                if finished_count(study) == before:
                    break
        finally:
            on_told()  # trials.tsv as the search leaves the study, interrupted or not (as locally)
        sys.stderr.write(f"[ray] trials per node: {nodes}\n")

    def fit(self, setup: TrialSetup, study, storage, space: Space, needed: int, count: int,
            on_told: Callable[[], None], nodes: Dict[str, int]) -> None:
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # these two only: no TensorBoard (not installed)
        # Ctrl-C stops the search as it stops a local one (KeyboardInterrupt; its running trials are retried by the
        # next start), not Tune's way (fit() returns, "resume with Tuner.restore"): a search resumes from its study.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        searcher = StudySearch(study, storage, space, on_told)
        trainable = tune.with_parameters(tune_trial, setup=setup, names=space.names(), cwd=os.getcwd())
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=StudyPruning(study, searcher),
                                        num_samples=needed, max_concurrent_trials=count,
                                        trial_dirname_creator=trial_folder),
            run_config=tune.RunConfig(storage_path=os.path.join(setup.output_dir, TUNE_DIR), name=study.study_name,
                                      stop=StopOnFatal(searcher), failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=[JsonLoggerCallback(), CSVLoggerCallback()], verbose=0))
        with contextlib.redirect_stdout(sys.stderr):  # Tune's own lines: stdout carries the search's summary
            results = tuner.fit()
        for result in results:
            if result.metrics and result.metrics.get(NODE):
                nodes[result.metrics[NODE]] = nodes.get(result.metrics[NODE], 0) + 1
        if searcher.fatal is not None:
            raise searcher.fatal
        if results.errors:  # a bug, not bad input: the trial's traceback
            raise results.errors[0]
