"""The main job behind train.py: train, evaluate, predict (and export) a P-tuning classifier."""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from . import compat
from .data import DatasetDir, load_dataset_dir
from .errors import UserError
from .files import atomic_path, read_json, write_json_atomic, write_text_atomic
from .labels import LabelSet
from .metrics import classification_metrics, metrics_fn, softmax
from .modeling import (build_prompt_model, criterion_for, label_word_token_count, rebuild_from_checkpoint,
                       run_config, save_run_config)
from .plm import load_plm
from .prompt import build_template, classifier_template, count_masks, template_kind, validate_template
from .reports import plot_training_curves, write_classification_report
from .visualdl import take_visualdl_from_report_to

compat.apply()

from paddlenlp.datasets import MapDataset  # noqa: E402
from paddlenlp.prompt import PromptTrainer  # noqa: E402
from paddle.io import DistributedBatchSampler  # noqa: E402
from paddlenlp.trainer import EarlyStoppingCallback, Trainer, set_seed  # noqa: E402

logger = logging.getLogger(__name__)

TEST_PREDICTIONS_FILE = "test_predictions.tsv"
DATA_PREDICTIONS_FILE = "data_predictions.tsv"
CURVES_FILE = "training_curves.png"


class SeededBatchSampler(DistributedBatchSampler):
    """Shuffles each epoch with `RandomState(f(seed, epoch))`: the order depends on nothing else.

    The Trainer's default single-process sampler draws its permutation from the global RNG when an
    epoch starts; after `--resume_from_checkpoint` that RNG is in another state, so the resumed
    run would see other batches than the uninterrupted one. (The parent class shuffles with
    `RandomState(self.epoch)`, the same for every seed.)
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def __iter__(self):
        epoch = self.epoch
        self.epoch = (self.seed * 1_000_003 + epoch) % (1 << 32)  # what the parent seeds its shuffle with
        try:
            yield from super().__iter__()
        finally:
            self.epoch = epoch + 1


STAGING_DIR = ".saving"
COMPLETE_MARKER = "checkpoint_complete.json"


class PTuningTrainer(PromptTrainer):
    """PromptTrainer that writes `ptuning_config.json` into every save, and writes atomically.

    A checkpoint is assembled in `output_dir/.saving/` and renamed to `checkpoint-N` only when
    complete (with `checkpoint_complete.json` inside), so a run killed while saving leaves no
    half-written checkpoint; model files and result JSONs replace their old versions by rename.
    """

    def __init__(self, *args, run_config: Dict[str, Any], **kwargs):
        self.run_config = run_config
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self):
        if self.train_dataset is None:
            return None
        return SeededBatchSampler(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                                  shuffle=True, num_replicas=self.args.dataset_world_size,
                                  rank=self.args.dataset_rank, drop_last=self.args.dataloader_drop_last,
                                  seed=self.args.seed)

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        # The model (template included) is rebuilt from the checkpoint before the Trainer exists.
        # PromptTrainer would build the template a second time, with new parameters the saved
        # optimizer state does not know; load only the weights.
        Trainer._load_from_checkpoint(self, resume_from_checkpoint)

    def _save(self, output_dir: Optional[str] = None, state_dict=None, merge_tensor_parallel=True):
        output_dir = output_dir or self.args.output_dir
        stage = os.path.join(output_dir, STAGING_DIR + "-model")
        shutil.rmtree(stage, ignore_errors=True)
        super()._save(stage, state_dict, merge_tensor_parallel)
        save_run_config(stage, self.run_config)
        for name in os.listdir(stage):
            os.replace(os.path.join(stage, name), os.path.join(output_dir, name))
        os.rmdir(stage)

    def _save_checkpoint(self, model, metrics=None):
        run_dir = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        writer = self.args.should_save  # under data parallelism only the first process writes
        if writer:
            shutil.rmtree(staging_root, ignore_errors=True)
        limit = self.args.save_total_limit
        self.args.output_dir, self.args.save_total_limit = staging_root, None  # rotate after the rename
        try:
            super()._save_checkpoint(model, metrics)
        finally:
            self.args.output_dir, self.args.save_total_limit = run_dir, limit
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
        if not writer:
            return
        self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        write_json_atomic(os.path.join(staged, COMPLETE_MARKER), {
            "global_step": self.state.global_step, "files": sorted(os.listdir(staged))})
        if os.path.isdir(final):  # saving the same step again (e.g. right after a resume)
            shutil.rmtree(final)
        os.replace(staged, final)
        shutil.rmtree(staging_root, ignore_errors=True)
        self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)

    def save_metrics(self, split, metrics, combined=True):
        if not self.is_world_process_zero():
            return
        write_json_atomic(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            combined_metrics = {}
            if os.path.isfile(path):
                try:
                    combined_metrics = read_json(path)
                except UserError:  # unreadable leftovers are replaced, not trusted
                    combined_metrics = {}
            combined_metrics.update(metrics)
            write_json_atomic(path, combined_metrics)

    def save_state(self):
        if self.is_world_process_zero():
            write_text_atomic(os.path.join(self.args.output_dir, "trainer_state.json"),
                              json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n")


def outputs_of_run(training_args) -> List[str]:
    """Result files this run would write into --output_dir."""
    names = []
    if training_args.do_train:
        names += ["train_results.json", "model_state.pdparams", "checkpoint-*"]
        names += [CURVES_FILE]
    if training_args.do_eval:
        names += ["eval_results.json", "eval_report.*", "eval_confusion_matrix.*"]
    if training_args.do_predict:
        names += ["test_results.json", TEST_PREDICTIONS_FILE, DATA_PREDICTIONS_FILE, "test_report.*",
                  "test_confusion_matrix.*"]
    if training_args.do_export:
        names += ["export"]
    return names


def check_output_dir(training_args) -> None:
    """Refuse to overwrite earlier results unless --overwrite_output_dir (or resuming into it)."""
    if training_args.overwrite_output_dir or not os.path.isdir(training_args.output_dir):
        return
    existing = sorted({os.path.basename(p) for name in outputs_of_run(training_args)
                       for p in glob.glob(os.path.join(training_args.output_dir, name))})
    resume = training_args.resume_from_checkpoint
    if resume and training_args.do_train:
        # Continuing a run in its own output dir is what --resume_from_checkpoint is for.
        existing = [e for e in existing if not e.startswith("checkpoint-") and e != "model_state.pdparams"]
    if existing:
        raise UserError(f"already holds results of an earlier run ({', '.join(existing[:6])}); pass "
                        "--overwrite_output_dir to replace them or choose another --output_dir",
                        training_args.output_dir)


def default_max_steps(training_args, num_examples: int) -> int:
    """Steps for `--num_train_epochs` (the prompt-only optimizer of --freeze_plm needs max_steps)."""
    world = max(1, training_args.world_size)
    per_step = training_args.per_device_train_batch_size * world * training_args.gradient_accumulation_steps
    return max(1, math.ceil(training_args.num_train_epochs * math.ceil(num_examples / per_step)))


def build_model(model_args, data_args, training_args, dataset: DatasetDir):
    """Return `(model, tokenizer, run_config)`: from a checkpoint when resuming, else from the PLM."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint:
        model, tokenizer, config = rebuild_from_checkpoint(checkpoint)
        if config["labels"] != dataset.labels.labels:
            raise UserError(f"the checkpoint was trained on labels {config['labels']}, but label.txt has "
                            f"{dataset.labels.labels}", dataset.labels.path)
        if data_args.prompt is not None and config.get("method", "ptuning") == "ptuning":
            wanted = build_template(data_args.prompt, data_args.soft_encoder, data_args.encoder_hidden_size,
                                    data_args.num_virtual_tokens, dataset.is_pair,
                                    mask_length=count_masks(config["template"]))
            if wanted != config["template"]:
                logger.warning("--prompt differs from the checkpoint's template; using the checkpoint's: %s",
                               config["template"])
        if training_args.freeze_plm or training_args.freeze_dropout:
            if model.verbalizer is None:
                raise UserError("is a --method finetune checkpoint: --freeze_plm/--freeze_dropout would leave "
                                "nothing to train", checkpoint)
            model.freeze_plm = True
            model.freeze_dropout = training_args.freeze_dropout
            for param in model.plm.parameters():
                param.stop_gradient = True
        return model, tokenizer, config
    labels = dataset.labels
    if model_args.method == "finetune":
        if data_args.prompt:
            logger.warning("--method finetune classifies [CLS]; --prompt is not used")
        plm, tokenizer = load_plm(model_args.model_name_or_path, head="sequence_classification",
                                  num_labels=len(labels.labels))
        parts, verbalizer = classifier_template(dataset.is_pair), None
    else:
        plm, tokenizer = load_plm(model_args.model_name_or_path)
        verbalizer = model_args.verbalizer
        masks = label_word_token_count(labels, tokenizer) if verbalizer == "manual" else 1
        parts = build_template(data_args.prompt, data_args.soft_encoder, data_args.encoder_hidden_size,
                               data_args.num_virtual_tokens, dataset.is_pair, mask_length=masks)
        validate_template(parts, dataset.is_pair, required_masks=masks,
                          verbalizer_name="SoftVerbalizer" if verbalizer == "soft" else "--verbalizer manual")
        if template_kind(parts) != "soft":
            logger.warning("the template has no soft tokens: this is a hard (PET-style) prompt, not P-tuning")
    model = build_prompt_model(plm, tokenizer, parts, labels, training_args.max_seq_length,
                               freeze_plm=training_args.freeze_plm, freeze_dropout=training_args.freeze_dropout,
                               verbalizer=verbalizer)
    config = run_config(plm, parts, labels, training_args.max_seq_length, model_args.model_name_or_path,
                        method=model_args.method, verbalizer=verbalizer)
    return model, tokenizer, config


def write_predictions(path: str, examples: List[dict], logits: np.ndarray, labels: List[str],
                      with_gold: bool) -> None:
    """TSV with a header: text(s), [gold], predicted label, its softmax probability."""
    probs = softmax(logits)
    pred = probs.argmax(axis=-1)
    pair = any("text_b" in e for e in examples)
    header = ["text_a", "text_b"] if pair else ["text"]
    header += ["gold", "predicted", "probability"] if with_gold else ["label", "probability"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fp:
            fp.write("\t".join(header) + "\n")
            for example, index, prob in zip(examples, pred, probs):
                row = [example["text_a"]] + ([example.get("text_b", "")] if pair else [])
                if with_gold:
                    row.append(labels[example["labels"]])
                row += [labels[index], f"{prob[index]:.6f}"]
                fp.write("\t".join(row) + "\n")


def predict_logits(trainer, examples: List[dict]) -> np.ndarray:
    output = trainer.predict(MapDataset([dict(e) for e in examples]))
    logits = output.predictions
    return logits[0] if isinstance(logits, (tuple, list)) else logits


def prepare(model_args, data_args, training_args):
    """Read the data, build the model and the trainer; return `(trainer, dataset, resume_checkpoint)`."""
    paddle.set_device(training_args.device)
    check_output_dir(training_args)
    dataset = load_dataset_dir(data_args.data_dir, need_train=training_args.do_train,
                               need_dev=training_args.do_train or training_args.do_eval,
                               need_test=training_args.do_predict)
    set_seed(training_args.seed)  # model init (soft prompt, encoder) is seeded too
    model, tokenizer, config = build_model(model_args, data_args, training_args, dataset)
    resume = training_args.resume_from_checkpoint
    training_args.resume_from_checkpoint = None  # the model is already rebuilt from it
    if training_args.do_train and training_args.freeze_plm and training_args.max_steps <= 0:
        training_args.max_steps = default_max_steps(training_args, len(dataset.train))

    callbacks = take_visualdl_from_report_to(training_args)
    evaluating_in_training = training_args.do_train and str(training_args.evaluation_strategy.value) != "no"
    if evaluating_in_training and training_args.load_best_model_at_end and data_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience,
                                               early_stopping_threshold=data_args.early_stopping_threshold))
    trainer = PTuningTrainer(
        model=model, tokenizer=tokenizer, args=training_args, criterion=criterion_for(model, model_args.manual_loss),
        train_dataset=MapDataset(dataset.train) if training_args.do_train else None,
        eval_dataset=MapDataset(dataset.dev) if dataset.dev else None,
        callbacks=callbacks, compute_metrics=metrics_fn(len(dataset.labels.labels)), run_config=config)
    return trainer, dataset, resume


def run(model_args, data_args, training_args) -> Dict[str, Any]:
    """Do what the --do_* flags ask; return the metrics written."""
    # Paddle names parameters and optimizer moments from a process-wide counter, and the saved
    # optimizer state is keyed by those names: a fresh name scope makes them the same in every
    # run, so --resume_from_checkpoint finds its state (also when runs share one process).
    with paddle.utils.unique_name.guard():
        return _run(model_args, data_args, training_args)


def _run(model_args, data_args, training_args) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        check_output_dir(training_args)
        dataset = load_dataset_dir(data_args.data_dir, need_train=False, need_dev=False)
        results["export"] = export(model_args, training_args, dataset, training_args.resume_from_checkpoint)
        return results
    trainer, dataset, resume = prepare(model_args, data_args, training_args)
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results["train"] = train_result.metrics
        if trainer.is_world_process_zero():
            metric = training_args.metric_for_best_model or "accuracy"
            plot_training_curves(os.path.join(training_args.output_dir, "trainer_state.json"),
                                 os.path.join(training_args.output_dir, CURVES_FILE),
                                 metric=metric if metric.startswith("eval_") else f"eval_{metric}")
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results["eval"] = metrics
        logits = predict_logits(trainer, dataset.dev)
        if trainer.is_world_process_zero():
            write_classification_report(training_args.output_dir, "eval", [e["labels"] for e in dataset.dev],
                                        logits.argmax(-1), dataset.labels.labels)
    if training_args.do_predict:
        results.update(predict_and_write(trainer, dataset, dataset.labels, training_args.output_dir))
    if training_args.do_export and trainer.is_world_process_zero():
        results["export"] = export(model_args, training_args, dataset,
                                   training_args.output_dir if training_args.do_train else resume)
    return results


def export(model_args, training_args, dataset: DatasetDir, checkpoint: Optional[str]) -> dict:
    """--do_export: the saved model (or --resume_from_checkpoint) -> output_dir/export."""
    from .export import export_checkpoint

    if not checkpoint:
        raise UserError("--do_export needs a trained model: add --do_train, or --resume_from_checkpoint DIR",
                        "train.py")
    manifest = export_checkpoint(checkpoint, os.path.join(training_args.output_dir, "export"),
                                 examples=dataset.dev or dataset.test or dataset.train,
                                 export_type=model_args.export_type, overwrite=True,
                                 export_fp16=model_args.export_fp16, quantize=model_args.quantize)
    return manifest["parity"]


def predict_and_write(trainer, dataset: DatasetDir, label_set: LabelSet, output_dir: str) -> Dict[str, Any]:
    """Test metrics + per-example predictions for test.txt, and predictions for data.txt.

    Under data parallelism every process predicts (the Trainer gathers the logits of all of
    them); only the first writes files.
    """
    results: Dict[str, Any] = {}
    labels = label_set.labels
    writer = trainer.is_world_process_zero()
    if dataset.test:
        logits = predict_logits(trainer, dataset.test)
        gold = [e["labels"] for e in dataset.test]
        metrics = {f"test_{k}": v for k, v in classification_metrics(logits.argmax(-1), gold, len(labels)).items()}
        metrics["test_samples"] = len(gold)
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        if writer:
            write_predictions(os.path.join(output_dir, TEST_PREDICTIONS_FILE), dataset.test, logits, labels, True)
            write_classification_report(output_dir, "test", gold, logits.argmax(-1), labels)
        results["test"] = metrics
    else:
        logger.warning("--do_predict: no test.txt in %s, skipping test metrics", dataset.path)
    if dataset.data:
        logits = predict_logits(trainer, dataset.data)
        if writer:
            write_predictions(os.path.join(output_dir, DATA_PREDICTIONS_FILE), dataset.data, logits, labels, False)
        results["data_predictions"] = len(dataset.data)
    return results
