"""Self-training and distillation (PET / iPET): a teacher labels unlabeled texts, a student trains on
the gold labels plus the teacher's.

    python train.py --data_dir DATA --output_dir STUDENT --model_name_or_path ernie-3.0-mini-zh \
        --teacher checkpoints/ensemble --unlabeled_file DATA/unlabeled.txt --min_confidence 0.6 \
        --do_train --do_eval --do_predict --do_export ...

The student is a normal run (same flags, outputs, checkpoints, resume, export); only its training
set grows. The teacher is a trained model directory (a run or checkpoint-N: it labels the texts in
Paddle's dynamic graph) or an export (an ensemble.py --output_dir too: onnxruntime).

Targets. Multi-class: gold labels become one-hot vectors and each kept text gets the teacher's
probabilities (softmax of logits / --temperature) or, with `--teacher_labels hard`, the one-hot of
its prediction; the loss is the cross-entropy against the target distribution
(`heads.SoftTargetCrossEntropy`, equal to the usual loss on gold). Multi-label and hierarchical:
multi-hot gold plus the teacher's sigmoid probabilities (or decided label sets) under BCE.
Confidence filter (`--min_confidence`): a text is kept when the teacher's top probability
(multi-class) or every label's max(p, 1 - p) (label sets) reaches it; `--max_unlabeled` keeps the
most confident. Unlabeled texts equal to a training text, and repeats, are dropped.

Rounds (`--rounds R`, iPET): round k's student is round k+1's teacher; rounds before the last are
complete runs in OUTPUT_DIR/rounds/round-K, the last is OUTPUT_DIR itself. Without --teacher,
--unlabeled_file means self-training: round 0 trains on the gold labels alone and is the first
teacher. A run of several rounds resumes as a whole (`--resume_from_checkpoint OUTPUT_DIR`):
finished rounds are reused, the interrupted one continues from its last checkpoint.

Checked before any model loads: the teacher (a model of this tool with label.txt's labels, the task
type and the student's vocabulary), the unlabeled file (every line, not empty).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle

from ..rundir.checkpoints import latest_checkpoint
from ..rundir.checkpoints import verify as verify_checkpoint
from ..rundir.plan import OutputPlan, apply_plan, plan_output_dir
from ..dataset.folder import DatasetDir, read_examples
from ..task.decoding import Decoder, is_multi_label
from ..errors import UserError
from ..deploy.predictions import write_predictions
from ..files import write_json_atomic
from ..model.spec import ModelSpec
from ..rundir.names import (COMPLETE_MARKER, DISTILL_SUMMARY_FILE, ROUNDS_DIR, RUN_RECORD_FILE, SPEC_FILE,
                            TEACHER_PREDICTIONS_FILE)
from .plan import output_kinds, plan_model
from .run import Run
from .teacher import Teacher, check_vocabulary, student_vocab

logger = logging.getLogger(__name__)

def read_unlabeled(path: str, pair: bool, exclude: List[dict]) -> List[dict]:
    """The unlabeled texts (every line checked), without repeats and without the training texts."""
    examples = read_examples(path, labelled=False, pair=pair, what="unlabeled file")
    if not examples:
        raise UserError("has no texts: an unlabeled file lists one text per line (text_a<TAB>text_b for pairs)", path)
    seen = {(e["text_a"], e.get("text_b")) for e in exclude}
    kept = []
    for example in examples:
        key = (example["text_a"], example.get("text_b"))
        if key not in seen:
            seen.add(key)
            kept.append(example)
    if not kept:
        raise UserError("every text in it is a training text (or a repeat): there is nothing for the teacher to "
                        "label", path)
    if len(kept) < len(examples):
        logger.info("%s: %d of %d texts kept (training texts and repeats dropped)", path, len(kept), len(examples))
    return kept


@dataclass
class DistillPlan:
    """What a distillation run needs, checked before any model loads."""

    teacher: Optional[Teacher]       # None: self-training (round 0 on gold is the first teacher)
    unlabeled_file: str
    unlabeled: List[dict]
    rounds: int

    @property
    def round_numbers(self) -> List[int]:
        return list(range(0 if self.teacher is None else 1, self.rounds + 1))

    @property
    def several_rounds(self) -> bool:
        return len(self.round_numbers) > 1


def plan(data_args, model_args, dataset, checkpoint: Optional[str]) -> DistillPlan:
    """Check the teacher and the unlabeled texts against the dataset and the student."""
    teacher = Teacher.resolve(data_args.teacher) if data_args.teacher else None
    if teacher is not None:
        if teacher.labels != dataset.labels.labels:
            missing = sorted(set(dataset.labels.labels) - set(teacher.labels))
            extra = sorted(set(teacher.labels) - set(dataset.labels.labels))
            raise UserError(f"the teacher predicts labels {teacher.labels}, label.txt has {dataset.labels.labels} "
                            f"(teacher lacks: {', '.join(missing) or '-'}; label.txt lacks: "
                            f"{', '.join(extra) or '-'}): a student learns the teacher's probabilities label by label",
                            teacher.path)
        if teacher.task_type != dataset.task_type:
            raise UserError(f"the teacher is a --task_type {teacher.task_type} model and the student a "
                            f"{dataset.task_type} one: drop --task_type (the teacher's is used) or give the same",
                            teacher.path)
        source = checkpoint or model_args.model_name_or_path
        check_vocabulary(teacher, student_vocab(model_args.model_name_or_path, checkpoint), source)
    path = data_args.unlabeled_file
    if data_args.unlabeled_file_defaulted and not os.path.isfile(path):
        raise UserError(f"--teacher labels unlabeled texts: give --unlabeled_file, or put them in {path}",
                        "--unlabeled_file")
    unlabeled = read_unlabeled(path, dataset.is_pair, dataset.train)
    return DistillPlan(teacher=teacher, unlabeled_file=path, unlabeled=unlabeled, rounds=data_args.rounds)


def teacher_targets(logits: np.ndarray, decoder: Decoder, data_args) -> Dict[str, Any]:
    """`{"targets", "kept", "confidence", "probs"}`: each text's training target (soft or hard), which
    texts pass the confidence filter (indices, in input order) and the teacher's probabilities."""
    probs = decoder.probabilities(logits)
    confidence = decoder.confidence(probs)
    hard = decoder.decide(probs).astype(np.float64)  # one-hot of the best label, or the label set
    soft = decoder.probabilities(np.asarray(logits, dtype=np.float64) / data_args.temperature)
    targets = hard if str(data_args.teacher_labels) == "hard" else soft
    kept = np.flatnonzero(confidence >= data_args.min_confidence)
    if data_args.max_unlabeled is not None and len(kept) > data_args.max_unlabeled:
        kept = np.sort(kept[np.argsort(-confidence[kept], kind="stable")[:data_args.max_unlabeled]])
    return {"targets": targets, "kept": kept, "confidence": confidence, "probs": probs}


def gold_targets(examples: List[dict], num_labels: int, task_type: str) -> List[dict]:
    """Gold examples with probability-vector labels (one-hot for multi-class; label sets already are)."""
    if is_multi_label(task_type):
        return examples
    eye = np.eye(num_labels)
    return [{**e, "labels": eye[e["labels"]].tolist()} for e in examples]


# -- the rounds ----------------------------------------------------------------------------------


def round_dir(output_dir: str, number: int, last: int) -> str:
    return output_dir if number == last else os.path.join(output_dir, ROUNDS_DIR, f"round-{number}")


def is_finished(directory: str) -> bool:
    """A round whose final model was saved (its marker at the top of its directory)."""
    return os.path.isfile(os.path.join(directory, COMPLETE_MARKER)) and os.path.isfile(
        os.path.join(directory, SPEC_FILE))


class DistillationRun(Run):
    """train.py with --teacher or --unlabeled_file: each round a teacher labels the unlabeled texts and
    a student (an ordinary run in the round's directory) trains on the gold labels plus the teacher's."""

    distill: DistillPlan
    continue_rounds = False         # a run of several rounds, resumed as a whole

    def plan_output(self) -> OutputPlan:
        args, data_args = self.args, self.data_args
        if not ((data_args.rounds > 1 or not data_args.teacher) and args.resume_from_checkpoint):
            return super().plan_output()
        if not os.path.isdir(args.output_dir) or not os.path.samefile(args.resume_from_checkpoint, args.output_dir):
            raise UserError("a self-training run of several rounds resumes as a whole: give its --output_dir "
                            "(finished rounds are reused, the interrupted one continues from its last "
                            "checkpoint)", "--resume_from_checkpoint")
        self.continue_rounds = True
        return OutputPlan(args.output_dir)  # each round plans its own directory (`plan_round_dir`)

    def plan_mode(self) -> None:
        self.distill = plan(self.data_args, self.model_args, self.dataset, self.resume)

    def execute(self) -> Dict[str, Any]:
        """Every round in order: label with the teacher, train the student, make it the next teacher.
        Returns the last round's results."""
        numbers = self.distill.round_numbers
        teacher, history, results = self.distill.teacher, [], {}
        for number in numbers:
            directory = round_dir(self.args.output_dir, number, numbers[-1])
            if self.reuses(number, directory):
                history.append({"round": number, "output_dir": directory, "reused": True})
            else:
                round_run, entry = self.round_run(number, directory, teacher)
                with paddle.utils.unique_name.guard():
                    results = round_run.run_once()
                entry["metrics"] = {k: v for k, v in results.get("eval", {}).items() if k.startswith("eval_")}
                history.append(entry)
            teacher = Teacher.resolve(directory)
        if self.args.should_save:
            write_json_atomic(os.path.join(self.args.output_dir, DISTILL_SUMMARY_FILE), {"rounds": history})
        return results

    def final(self, number: int) -> bool:
        return number == self.distill.round_numbers[-1]

    def reuses(self, number: int, directory: str) -> bool:
        """A round before the last, finished, in a run resumed as a whole: verified and kept as it is."""
        if not (self.distill.several_rounds and self.continue_rounds and not self.final(number)
                and is_finished(directory)):
            return False
        verify_checkpoint(directory, purpose="model")
        logger.info("round %d: reusing the finished round in %s", number, directory)
        return True

    def round_run(self, number: int, directory: str, teacher: Optional[Teacher]) -> Tuple[Run, Dict[str, Any]]:
        """`(run, summary entry)` of a round: its directory planned, the teacher's labels in its training set."""
        round_args = copy.copy(self.args)
        round_args.output_dir = directory
        if not self.final(number):
            round_args.do_predict = round_args.do_export = False
        resume = self.round_resume(number, directory)
        self.plan_round_dir(number, round_args, resume)
        entry: Dict[str, Any] = {"round": number, "output_dir": directory}
        dataset = self.dataset
        spec = self.model_plan if resume == self.resume else plan_model(
            self.model_args, self.data_args, round_args, dataset, resume)
        if teacher is not None:
            dataset, spec = self.with_teacher_labels(number, teacher, directory, spec, resume, entry)
        else:
            logger.info("round %d: training the first teacher on the %d gold labels", number, len(dataset.train))
        round_run = copy.copy(self)
        round_run.args, round_run.dataset, round_run.resume, round_run.model_plan = round_args, dataset, resume, spec
        return round_run, entry

    def round_resume(self, number: int, directory: str) -> Optional[str]:
        """The checkpoint a round continues from: its last one in a run resumed as a whole, else the
        run's own (--resume_from_checkpoint) for a run of one round."""
        several_rounds = self.distill.several_rounds
        if several_rounds and self.continue_rounds:
            resume = latest_checkpoint(directory) if os.path.isdir(directory) else None
        else:
            resume = self.resume if self.final(number) and not several_rounds else None
        if resume and resume != self.resume:  # Run.open verified its own
            verify_checkpoint(resume, purpose="resume", world_size=max(1, self.args.world_size))
        return resume

    def plan_round_dir(self, number: int, round_args, resume: Optional[str]) -> None:
        """A round's directory made ready as Run.open makes the output directory (the last round's is
        the output directory itself: Run.open planned it unless the run resumes as a whole)."""
        if self.args.should_save and (not self.final(number) or (self.distill.several_rounds and self.continue_rounds)):
            directory = round_args.output_dir
            os.makedirs(directory, exist_ok=True)
            plan = plan_output_dir(directory, True, output_kinds(round_args), True, resume)
            # the earlier rounds stay, and the run's record (Run.open wrote it for this invocation)
            plan.remove = [name for name in plan.remove if name not in (ROUNDS_DIR, RUN_RECORD_FILE)]
            apply_plan(plan)

    def with_teacher_labels(self, number: int, teacher: Teacher, directory: str, spec: ModelSpec,
                            resume: Optional[str], entry: Dict[str, Any]) -> Tuple[DatasetDir, ModelSpec]:
        """The dataset with the teacher's kept labels added to train, and the spec recording where they came
        from (a new run's; a resumed one keeps its checkpoint's); `entry` gets the round's figures."""
        distill, data_args = self.distill, self.data_args
        logger.info("round %d: %s labels %d unlabeled texts", number, teacher.path, len(distill.unlabeled))
        logits = teacher.logits(distill.unlabeled, self.args.per_device_eval_batch_size)
        decoder = spec.decoder
        chosen = teacher_targets(logits, decoder, data_args)
        kept = chosen["kept"]
        if not len(kept):
            raise UserError(f"no teacher-labelled text passes it (round {number}: the teacher's confidence is "
                            f"at most {chosen['confidence'].max():.3f} on {len(distill.unlabeled)} texts); "
                            "lower it", "--min_confidence")
        if self.args.should_save:  # under data parallelism every process labels, the first writes
            write_predictions(os.path.join(directory, TEACHER_PREDICTIONS_FILE), distill.unlabeled,
                              chosen["probs"], spec.labels, decoder=decoder)
        pseudo = [{**distill.unlabeled[i], "labels": chosen["targets"][i].tolist()} for i in kept]
        gold = gold_targets(self.dataset.train, len(spec.labels), self.dataset.task_type)
        dataset = dataclasses.replace(self.dataset, train=gold + pseudo)
        info = {"teacher": os.path.abspath(teacher.path), "teacher_kind": teacher.kind, "round": number,
                "rounds": distill.round_numbers[-1], "unlabeled_file": os.path.abspath(distill.unlabeled_file),
                "unlabeled_texts": len(distill.unlabeled), "used": int(len(kept)),
                "teacher_labels": str(data_args.teacher_labels), "min_confidence": data_args.min_confidence,
                "temperature": data_args.temperature, "max_unlabeled": data_args.max_unlabeled}
        if not resume:
            spec = dataclasses.replace(spec, distillation=info)
        entry.update(teacher=info["teacher"], used=info["used"], unlabeled_texts=info["unlabeled_texts"],
                     mean_teacher_confidence=round(float(chosen["confidence"].mean()), 4))
        logger.info("round %d: %d of %d teacher-labelled texts pass --min_confidence %g; training on %d gold + "
                    "%d teacher labels", number, len(kept), len(distill.unlabeled), data_args.min_confidence,
                    len(self.dataset.train), len(kept))
        return dataset, spec
