"""search.py, the whole command: check everything, open the study, run the trials, write the outputs.

Order matters: the flags, the space (every candidate through train.py's checks), the data and the storage are
checked before the first trial; the label-word ranking (which loads the PLM's MLM head) runs only after the
checks that need no model.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import List, Sequence

from ..errors import UserError
from ..files import write_text_atomic
from ..flags.train import flag_given, flag_value
from ..training import multirun
from .candidates import (check_candidates, dataset_labels, parse_train, ranked_label_sets,
                         resolve_label_words, train_known_flags)
from .objective import TrialSetup, local_executor, run_trial
from .report import TRIALS_FILE, summary_text, trials_table, write_outputs
from .space import LABEL_WORDS, Space, check_space, load_space
from .study import TrialLoop, default_storage, open_storage, open_study, retry_killed_trials


def base_flags(forwarded: Sequence[str]) -> List[str]:
    """The flags after `--`, with --do_eval (a trial is judged on dev)."""
    flags = list(forwarded)
    if not flag_given(flags, "--do_eval"):
        flags.append("--do_eval")
    return flags


def plan_setup(args, output_dir: str, flags: List[str]) -> TrialSetup:
    split_ids = task_dir = None
    if args.splits_dir:
        split_ids = args.split_ids or multirun.find_split_ids(args.splits_dir)
        task_dir = multirun.check_split_files(args.splits_dir, split_ids)
        flags = multirun.without_flag(flags, "--data_dir")
    return TrialSetup(output_dir, flags, list(args.seeds), split_ids, args.splits_dir and os.path.abspath(args.splits_dir),
                      task_dir, flag_value(flags, "--data_dir"), args.metric)


def checked_space(args, setup: TrialSetup, scratch: str) -> Space:
    """The space, each candidate through train.py's checks on the data the trials use; label words resolved
    (label.txt's own set, the file's sets, the checker's ranking)."""
    space = load_space(args.space)
    check_space(space.params, setup.train_flags, train_known_flags(), space.source)
    data_dir = setup.data_dir
    if setup.split_ids is not None:
        data_dir = multirun.make_split_data_dir(setup.splits_dir, setup.task_dir, setup.split_ids[0],
                                                os.path.join(scratch, "split"))
    parse_train(setup.train_flags + ["--data_dir", data_dir, "--output_dir", os.path.join(scratch, "run")],
                "the flags after `--`")
    labels = dataset_labels(data_dir, setup.train_flags)
    others = Space([p for p in space.params if p.name != LABEL_WORDS], space.source)
    check_candidates(others, setup.train_flags, data_dir)
    if LABEL_WORDS not in space.names():
        return space
    param = space[LABEL_WORDS]
    ranked = None
    if param.ranked:
        sys.stderr.write(f"ranking label words with {flag_value(setup.train_flags, '--model_name_or_path')}'s "
                         "MLM head (the label-word checker)\n")
        ranked = ranked_label_sets(flag_value(setup.train_flags, "--model_name_or_path"), data_dir,
                                   flag_value(setup.train_flags, "--prompt") or "", param.ranked, labels)
    words = resolve_label_words(param, labels, ranked, space.source)
    check_candidates(Space([words], space.source), setup.train_flags, data_dir)
    return Space([words if p.name == LABEL_WORDS else p for p in space.params], space.source)


def identity(args, setup: TrialSetup, space: Space) -> dict:
    """What makes two searches one study: the space, the metric, the runs and the flags after `--`."""
    return {"space": space.fingerprint(), "metric": args.metric,
            "runs": json.dumps({"seeds": setup.seeds, "splits": setup.split_ids}),
            "train_flags": json.dumps(setup.train_flags, ensure_ascii=False)}


def run_search(args) -> dict:
    """Check, open or resume the study, run trials until it has --n_trials finished ones, write the outputs."""
    output_dir = os.path.abspath(args.output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a folder", output_dir)
    setup = plan_setup(args, output_dir, base_flags(args.train_flags))
    if setup.data_dir and not os.path.isdir(setup.data_dir):
        raise UserError("data directory not found", setup.data_dir)
    with tempfile.TemporaryDirectory(prefix="search-check-") as scratch:
        space = checked_space(args, setup, scratch)
    url = args.storage or default_storage(output_dir)
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.ray:  # connected before the storage is opened: an unreachable cluster leaves nothing behind
            from .ray_tune import TuneCluster

            cluster = stack.enter_context(TuneCluster(args.ray))
        storage = open_storage(url)
        os.makedirs(output_dir, exist_ok=True)
        study = open_study(storage, args.study_name, identity(args, setup, space), args.sampler_seed, args.pruning)
        retried = retry_killed_trials(study)
        if retried:
            sys.stderr.write(f"resuming: {retried} trial(s) killed mid-run are queued again\n")

        def write_table():
            write_text_atomic(os.path.join(output_dir, TRIALS_FILE), trials_table(study, space))

        if cluster is not None:
            cluster.run(setup, study, storage, space, args.n_trials, args.parallel, write_table)
        else:
            run_locally(setup, study, space, args.n_trials, write_table)
    record = write_outputs(study, space, args, url)
    sys.stdout.write(summary_text(record, output_dir))
    return record


def run_locally(setup: TrialSetup, study, space: Space, n_trials: int, write_table) -> None:
    """The trials one after another in this process (train.py in subprocesses); trials.tsv after each."""
    def one_trial(number, params, report):
        try:
            return run_trial(setup, number, params, local_executor, report)
        finally:
            write_table()

    TrialLoop(study, space, n_trials, one_trial).work()
