"""Out-of-fold probabilities: K train.py runs, each trained on K-1 folds and predicting the one held out.

Layout of the audit's `--output_dir DIR`:

    DIR/audit_config.json        what the folds depend on (train.py flags, K, seed, data files' sha256):
                                 a rerun with the same reuses finished folds; other flags or data are refused
                                 (or, with --overwrite_output_dir, every fold is redone)
    DIR/folds/fold-K/data/       the fold's train.py --data_dir: train.txt (the other folds, minus the
                                 selection slice), dev.txt (dev.txt, or the slice), test.txt (the held-out
                                 fold, never read by training), label.txt; the user's lines as written
    DIR/folds/fold-K/run/        the fold's train.py --output_dir (checkpoints, final model, eval_results.json)
    DIR/folds/fold-K/oof.json    the held-out fold's probabilities, written last: the fold is done
    DIR/folds/repeat-R/fold-K/   with --repeats: repeat R's folds (R >= 2; repeat 1 is DIR/folds/fold-K)

Each fold is a train.py run (`utils.training.run.run` with `FoldRun`, the training mode that predicts
the held-out fold after training), so it is resumed like one: a fold with oof.json is reused, a fold
killed after a complete checkpoint continues from it (`--resume_from_checkpoint`), any other restarts.
Model selection (early stopping, the best checkpoint) reads the fold's dev.txt only: dev.txt when it
is not audited, else a slice of the fold's own training examples; the held-out fold is never seen.

With --repeats R the K folds run R times; repeat r splits with seed --seed + r - 1 and trains with that
seed, so its fold models differ in data and initialisation, and every example's R out-of-fold
probabilities are averaged (cleanlab's advice for better pred_probs: an ensemble of models).
Repeat 1 is the audit without --repeats. A repeat's folds depend only on the config and r, so
--repeats is not part of the config: raising it reuses the repeats already finished.

With --audit_rounds N, round n (DIR/folds/round-n/..., n >= 2) runs the folds again without training on the
examples round n - 1 flagged (`Fold.excluded`, recorded in oof.json: a fold is reused only for the
same exclusions); they are still held out and predicted, by models that never saw their labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np

from ..dataset.folder import split_path
from ..dataset.labels import LABEL_FILE
from ..errors import UserError
from ..files import atomic_path, read_json, sha256_file, write_json_atomic, write_text_atomic
from ..rundir.checkpoints import latest_checkpoint
from ..rundir.names import EVAL_RESULTS_FILE
from ..rundir.plan import DirLock
from ..training.run import Run
from .folds import Pool, assign_folds, selection_slice, strata

logger = logging.getLogger(__name__)

CONFIG_FILE = "audit_config.json"
FOLDS_DIR = "folds"
OOF_FILE = "oof.json"
LOCK_NAME = ".audit.lock"


@dataclass
class Fold:
    """Fold `number` (1-based): the pool indices it holds out, trains on and selects its model with."""

    number: int
    directory: str
    held_out: List[int]
    train: List[int]
    selection: List[int]    # pool indices kept aside for model selection; [] when dev.txt does it
    repeat: int = 1         # which run of the K folds (--repeats)
    seed: int = 42          # the repeat's split and training seed (--seed + repeat - 1)
    round: int = 1          # --audit_rounds: which audit of the examples
    excluded: List[int] = field(default_factory=list)  # pool indices no fold trains on (the last round's suspects)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.directory, "run")

    @property
    def oof_path(self) -> str:
        return os.path.join(self.directory, OOF_FILE)


def plan_folds(pool: Pool, output_dir: str, k: int, seed: int, fraction: float, repeat: int = 1,
               round_: int = 1, excluded: Sequence[int] = ()) -> List[Fold]:
    """Repeat `repeat`'s K folds: stratified and seeded by `seed + repeat - 1` (utils/audit/folds.py); a
    selection slice of each fold's training examples when no dev.txt selects the model (audited, or absent).
    Round 2 on (--audit_rounds): the `excluded` examples are held out and predicted like any other but never
    trained on; they form strata of their own, so every fold keeps its share of the examples that train."""
    groups = strata(pool.given())
    out = set(excluded)
    excluded = sorted(out)
    if out:  # excluded first in the key: they are dealt one after another, so each fold holds its share
        groups = [(index in out, group) for index, group in enumerate(groups)]
    seed += repeat - 1
    assignment = assign_folds(groups, k, seed)
    base = os.path.join(output_dir, FOLDS_DIR, *([f"round-{round_}"] if round_ > 1 else []),
                        *([f"repeat-{repeat}"] if repeat > 1 else []))
    folds = []
    for number in range(1, k + 1):
        held_out = [int(i) for i in np.flatnonzero(assignment == number - 1)]
        rest = [int(i) for i in np.flatnonzero(assignment != number - 1) if int(i) not in out]
        selection = [] if pool.dev else selection_slice(groups, rest, fraction, seed + number)
        chosen = set(selection)
        folds.append(Fold(number, os.path.join(base, f"fold-{number}"), held_out,
                          [i for i in rest if i not in chosen], selection, repeat, seed, round_, excluded))
    return folds


def plan_repeats(pool: Pool, output_dir: str, k: int, seed: int, fraction: float, repeats: int,
                 round_: int = 1, excluded: Sequence[int] = ()) -> List[List[Fold]]:
    """Every repeat's K folds (--repeats), repeat 1 first, for round `round_` (--audit_rounds)."""
    return [plan_folds(pool, output_dir, k, seed, fraction, repeat, round_, excluded)
            for repeat in range(1, repeats + 1)]


def write_fold_data(fold: Fold, pool: Pool) -> None:
    """The fold's data folder: the user's own lines, label.txt copied as it is."""
    os.makedirs(fold.data_dir, exist_ok=True)
    dev = [pool.examples[i] for i in fold.selection] if fold.selection else pool.dev
    files = {"train.txt": [pool.examples[i] for i in fold.train], "dev.txt": dev,
             "test.txt": [pool.examples[i] for i in fold.held_out]}
    for name, examples in files.items():
        write_text_atomic(os.path.join(fold.data_dir, name), "".join(e.text + "\n" for e in examples))
    with atomic_path(os.path.join(fold.data_dir, LABEL_FILE)) as tmp:
        shutil.copyfile(pool.labels.path, tmp)


class FoldRun(Run):
    """A train.py run that, after training, predicts its data folder's test.txt (the held-out fold): its
    results' `oof` holds the probabilities and the model's own decisions (thresholds, hierarchy) per text."""

    def execute(self) -> Dict[str, Any]:
        from ..training.trainer import predict_logits

        results = self.run_once()
        decoder = self.trainer.spec.decoder
        probs = decoder.probabilities(predict_logits(self.trainer, self.dataset.test))
        return {**results, "oof": {"probabilities": probs.tolist(), "decided": decoder.decide(probs).tolist(),
                                   "labels": list(self.trainer.spec.labels)}}


def config_of(flags, pool: Pool, data_dir: str) -> Dict[str, Any]:
    """What every fold depends on; a rerun that differs in any of it cannot reuse the folds."""
    audit = flags.audit
    files = {name: sha256_file(path) for name, path in (
        ("label.txt", os.path.join(data_dir, LABEL_FILE)), ("train.txt", split_path(data_dir, "train")),
        ("dev.txt", split_path(data_dir, "dev"))) if os.path.isfile(path)}
    from ..flags.audit import canonical_flags

    return {"train_flags": canonical_flags(flags.forwarded), "folds": audit.folds, "seed": int(flags.training.seed),
            "include_dev": audit.include_dev, "selection_fraction": audit.selection_fraction,
            "task_type": str(pool.task_type), "data_files_sha256": files}


def fingerprint(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def audit_outputs(output_dir: str) -> List[str]:
    """What audit.py writes into its folder (and --overwrite_output_dir removes)."""
    from .report import OUTPUT_FILES

    return [name for name in (CONFIG_FILE, FOLDS_DIR, *OUTPUT_FILES) if os.path.exists(os.path.join(output_dir, name))]


def describe_changes(before: Dict[str, Any], now: Dict[str, Any]) -> str:
    """What differs between two configs, in words ("" when nothing does)."""
    changes = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key):
            continue
        if key == "train_flags":
            old = {" ".join(group) for group in before.get(key) or []}
            new = {" ".join(group) for group in now.get(key) or []}
            changes.append("train.py flags: " + ", ".join([f"was `{g}`" for g in sorted(old - new)]
                                                          + [f"now `{g}`" for g in sorted(new - old)]))
        elif key == "data_files_sha256" and isinstance(before.get(key), dict):
            old, new = before[key], now.get(key) or {}
            files = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            changes.append(f"data files changed: {', '.join(files)}")
        else:
            changes.append(f"{key}: was {before.get(key)!r}, now {now.get(key)!r}")
    return "; ".join(changes)


def claim_output_dir(output_dir: str, config: Dict[str, Any], overwrite: bool) -> DirLock:
    """Lock the audit's folder and decide what it keeps: the same config reuses its folds; another config is
    refused (or, with `overwrite`, everything audit.py wrote is removed first). Other files are left."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a directory; choose another --output_dir", output_dir)
    config_path = os.path.join(output_dir, CONFIG_FILE)
    existing = audit_outputs(output_dir)
    if existing and not overwrite:
        if not os.path.isfile(config_path):
            raise UserError(f"holds audit outputs without {CONFIG_FILE} ({', '.join(existing[:4])}); pass "
                            "--overwrite_output_dir to redo the audit or choose another --output_dir", output_dir)
        before = read_json(config_path, "audit config")
        before = before if isinstance(before, dict) else {"config": before}
        changed = describe_changes(before, config)
        if changed:
            raise UserError(f"holds an audit made with other settings ({changed}), whose folds "
                            "cannot be reused; pass --overwrite_output_dir to redo every fold, or choose another "
                            "--output_dir (the same flags and data resume the audit)", output_dir)
    lock = DirLock(output_dir, LOCK_NAME, "audit.py").acquire()
    if existing and overwrite:
        for name in existing:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    write_json_atomic(config_path, config)
    return lock


def finished(fold: Fold, digest: str):
    """The fold's oof.json when it was written for this config and these held-out examples, else None."""
    if not os.path.isfile(fold.oof_path):
        return None
    done = read_json(fold.oof_path, "fold result")
    same = (done.get("fingerprint") == digest and done.get("rows") == fold.held_out
            and done.get("excluded", []) == fold.excluded)
    return done if same and done.get("seed", fold.seed) == fold.seed else None


def run_fold(flags, fold: Fold, pool: Pool, digest: str) -> Dict[str, Any]:
    """Train the fold (a train.py run, resumed from its latest complete checkpoint when a killed audit left
    one, else from scratch), predict its held-out examples, write oof.json last."""
    from ..flags.train import parse_args
    from ..training.run import run

    write_fold_data(fold, pool)
    resume = os.path.isdir(fold.run_dir) and latest_checkpoint(fold.run_dir) is not None
    model_args, data_args, training_args = parse_args(flags.fold_argv(fold.data_dir, fold.run_dir, resume,
                                                                      fold.seed))
    oof = run(model_args, data_args, training_args, FoldRun)["oof"]
    eval_path = os.path.join(fold.run_dir, EVAL_RESULTS_FILE)
    done = {"fingerprint": digest, "round": fold.round, "excluded": fold.excluded, "repeat": fold.repeat,
            "fold": fold.number, "seed": fold.seed, "rows": fold.held_out,
            "lines": [pool.examples[i].where for i in fold.held_out], "train_examples": len(fold.train),
            "selection": "dev.txt" if not fold.selection else f"{len(fold.selection)} training examples",
            "resumed_from_checkpoint": resume,
            "eval": read_json(eval_path, "fold results") if os.path.isfile(eval_path) else {}, **oof}
    write_json_atomic(fold.oof_path, done)
    return done


def fold_result(flags, pool: Pool, fold: Fold, digest: str, name: str) -> Dict[str, Any]:
    """The fold's result: reused when finished for this config, else trained now (`name`: for the log)."""
    result = finished(fold, digest)
    state = "done earlier, reused" if result else f"training on {len(fold.train)} (run: {fold.run_dir})"
    sys.stderr.write(f"[fold {name}] {len(fold.held_out)} held out: {state}\n")
    sys.stderr.flush()
    result = result or run_fold(flags, fold, pool, digest)
    if result.get("labels") != pool.labels.labels:
        raise UserError(f"fold {fold.number}'s model has labels {result.get('labels')}, not label.txt's",
                        fold.oof_path)
    return result


def out_of_fold(flags, pool: Pool, repeats: Sequence[Sequence[Fold]], digest: str) -> Dict[str, Any]:
    """Every fold's result (reused or computed) and, in pool order, the `[n, labels]` out-of-fold probabilities
    (the mean over the repeats), decisions (label sets: decided by at least half of the repeats) and each
    repeat's own probabilities (`per_repeat`)."""
    n, width = len(pool.examples), len(pool.labels.labels)
    per_repeat, votes, results = [], np.zeros((n, width)), []
    for folds in repeats:
        probs = np.full((n, width), np.nan)
        for fold in folds:
            name = f"{fold.number}/{len(folds)}" + (f", repeat {fold.repeat}/{len(repeats)}" if len(repeats) > 1
                                                      else "") + (f", round {fold.round}" if fold.round > 1 else "")
            result = fold_result(flags, pool, fold, digest, name)
            probs[fold.held_out] = np.asarray(result["probabilities"], dtype=np.float64)
            votes[fold.held_out] += np.asarray(result["decided"], dtype=bool)
            results.append(result)
        assert not np.isnan(probs).any(), "an example was held out by no fold"
        per_repeat.append(probs)
    return {"probabilities": np.mean(per_repeat, axis=0), "decided": votes >= len(repeats) / 2,
            "per_repeat": per_repeat, "folds": results}
