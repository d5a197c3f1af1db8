"""The members of an ensemble, checked against each other from their files alone (no weights loaded),
and what follows from them: which input view each member reads, how the ensemble decodes."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..deploy.format import MANIFEST_FILE, VOCAB_FILE
from ..errors import UserError
from ..files import sha256_file
from ..model.spec import ModelSpec
from ..rundir.names import MODEL_STATE_FILE, SPEC_FILE
from ..rundir.checkpoints import refuse_non_final_model
from ..rundir.checkpoints import verify as verify_checkpoint
from ..task.decoding import Decoder
from ..task.windows import WINDOW

MAX_VIEWS = 8  # distinct templates (or lengths) among the members: the graph's forward has 8 x 4 inputs


@dataclass(frozen=True)
class Member:
    path: str          # the model directory: a run's final model or a checkpoint-N
    spec: ModelSpec
    vocab_sha256: str

    @property
    def text_keys(self) -> List[str]:
        return sorted({part["text"] for part in self.spec.template if "text" in part})

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The member's probabilities, with its own temperature (a calibrated member counts as calibrated)."""
        return self.spec.decoder.probabilities(logits)


@dataclass(frozen=True)
class EnsemblePlan:
    """The members, which view each reads, and the ensemble's decoding; decided before any weights load."""

    members: List[Member]
    views: List[int]                 # member index -> view index
    decoder: Decoder
    threshold_search: str = "none"

    @property
    def labels(self) -> List[str]:
        return list(self.members[0].spec.labels)

    @property
    def num_views(self) -> int:
        return max(self.views) + 1

    @property
    def max_seq_length(self) -> int:
        return max(member.spec.max_seq_length for member in self.members)


def resolve_member(path: str) -> str:
    """A trained model directory (a train.py --output_dir with its final model, or a checkpoint-N)."""
    if not os.path.isdir(path):
        raise UserError("member not found (give a train.py --output_dir or one of its checkpoint-N)", path)
    if os.path.isfile(os.path.join(path, SPEC_FILE)) and os.path.isfile(os.path.join(path, MODEL_STATE_FILE)):
        return path
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        raise UserError("is an export; an ensemble is built from trained models: give the train.py --output_dir it "
                        "was exported from", path)
    refuse_non_final_model(path)
    if os.path.isdir(os.path.join(path, "runs")):
        raise UserError(f"is a multirun.py directory: give its runs, e.g. --members {os.path.join(path, 'runs', '*')} "
                        "(or run multirun.py with --ensemble)", path)
    raise UserError(f"is not a trained model of this tool ({SPEC_FILE} and {MODEL_STATE_FILE} missing)", path)


def load_member(path: str) -> Member:
    path = resolve_member(path)
    verify_checkpoint(path, purpose="model")
    spec = ModelSpec.load(path)
    vocab = os.path.join(path, VOCAB_FILE)
    if not os.path.isfile(vocab):
        raise UserError(f"{VOCAB_FILE} is missing: the member's tokenizer cannot be checked against the others'", path)
    return Member(path=path, spec=spec, vocab_sha256=sha256_file(vocab))


def label_difference(labels: Sequence[str], reference: Sequence[str]) -> str:
    """Which names one label list has and the other lacks, for messages."""
    extra, missing = sorted(set(labels) - set(reference)), sorted(set(reference) - set(labels))
    parts = ([f"only here: {', '.join(extra[:5])}"] if extra else []) + (
        [f"missing here: {', '.join(missing[:5])}"] if missing else [])
    return "; ".join(parts) or "same names"


def plan_ensemble(paths: Sequence[str], threshold: Optional[float] = None,
                  hierarchical_decoding: Optional[str] = None) -> EnsemblePlan:
    """Check the members against each other (files and configs only) and decide views and decoding."""
    if len(paths) < 2:
        raise UserError(f"an ensemble needs at least two members, got {len(paths)}", "--members")
    seen: Dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"is given twice (also as {seen[real]}); each member counts once", path)
        seen[real] = path
    members = [load_member(path) for path in paths]
    for member in members[1:]:
        check_alike(member, members[0])
    decoder = ensemble_decoder(members, threshold, hierarchical_decoding)
    keys: Dict[str, int] = {}
    views = [keys.setdefault(json.dumps([m.spec.template, m.spec.max_seq_length], sort_keys=True), len(keys))
             for m in members]
    if len(keys) > MAX_VIEWS:
        raise UserError(f"the members use {len(keys)} different templates or lengths; an ensemble graph takes at most "
                        f"{MAX_VIEWS}", "--members")
    check_same_windows(members, len(keys))
    return EnsemblePlan(members=members, views=views, decoder=decoder)


def check_same_windows(members: Sequence[Member], views: int) -> None:
    """Members that read long texts (--long_text) must cut the same inputs from a document: the graph
    averages their probabilities input by input (window by window), and the export then aggregates a
    document's windows as each member would. So the same --long_text settings, template and length."""
    first = members[0]
    for member in members[1:]:
        if member.spec.long_text != first.spec.long_text:
            raise UserError(f"reads long texts as {describe_long_text(member.spec)}, {first.path} as "
                            f"{describe_long_text(first.spec)}: an ensemble averages its members window by window, so "
                            "every member must cut and aggregate documents alike (train them with the same "
                            "--long_text, --window_stride, --window_aggregation and --max_windows)",
                            os.path.join(member.path, SPEC_FILE))
    if first.spec.long_text.active and views > 1:
        raise UserError(f"the members read long texts ({describe_long_text(first.spec)}) through {views} different "
                        "templates or lengths; their windows would differ: members that read long texts must share "
                        "the prompt and --max_seq_length", "--members")


def describe_long_text(spec: ModelSpec) -> str:
    """`--long_text window (stride 58, mean, at most 16 windows)`, for messages."""
    long_text = spec.long_text
    if long_text.mode != WINDOW:
        return f"--long_text {long_text.mode}"
    stride = f"stride {long_text.stride}" if long_text.stride is not None else "stride half a window"
    return f"--long_text window ({stride}, {long_text.aggregation}, at most {long_text.max_windows} windows)"


def check_alike(member: Member, first: Member) -> None:
    """`member` predicts what `first` does: same labels, task type, text layout and vocabulary."""
    where = os.path.join(member.path, SPEC_FILE)
    if member.spec.labels != first.spec.labels:
        raise UserError(f"labels {member.spec.labels} differ from those of {first.path} ({first.spec.labels}; "
                        f"{label_difference(member.spec.labels, first.spec.labels)}): an ensemble averages "
                        "probabilities label by label, so every member must be trained on the same label.txt",
                        where)
    if member.spec.task_type != first.spec.task_type:
        raise UserError(f"is a --task_type {member.spec.task_type} model and {first.path} a "
                        f"{first.spec.task_type} one: their probabilities mean different things", where)
    if member.text_keys != first.text_keys:
        raise UserError(f"classifies {' + '.join(member.text_keys)} and {first.path} "
                        f"{' + '.join(first.text_keys)}: members must read the same texts (single or pairs)",
                        where)
    if member.vocab_sha256 != first.vocab_sha256:
        raise UserError(f"differs from {os.path.join(first.path, VOCAB_FILE)}: the members read text with "
                        "different vocabularies, and an export has one tokenizer; ensemble models built on the "
                        "same vocabulary (every ERNIE 3.0 size shares one)", os.path.join(member.path, VOCAB_FILE))


def ensemble_decoder(members: Sequence[Member], threshold: Optional[float],
                     hierarchical_decoding: Optional[str]) -> Decoder:
    """How the ensemble's probabilities become labels: --threshold, else each label's mean of the
    members' thresholds; --hierarchical_decoding, else the members' (they must agree)."""
    first = members[0]
    task_type, members_decoder = first.spec.task_type, first.spec.decoder  # every member's task type (checked)
    if not members_decoder.multi_label and (threshold is not None or hierarchical_decoding is not None):
        raise UserError("is for multi-label and hierarchical ensembles (these members are multi-class)",
                        "--threshold" if threshold is not None else "--hierarchical_decoding")
    if hierarchical_decoding is not None and not members_decoder.hierarchical:
        raise UserError("is for hierarchical ensembles (label paths A##B)", "--hierarchical_decoding")
    consistent = {member.spec.consistent_decoding for member in members}
    if hierarchical_decoding is None and members_decoder.hierarchical and len(consistent) > 1:
        raise UserError("the members decode the hierarchy differently (consistent and flat); choose one for the "
                        "ensemble", "--hierarchical_decoding")
    thresholds = None
    if members_decoder.multi_label:
        thresholds = ([float(threshold)] * len(first.spec.labels) if threshold is not None else
                      np.mean([m.spec.decoder.thresholds for m in members], axis=0).round(6).tolist())
    return Decoder(task_type, tuple(first.spec.labels), tuple(thresholds) if thresholds else None,
                   (hierarchical_decoding or ("consistent" if first.spec.consistent_decoding else "flat"))
                   == "consistent")
