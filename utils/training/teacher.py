"""The teacher of a distillation run (--teacher, or an earlier round's student): a model of this tool
that labels texts, checked against the student's labels, task type and vocabulary before any model loads."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..rundir.checkpoints import refuse_non_final_model
from ..rundir.checkpoints import verify as verify_checkpoint
from ..errors import UserError
from ..deploy.bundle import read_decoder, read_labels, read_manifest
from ..deploy.format import MANIFEST_FILE, VOCAB_FILE
from ..model.spec import ModelSpec
from ..rundir.names import EXPORT_DIR, MODEL_STATE_FILE, SPEC_FILE


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
