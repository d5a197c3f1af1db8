"""What train.py builds, decided before any weights load (the task type, the model spec, the step
count), and the model built from that plan."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import List, Optional

from ..dataset.folder import DatasetDir
from ..errors import UserError
from ..model.assembly import build_from_spec, rebuild_from_checkpoint
from ..model.label_words import warn_label_words
from ..model.plm import load_plm, load_tokenizer, position_limit, warn_unknown_tokens
from ..model.spec import ModelSpec, long_text_of

logger = logging.getLogger(__name__)


OUTPUT_KIND_FLAGS = (("do_eval", "eval"), ("do_predict", "predict"), ("do_export", "export"))


def output_kinds(training_args) -> List[str]:
    return [kind for flag, kind in OUTPUT_KIND_FLAGS if getattr(training_args, flag, False)]


def default_max_steps(training_args, num_examples: int) -> int:
    """Steps for `--num_train_epochs`, counted as the Trainer counts them (the prompt-only optimizer of
    --freeze_plm needs max_steps): a process's batches (`SeededBatchSampler`) // accumulation x epochs."""
    world = max(1, training_args.world_size)
    per_process = math.ceil(num_examples / world)
    batch = training_args.per_device_train_batch_size
    batches = per_process // batch if training_args.dataloader_drop_last else math.ceil(per_process / batch)
    per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
    return max(1, int(per_epoch * training_args.num_train_epochs))


def plan_model(model_args, data_args, training_args, dataset: DatasetDir, checkpoint: Optional[str]) -> ModelSpec:
    """The model to build, checked with the tokenizer and configs alone (no weights loaded), with
    the reject option the flags give (decoding, not weights: a checkpoint takes a new one too)."""
    spec = _plan_model(model_args, data_args, training_args, dataset, checkpoint)
    other = model_args.other_label
    if model_args.reject_threshold is not None:
        spec = dataclasses.replace(spec, reject_threshold=float(model_args.reject_threshold),
                                   other_label=other or spec.other_label)
    return spec


def _plan_model(model_args, data_args, training_args, dataset: DatasetDir, checkpoint: Optional[str]) -> ModelSpec:
    if checkpoint:
        spec = ModelSpec.load(checkpoint)
        if spec.labels != dataset.labels.labels:
            raise UserError(f"the checkpoint was trained on labels {spec.labels}, but label.txt has "
                            f"{dataset.labels.labels}", dataset.labels.path)
        if spec.task_type != dataset.task_type:
            raise UserError(f"the checkpoint is a --task_type {spec.task_type} model, and --task_type "
                            f"{dataset.task_type} was given: drop --task_type (the checkpoint's is used)", checkpoint)
        if (training_args.freeze_plm or training_args.freeze_dropout) and not spec.kind.has_prompt_parameters:
            raise UserError(f"is a --method {spec.method.value} checkpoint: --freeze_plm/--freeze_dropout would leave "
                            "nothing to train", checkpoint)
        asked = long_text_of(model_args)
        if model_args.long_text is not None and asked != spec.long_text:
            raise UserError(f"is part of the model; the checkpoint reads long texts as {spec.long_text.describe()}: "
                            "drop --long_text and the window flags (or train a new model with them)", "--long_text")
        ignored = [f"--{name}" for name in data_args.prompt_flags_given + (["prompt"] if data_args.prompt else [])]
        if ignored:
            logger.warning("%s ignored: the model is rebuilt from %s with its own template %s", "/".join(ignored),
                           checkpoint, spec.describe())
        # Decoding is no weight: training on from a checkpoint takes a new --threshold/--hierarchical_decoding
        # (utils.flags.train.check_task_args refuses them without --do_train).
        if model_args.threshold is not None:
            spec = dataclasses.replace(spec, thresholds=[float(model_args.threshold)] * len(spec.labels),
                                       threshold_search="none")
        if model_args.hierarchical_decoding is not None:
            spec = dataclasses.replace(spec, consistent_decoding=str(model_args.hierarchical_decoding) == "consistent")
        return spec
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    spec = ModelSpec.from_flags(model_args, data_args, training_args.max_seq_length, dataset.labels, dataset.is_pair,
                                tokenizer, position_limit(model_args.model_name_or_path), task_type=dataset.task_type)
    warn_unknown_tokens(tokenizer, dataset, model_args.model_name_or_path)
    warn_label_words(dataset.labels.label_words, tokenizer, dataset.labels.path or "label.txt")
    return spec


def build_model(model_args, training_args, dataset: DatasetDir, spec: ModelSpec, checkpoint: Optional[str]):
    """Return `(model, tokenizer, spec)`: from a checkpoint when given, else around the pretrained PLM."""
    freeze = dict(freeze_plm=training_args.freeze_plm, freeze_dropout=training_args.freeze_dropout)
    if checkpoint:
        # The planned spec is the checkpoint's file, with any new decoding flags (plan_model).
        model, tokenizer, _ = rebuild_from_checkpoint(checkpoint, verify=False)
        if freeze["freeze_plm"] or freeze["freeze_dropout"]:
            model.freeze_plm = True
            model.freeze_dropout = freeze["freeze_dropout"]
            for param in model.plm.parameters():
                param.stop_gradient = True
        return model, tokenizer, spec
    plm, tokenizer = load_plm(model_args.model_name_or_path, head=spec.kind.plm_head,
                              num_labels=len(spec.labels))
    if spec.zero_shot:  # its MLM head is the classifier: refused when the weights lack it (random)
        from ..model.zero_shot import check_mlm_head

        check_mlm_head(plm, model_args.model_name_or_path)
    spec = spec.with_plm(plm)
    model = build_from_spec(spec, tokenizer, plm, **freeze)
    logger.info("Using template: %s", spec.describe())
    return model, tokenizer, spec
