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
from typing import Any, Dict, List, Optional

import numpy as np

from ..rundir.checkpoints import latest_checkpoint, refuse_non_final_model
from ..rundir.checkpoints import verify as verify_checkpoint
from ..dataset.folder import read_examples
from ..task.decoding import Decoder, is_multi_label
from ..errors import UserError
from ..deploy.bundle import read_decoder, read_labels, read_manifest
from ..deploy.format import MANIFEST_FILE, VOCAB_FILE
from ..files import write_json_atomic
from ..model.spec import ModelSpec
from ..rundir.names import (COMPLETE_MARKER, DISTILL_SUMMARY_FILE, EXPORT_DIR, MODEL_STATE_FILE, ROUNDS_DIR,
                           SPEC_FILE, TEACHER_PREDICTIONS_FILE)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    """A model that labels texts: `kind` is `export` (onnxruntime) or `checkpoint` (Paddle)."""

    path: str
    kind: str
    labels: List[str]
    task_type: str
    vocab_file: str

    @classmethod
    def resolve(cls, path: str, flag: str = "--teacher") -> "Teacher":
        if not os.path.isdir(path):
            raise UserError("teacher not found (give a train.py --output_dir or checkpoint-N, an export, or an "
                            "ensemble.py --output_dir)", path)
        export = path if os.path.isfile(os.path.join(path, MANIFEST_FILE)) else os.path.join(path, EXPORT_DIR)
        has_model = os.path.isfile(os.path.join(path, SPEC_FILE)) and os.path.isfile(
            os.path.join(path, MODEL_STATE_FILE))
        if has_model:
            verify_checkpoint(path, purpose="model")
            spec = ModelSpec.load(path)
            return cls(path, "checkpoint", list(spec.labels), spec.task_type, os.path.join(path, VOCAB_FILE))
        if os.path.isfile(os.path.join(export, MANIFEST_FILE)):
            from ..deploy.preprocess import read_config

            manifest = read_manifest(export)
            labels = read_labels(export)
            decoder = read_decoder(export, manifest, labels)
            vocab = os.path.join(export, read_config(export)["tokenizer"]["vocab_file"])
            return cls(export, "export", labels, decoder.task_type, vocab)
        refuse_non_final_model(path)
        raise UserError(f"is not a model of this tool: no {SPEC_FILE} + {MODEL_STATE_FILE}, no {MANIFEST_FILE}",
                        path)

    def logits(self, examples: List[dict], batch_size: int = 32) -> np.ndarray:
        """The teacher's logits (an ensemble export's are log mean probabilities) for `examples`."""
        if self.kind == "export":
            from ..deploy.classifier import default_num_threads
            from ..deploy.predictor import ExportedClassifier

            model = ExportedClassifier(self.path, device="cpu", num_threads=default_num_threads())
            return model.logits([{k: v for k, v in e.items() if k in ("text_a", "text_b")} for e in examples],
                                batch_size=batch_size, progress=len(examples) >= 1000)  # minutes on CPU: say so
        import paddle

        from ..model.assembly import model_logits, rebuild_from_checkpoint

        with paddle.utils.unique_name.guard():  # its parameter names never shift the student's
            model, _, _ = rebuild_from_checkpoint(self.path, verify=False)
            logits = model_logits(model, examples, batch_size)
        del model
        return logits


def read_vocab(path: str) -> Dict[str, int]:
    """token -> id as paddlenlp reads vocab.txt (one token per line; the last duplicate wins)."""
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as fp:
        for index, line in enumerate(fp):
            vocab[line.rstrip("\n")] = index
    return vocab


def student_vocab(model_name_or_path: str, checkpoint: Optional[str]) -> Dict[str, int]:
    source = checkpoint or model_name_or_path
    path = os.path.join(source, VOCAB_FILE)
    if os.path.isfile(path):
        return read_vocab(path)
    from ..model.plm import load_tokenizer

    return dict(load_tokenizer(model_name_or_path).get_vocab())


def check_vocabulary(teacher: Teacher, student: Dict[str, int], student_source: str) -> None:
    """The student must read the texts with the teacher's vocabulary (ERNIE 3.0's sizes share one)."""
    theirs = read_vocab(teacher.vocab_file)
    if theirs == student:
        return
    differing = sum(1 for token, index in theirs.items() if student.get(token) != index)
    raise UserError(f"the student's vocabulary ({len(student)} tokens, {student_source}) is not the teacher's "
                    f"({len(theirs)} tokens, {teacher.vocab_file}; {differing} of them missing or at other ids): the "
                    "student would read other tokens than the teacher labelled, and a vocabulary built for other "
                    "data turns the texts into [UNK]; distil into a model of the teacher's family (every ERNIE 3.0 "
                    "size, base to nano, shares one vocabulary)", "--model_name_or_path")


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


def run_rounds(current, single_run) -> Dict[str, Any]:
    """Every round in order: label with the teacher, train the student (`single_run`: training._run on a
    round's Run), make it the next teacher. Returns the last round's results."""
    import paddle

    from ..deploy.predictions import write_predictions
    from ..rundir.plan import apply_plan, plan_output_dir
    from .run import output_kinds, plan_model

    distill: DistillPlan = current.distill
    args, data_args = current.args, current.data_args
    numbers = distill.round_numbers
    last = numbers[-1]
    teacher = distill.teacher
    history, results = [], {}
    for number in numbers:
        directory = round_dir(args.output_dir, number, last)
        final = number == last
        round_args = copy.copy(args)
        round_args.output_dir = directory
        if not final:
            round_args.do_predict = round_args.do_export = False
        resume = current.resume if final and not distill.several_rounds else None
        if distill.several_rounds and current.continue_rounds:
            if not final and is_finished(directory):
                verify_checkpoint(directory, purpose="model")
                logger.info("round %d: reusing the finished round in %s", number, directory)
                history.append({"round": number, "output_dir": directory, "reused": True})
                teacher = Teacher.resolve(directory)
                continue
            resume = latest_checkpoint(directory) if os.path.isdir(directory) else None
        if resume and resume != current.resume:  # Run.open verified its own
            verify_checkpoint(resume, purpose="resume", world_size=max(1, args.world_size))
        if args.should_save and (not final or (distill.several_rounds and current.continue_rounds)):
            os.makedirs(directory, exist_ok=True)
            plan = plan_output_dir(directory, True, output_kinds(round_args), True, resume)
            plan.remove = [name for name in plan.remove if name != ROUNDS_DIR]  # the earlier rounds stay
            apply_plan(plan)
        entry: Dict[str, Any] = {"round": number, "output_dir": directory}
        dataset = current.dataset
        spec = current.model_plan if resume == current.resume else plan_model(
            current.model_args, data_args, round_args, dataset, resume)
        if teacher is not None:
            logger.info("round %d: %s labels %d unlabeled texts", number, teacher.path, len(distill.unlabeled))
            logits = teacher.logits(distill.unlabeled, args.per_device_eval_batch_size)
            decoder = spec.decoder
            chosen = teacher_targets(logits, decoder, data_args)
            kept = chosen["kept"]
            if not len(kept):
                raise UserError(f"no teacher-labelled text passes it (round {number}: the teacher's confidence is "
                                f"at most {chosen['confidence'].max():.3f} on {len(distill.unlabeled)} texts); "
                                "lower it", "--min_confidence")
            if args.should_save:  # under data parallelism every process labels, the first writes
                write_predictions(os.path.join(directory, TEACHER_PREDICTIONS_FILE), distill.unlabeled,
                                  chosen["probs"], spec.labels, decoder=decoder)
            pseudo = [{**distill.unlabeled[i], "labels": chosen["targets"][i].tolist()} for i in kept]
            gold = gold_targets(dataset.train, len(spec.labels), dataset.task_type)
            dataset = dataclasses.replace(dataset, train=gold + pseudo)
            info = {"teacher": os.path.abspath(teacher.path), "teacher_kind": teacher.kind, "round": number,
                    "rounds": last, "unlabeled_file": os.path.abspath(distill.unlabeled_file),
                    "unlabeled_texts": len(distill.unlabeled), "used": int(len(kept)),
                    "teacher_labels": str(data_args.teacher_labels), "min_confidence": data_args.min_confidence,
                    "temperature": data_args.temperature, "max_unlabeled": data_args.max_unlabeled}
            if not resume:
                spec = dataclasses.replace(spec, distillation=info)
            entry.update(teacher=info["teacher"], used=info["used"], unlabeled_texts=info["unlabeled_texts"],
                         mean_teacher_confidence=round(float(chosen["confidence"].mean()), 4))
            logger.info("round %d: %d of %d teacher-labelled texts pass --min_confidence %g; training on %d gold + "
                        "%d teacher labels", number, len(kept), len(distill.unlabeled), data_args.min_confidence,
                        len(current.dataset.train), len(kept))
        else:
            logger.info("round %d: training the first teacher on the %d gold labels", number, len(dataset.train))
        round_run = copy.copy(current)
        round_run.args, round_run.dataset, round_run.resume, round_run.model_plan = round_args, dataset, resume, spec
        with paddle.utils.unique_name.guard():
            results = single_run(round_run)
        entry["metrics"] = {k: v for k, v in results.get("eval", {}).items() if k.startswith("eval_")}
        history.append(entry)
        teacher = Teacher.resolve(directory)
    if args.should_save:
        write_json_atomic(os.path.join(args.output_dir, DISTILL_SUMMARY_FILE), {"rounds": history})
    return results
