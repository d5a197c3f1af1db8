"""Ensembles (模型融合): N trained runs as one export whose graph averages their probabilities.

    python ensemble.py --members OUT/runs/split0_seed42 OUT/runs/split1_seed42 ... --output_dir ENS \
        --data_dir DATA --do_eval --do_predict

`ENS/export` is an ordinary export directory: infer.py, the Python API, the service, Ray and
distillation (`train.py --teacher`) load it like any other. Its one graph runs every member (each
with its prompt encoder folded, as in a single export) on the same texts and outputs

    logits          log of the members' mean softmax (multi-class), or the logit of their mean
                    sigmoid (multi-label, hierarchical): the usual decoding turns it back into
                    exactly the mean probabilities, so nothing downstream knows it is an ensemble
    member_logits   [members, batch, labels]: each member's own logits (parity per member, and
                    the members' metrics beside the ensemble's from one pass)

Members must agree on what a prediction is: label names (hence order), task type, text layout
(single texts or pairs) and vocabulary (one tokenizer per export). Anything else may differ:
prompts, `--method`, verbalizers, lengths, PLM sizes. Members that read texts through the same
template and length share one set of inputs; each other template gets its own (a *view*, see
utils/deploy/preprocess.py), so a PET-style ensemble of several prompts is one graph too.

Thresholds of label-set ensembles: `--threshold T`, `--threshold_search` on dev (the ensemble's
probabilities), else each label's mean of the members' thresholds.

The parity gate runs each member's unfolded dynamic graph on its own training template's batch;
the mean of their probabilities must match Paddle Inference and onnxruntime on the ensemble
graph (max |Δp| <= tolerance, every argmax / label set equal), and each member's logits in the
graph its own dynamic graph's. Nothing is published otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..rundir.checkpoints import refuse_non_final_model
from ..rundir.checkpoints import verify as verify_checkpoint
from ..task.decoding import MULTI_CLASS, Decoder
from ..errors import UserError
from ..deploy.format import MANIFEST_FILE, OUTPUT_NAME, VOCAB_FILE, view_input_names, view_suffix
from ..files import read_json, sha256_file, write_json_atomic
from ..model.spec import SPEC_FILE, ModelSpec

logger = logging.getLogger(__name__)

MEMBER_OUTPUT = "member_logits"
ENSEMBLE_FILE = "ensemble.json"
EXPORT_DIR = "export"
# What ensemble.py writes into its --output_dir (replaced only with --overwrite_output_dir).
OUTPUTS = (EXPORT_DIR, ENSEMBLE_FILE, "eval_results.json", "test_results.json", "test_predictions.tsv",
           "data_predictions.tsv")
# Probabilities are kept this far from 0 and 1 before the log / logit, so the outputs stay finite.
MULTI_CLASS_FLOOR = 1e-30
MAX_VIEWS = 8  # distinct templates (or lengths) among the members: the graph's forward has 8 x 4 inputs
MULTI_LABEL_EPS = 1e-7


@dataclass(frozen=True)
class Member:
    path: str          # the model directory: a run's final model or a checkpoint-N
    spec: ModelSpec
    vocab_sha256: str

    @property
    def text_keys(self) -> List[str]:
        return sorted({part["text"] for part in self.spec.template if "text" in part})


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
    if os.path.isfile(os.path.join(path, SPEC_FILE)) and os.path.isfile(os.path.join(path, "model_state.pdparams")):
        return path
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        raise UserError("is an export; an ensemble is built from trained models: give the train.py --output_dir it "
                        "was exported from", path)
    refuse_non_final_model(path)
    if os.path.isdir(os.path.join(path, "runs")):
        raise UserError(f"is a multirun.py directory: give its runs, e.g. --members {os.path.join(path, 'runs', '*')} "
                        "(or run multirun.py with --ensemble)", path)
    raise UserError(f"is not a trained model of this tool ({SPEC_FILE} and model_state.pdparams missing)", path)


def load_member(path: str) -> Member:
    path = resolve_member(path)
    verify_checkpoint(path, purpose="model")
    spec = ModelSpec.load(path)
    vocab = os.path.join(path, VOCAB_FILE)
    if not os.path.isfile(vocab):
        raise UserError(f"{VOCAB_FILE} is missing: the member's tokenizer cannot be checked against the others'", path)
    return Member(path=path, spec=spec, vocab_sha256=sha256_file(vocab))


def _label_difference(labels: Sequence[str], reference: Sequence[str]) -> str:
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
    first = members[0]
    for member in members[1:]:
        where = os.path.join(member.path, SPEC_FILE)
        if member.spec.labels != first.spec.labels:
            raise UserError(f"labels {member.spec.labels} differ from those of {first.path} ({first.spec.labels}; "
                            f"{_label_difference(member.spec.labels, first.spec.labels)}): an ensemble averages "
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
    task_type = first.spec.task_type
    if task_type == MULTI_CLASS and (threshold is not None or hierarchical_decoding is not None):
        raise UserError("is for multi-label and hierarchical ensembles (these members are multi-class)",
                        "--threshold" if threshold is not None else "--hierarchical_decoding")
    if hierarchical_decoding is not None and task_type != "hierarchical":
        raise UserError("is for hierarchical ensembles (label paths A##B)", "--hierarchical_decoding")
    consistent = {member.spec.consistent_decoding for member in members}
    if hierarchical_decoding is None and task_type == "hierarchical" and len(consistent) > 1:
        raise UserError("the members decode the hierarchy differently (consistent and flat); choose one for the "
                        "ensemble", "--hierarchical_decoding")
    keys: Dict[str, int] = {}
    views = [keys.setdefault(json.dumps([m.spec.template, m.spec.max_seq_length], sort_keys=True), len(keys))
             for m in members]
    if len(keys) > MAX_VIEWS:
        raise UserError(f"the members use {len(keys)} different templates or lengths; an ensemble graph takes at most "
                        f"{MAX_VIEWS}", "--members")
    thresholds = None
    if task_type != MULTI_CLASS:
        thresholds = ([float(threshold)] * len(first.spec.labels) if threshold is not None else
                      np.mean([m.spec.decoder.thresholds for m in members], axis=0).round(6).tolist())
    decoder = Decoder(task_type, tuple(first.spec.labels), tuple(thresholds) if thresholds else None,
                      (hierarchical_decoding or ("consistent" if first.spec.consistent_decoding else "flat"))
                      == "consistent")
    return EnsemblePlan(members=members, views=views, decoder=decoder)


# -- the combined graph --------------------------------------------------------------------------


def combine(member_probs: Sequence[np.ndarray], multi_label: bool) -> np.ndarray:
    """numpy twin of `EnsembleModel`'s output: log mean softmax, or logit of the mean sigmoid."""
    mean = np.mean(np.asarray(member_probs, dtype=np.float64), axis=0)
    if multi_label:
        p = np.clip(mean, MULTI_LABEL_EPS, 1 - MULTI_LABEL_EPS)
        return np.log(p) - np.log1p(-p)
    return np.log(np.maximum(mean, MULTI_CLASS_FLOOR))


def member_probabilities(decoder: Decoder, logits: np.ndarray) -> np.ndarray:
    """A member's probabilities, with its own temperature (a calibrated member counts as calibrated)."""
    return decoder.probabilities(logits)


def ensemble_model(models, views: Sequence[int], multi_label: bool, temperatures: Sequence[float] = ()):
    """The inference graph: every member folded (utils/export/pipeline.py), each member's logits divided by
    its temperature (`temperatures`, 1 when not given), probabilities averaged."""
    import paddle
    import paddle.nn.functional as F

    from ..export.pipeline import FoldedPromptModel

    class EnsembleModel(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.members = paddle.nn.LayerList([FoldedPromptModel(model) for model in models])
            self.views = list(views)
            self.temperatures = [float(t) for t in temperatures] or [1.0] * len(models)

        # One parameter per input, spelled out: paddle.jit cannot trace *args, and the graph's inputs
        # are the first 4 x (number of views) of them (the rest stay None). MAX_VIEWS bounds it.
        def forward(self, input_ids, token_type_ids, position_ids, soft_token_ids, input_ids_v1=None,
                    token_type_ids_v1=None, position_ids_v1=None, soft_token_ids_v1=None, input_ids_v2=None,
                    token_type_ids_v2=None, position_ids_v2=None, soft_token_ids_v2=None, input_ids_v3=None,
                    token_type_ids_v3=None, position_ids_v3=None, soft_token_ids_v3=None, input_ids_v4=None,
                    token_type_ids_v4=None, position_ids_v4=None, soft_token_ids_v4=None, input_ids_v5=None,
                    token_type_ids_v5=None, position_ids_v5=None, soft_token_ids_v5=None, input_ids_v6=None,
                    token_type_ids_v6=None, position_ids_v6=None, soft_token_ids_v6=None, input_ids_v7=None,
                    token_type_ids_v7=None, position_ids_v7=None, soft_token_ids_v7=None):
            inputs = [input_ids, token_type_ids, position_ids, soft_token_ids, input_ids_v1, token_type_ids_v1,
                      position_ids_v1, soft_token_ids_v1, input_ids_v2, token_type_ids_v2,
                      position_ids_v2, soft_token_ids_v2, input_ids_v3, token_type_ids_v3,
                      position_ids_v3, soft_token_ids_v3, input_ids_v4, token_type_ids_v4,
                      position_ids_v4, soft_token_ids_v4, input_ids_v5, token_type_ids_v5,
                      position_ids_v5, soft_token_ids_v5, input_ids_v6, token_type_ids_v6,
                      position_ids_v6, soft_token_ids_v6, input_ids_v7, token_type_ids_v7,
                      position_ids_v7, soft_token_ids_v7]
            all_logits, total = [], None
            for member, view, temperature in zip(self.members, self.views, self.temperatures):
                logits = member(*inputs[4 * view:4 * view + 4])
                all_logits.append(logits)
                if temperature != 1.0:
                    logits = logits / temperature
                probs = F.sigmoid(logits) if multi_label else F.softmax(logits, axis=-1)
                total = probs if total is None else total + probs
            mean = total / len(self.members)
            if multi_label:
                p = paddle.clip(mean, MULTI_LABEL_EPS, 1 - MULTI_LABEL_EPS)
                # one log: with log(p) - log(1 - p), Paddle Inference's inplace pass overwrote p with
                # log(p) before 1 - p was computed (wrong outputs, caught by the parity gate)
                combined = paddle.log(p / (1 - p))
            else:
                combined = paddle.log(paddle.clip(mean, min=MULTI_CLASS_FLOOR))
            return combined, paddle.stack(all_logits)

    return EnsembleModel()


def describe_views(models, plan: EnsemblePlan) -> dict:
    """preprocess.json: view 0 as a single export's (so its reader is unchanged), plus `views`
    when the members use more than one template or length."""
    from ..export.pipeline import ExportError
    from ..deploy.preprocess import describe_template

    configs = []
    for view in range(plan.num_views):
        index = plan.views.index(view)
        configs.append(describe_template(models[index].template, plan.members[index].spec.max_seq_length))
    config = dict(configs[0])
    shared = ("special_ids", "tokenizer", "pad_token_type_id", "truncation_side")
    for other in configs[1:]:
        for key in shared:
            if other.get(key) != config.get(key):
                raise ExportError(f"the members' tokenizers differ in {key}; an export has one tokenizer", key)
    if len(configs) > 1:
        config["max_seq_length"] = plan.max_seq_length
        config["views"] = [{"parts": c["parts"], "max_seq_length": c["max_seq_length"]} for c in configs]
    return config


def parity_gate(models, plan: EnsemblePlan, directory: str, files: Dict[str, str], examples: List[dict],
                feed: Dict[str, np.ndarray], onnx_outputs: List[np.ndarray], tolerance: float) -> dict:
    """Each member's unfolded dynamic graph vs the ensemble graph (Paddle Inference, onnxruntime)."""
    import paddle
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    from ..export.pipeline import ExportError, _compare, describe_result, paddle_inference_outputs
    from ..deploy.format import INPUT_NAMES

    references = []
    for index, (model, view) in enumerate(zip(models, plan.views)):
        template = model.template
        collate = PromptDataCollatorWithPadding(template.tokenizer, padding=True, return_tensors="np")
        batch = collate([template(dict(e)) for e in examples])
        for name in INPUT_NAMES:
            if not np.array_equal(feed[name + view_suffix(view)], batch[name]):
                raise ExportError(f"infer.py's preprocessing gives other {name} than the training template of member "
                                  f"{index} ({plan.members[index].path}); refusing to export", directory)
        with paddle.no_grad():
            references.append(model(**{k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}).numpy())
    member_decoders = [member.spec.decoder for member in plan.members]
    reference = combine([member_probabilities(d, r) for d, r in zip(member_decoders, references)],
                        plan.decoder.multi_label)
    inference = paddle_inference_outputs(directory, files, feed)
    results = [_compare("paddle_inference", reference, inference[0], tolerance, plan.decoder, probabilities=True),
               _compare("onnxruntime", reference, onnx_outputs[0], tolerance, plan.decoder, probabilities=True)]
    results += [_compare(f"onnxruntime member {index}", references[index], onnx_outputs[1][index], tolerance,
                         member_decoders[index]) for index in range(len(models))]
    report = {"sample_size": len(examples), "compared": "ensemble probabilities, then each member's logits",
              "reference": "each member's dynamic graph (unfolded prompt encoder) on its training template's batch",
              "results": results, "passed": all(r["passed"] for r in results)}
    if not report["passed"]:
        numbers = "; ".join(describe_result(r) for r in results if not r["passed"])
        raise ExportError(f"parity gate failed, the ensemble export does not reproduce its members: {numbers}",
                          directory)
    return report


def member_summary(member: Member, view: int) -> dict:
    spec = member.spec
    plm = spec.plm_config or {}
    return {"source_checkpoint": os.path.abspath(member.path), "view": view, "method": spec.method.value,
            "verbalizer": spec.verbalizer, "head": spec.head, "template": spec.template,
            "max_seq_length": spec.max_seq_length, "model_name_or_path": spec.model_name_or_path,
            "plm": {k: plm.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "thresholds": list(spec.decoder.thresholds) if spec.decoder.thresholds else None}


def export_ensemble(plan: EnsemblePlan, output_dir: str, examples: Optional[List[dict]] = None,
                    export_type: str = "paddle", export_fp16: bool = False, quantize: bool = False, opset: int = 13,
                    tolerance: float = 1e-4, models=None) -> dict:
    """Write the ensemble export to `output_dir` (built beside it, renamed into place); return its manifest.
    `models`: the members already built (in plan order), else they are loaded here."""
    import paddle

    from ..choices import ExportType
    from ..export.pipeline import sample_examples, write_graphs, write_manifest, write_variants
    from ..deploy.format import LABELS_FILE, ONNX_FILE, PREPROCESS_FILE, TEMPLATE_FILE
    from ..files import atomic_directory
    from ..deploy.preprocess import PromptPreprocessor

    start = time.time()
    paddle.set_device("cpu")
    if models is None:
        models = load_models(plan)
    multi_label = plan.decoder.multi_label
    graph = ensemble_model(models, plan.views, multi_label, [m.spec.temperature for m in plan.members])
    graph.eval()
    keys = sorted(models[0].template.example_keys)
    examples = sample_examples(examples, keys, plan.max_seq_length)
    input_names = [name for view in range(plan.num_views) for name in view_input_names(view)]
    first = plan.members[0]
    with atomic_directory(output_dir) as directory:
        files = write_graphs(graph, directory, opset, input_names, (OUTPUT_NAME, MEMBER_OUTPUT))
        models[0].template.tokenizer.save_pretrained(directory)
        write_json_atomic(os.path.join(directory, PREPROCESS_FILE), describe_views(models, plan))
        write_json_atomic(os.path.join(directory, TEMPLATE_FILE), {
            "template": first.spec.template, "processed": models[0].template.prompt,
            "members": [{"template": m.spec.template, "processed": model.template.prompt}
                        for m, model in zip(plan.members, models)]})
        write_json_atomic(os.path.join(directory, LABELS_FILE), [
            {"id": i, "label": label, "word": word}
            for i, (label, word) in enumerate(zip(first.spec.labels, first.spec.label_words))])
        preprocessor = PromptPreprocessor.from_export(directory)
        feed = preprocessor.pad(preprocessor.encode(examples))
        onnx_outputs = onnxruntime_outputs(os.path.join(directory, ONNX_FILE), feed)
        parity = parity_gate(models, plan, directory, files, examples, feed, onnx_outputs, tolerance)
        parity.update(write_variants(directory, feed, onnx_outputs[0], export_fp16, quantize, plan.decoder,
                                     probabilities=True))
        if export_type == ExportType.ONNX.value:
            for name in files.values():
                os.remove(os.path.join(directory, name))
            files = {}
        spec = dataclasses.replace(first.spec, thresholds=list(plan.decoder.thresholds or []) or None,
                                   consistent_decoding=plan.decoder.consistent,
                                   threshold_search=plan.threshold_search, max_seq_length=plan.max_seq_length)
        extra = {"method": "ensemble", "verbalizer": None, "head": None, "model_name_or_path": None,
                 "source_checkpoint": None,
                 "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(plan.labels)],
                              "meaning": "log of the mean softmax (multi-class) / logit of the mean sigmoid"},
                             {"name": MEMBER_OUTPUT, "dtype": "float32",
                              "shape": [len(plan.members), "batch", len(plan.labels)]}],
                 "inputs": [{"name": name, "dtype": "int64", "shape": ["batch", "sequence" + view_suffix(view)]}
                            for view in range(plan.num_views) for name in view_input_names(view)],
                 "ensemble": {"combine": "mean of the members' probabilities", "views": plan.num_views,
                              "members": [member_summary(m, v) for m, v in zip(plan.members, plan.views)]}}
        manifest = write_manifest(directory, spec, first.path, export_type, files, opset, parity,
                                  fp16=export_fp16, int8=quantize, seconds=time.time() - start, extra=extra)
    logger.info("exported an ensemble of %d members (%d view(s)) -> %s", len(plan.members), plan.num_views, output_dir)
    return manifest


def onnxruntime_outputs(path: str, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME, MEMBER_OUTPUT], feed)


def load_models(plan: EnsemblePlan) -> list:
    """Every member's prompt model from its checkpoint (already verified by `plan_ensemble`)."""
    from ..model.assembly import rebuild_from_checkpoint

    return [rebuild_from_checkpoint(member.path, verify=False)[0] for member in plan.members]


def search_ensemble_thresholds(plan: EnsemblePlan, models, dev: List[dict], mode: str,
                               default: Optional[float]) -> EnsemblePlan:
    """--threshold_search on dev with the ensemble's (dynamic-graph) probabilities."""
    from ..task.decoding import search_thresholds
    from ..model.assembly import model_logits

    probs = np.mean([member_probabilities(m.spec.decoder, model_logits(model, dev))
                     for m, model in zip(plan.members, models)], axis=0)
    gold = np.array([e["labels"] for e in dev]) > 0.5
    thresholds = search_thresholds(plan.decoder, probs, gold, mode, default=default)
    return dataclasses.replace(plan, decoder=plan.decoder.with_thresholds(thresholds), threshold_search=mode)


# -- evaluation beside the members ---------------------------------------------------------------


def export_outputs(export_dir: str, examples: List[dict], batch_size: int = 32):
    """`(logits [n, labels], member_logits [members, n, labels])` of an ensemble export on `examples`
    (onnxruntime, length-sorted batches, as infer.py)."""
    from ..deploy.predictor import ExportedClassifier

    model = ExportedClassifier(export_dir)
    features = model.preprocessor.encode(examples)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    logits = np.zeros((len(examples), len(model.labels)), dtype=np.float32)
    members = None
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = model.preprocessor.pad([features[i] for i in index])
        combined, per_member = model.session.run([OUTPUT_NAME, MEMBER_OUTPUT],
                                                 {name: batch[name] for name in model.input_names})
        if members is None:
            members = np.zeros((per_member.shape[0], len(examples), per_member.shape[2]), dtype=np.float32)
        logits[index] = combined
        members[:, index] = per_member
    return logits, members


def evaluate(plan: EnsemblePlan, export_dir: str, examples: List[dict], batch_size: int = 32) -> dict:
    """The ensemble's metrics and each member's on `examples` (gold `labels`), from one pass."""
    from ..task.metrics import task_metrics

    gold = [e["labels"] for e in examples]
    logits, members = export_outputs(export_dir, examples, batch_size)
    member_metrics = [task_metrics(m.spec.decoder, members[i], gold) for i, m in enumerate(plan.members)]
    mean = {key: float(np.mean([m[key] for m in member_metrics])) for key in member_metrics[0]}
    return {"ensemble": task_metrics(plan.decoder, logits, gold), "members": member_metrics, "members_mean": mean,
            "samples": len(examples), "logits": logits}


def read_ensemble_file(output_dir: str) -> dict:
    return read_json(os.path.join(output_dir, ENSEMBLE_FILE), what="ensemble summary")


# -- ensemble.py ---------------------------------------------------------------------------------


def check_output_dir(output_dir: str, overwrite: bool) -> List[str]:
    """What of an earlier ensemble.py run in `output_dir` will be replaced (refused without `overwrite`)."""
    from ..rundir.plan import owned_outputs

    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a directory", output_dir)
    existing = sorted(name for name in OUTPUTS if os.path.lexists(os.path.join(output_dir, name)))
    if owned_outputs(output_dir, ("train",)):
        raise UserError("holds a training run; write the ensemble to a directory of its own", output_dir)
    if existing and not overwrite:
        raise UserError(f"already holds results of an earlier ensemble ({', '.join(existing)}); pass "
                        "--overwrite_output_dir to replace them or choose another --output_dir", output_dir)
    return existing


def load_ensemble_data(args, plan: EnsemblePlan):
    """The dataset folder, checked against the members (labels, layout), or None."""
    from ..dataset.folder import load_dataset_dir

    needs_dev = bool(args.do_eval or (args.threshold_search not in (None, "none")))
    if not args.data_dir:
        for flag, given in (("--do_eval", args.do_eval), ("--do_predict", args.do_predict),
                            ("--threshold_search", needs_dev)):
            if given:
                raise UserError("needs --data_dir (dev.txt / test.txt to evaluate or tune on)", flag)
        return None
    dataset = load_dataset_dir(args.data_dir, need_train=False, need_dev=needs_dev, task_type=plan.decoder.task_type)
    if dataset.labels.labels != plan.labels:
        raise UserError(f"lists labels {dataset.labels.labels}, the members were trained on {plan.labels} "
                        f"({_label_difference(dataset.labels.labels, plan.labels)})", dataset.labels.path)
    pair = "text_b" in plan.members[0].text_keys
    examples = dataset.dev or dataset.test or dataset.data or []
    if examples and ("text_b" in examples[0]) != pair:
        raise UserError(f"holds {'pairs' if not pair else 'single texts'}, the members classify "
                        f"{'text pairs' if pair else 'single texts'}", args.data_dir)
    if args.do_predict and dataset.test is None and dataset.data is None:
        raise UserError("--do_predict needs test.txt or data.txt, and the data directory has neither", args.data_dir)
    return dataset


def run(args) -> dict:
    """ensemble.py: check everything, lock the output directory, export, evaluate; return the summary."""
    from ..choices import Quantize
    from ..deploy.predictions import write_predictions
    from ..rundir.plan import DirLock, remove_tree

    threshold_search = None if args.threshold_search in (None, "none") else args.threshold_search
    plan = plan_ensemble(args.members, args.threshold, args.hierarchical_decoding)
    if threshold_search and not plan.decoder.multi_label:
        raise UserError("is for multi-label and hierarchical ensembles (these members are multi-class)",
                        "--threshold_search")
    dataset = load_ensemble_data(args, plan)
    stale = check_output_dir(args.output_dir, args.overwrite_output_dir)
    with DirLock(args.output_dir, what="ensemble.py"):
        for name in stale:
            remove_tree(os.path.join(args.output_dir, name))
        import paddle

        from ..model import compat

        compat.apply()
        with paddle.utils.unique_name.guard():
            models = load_models(plan)
            if threshold_search:
                plan = search_ensemble_thresholds(plan, models, dataset.dev, threshold_search, args.threshold)
                logger.info("--threshold_search %s on dev.txt: thresholds %s", threshold_search,
                            ", ".join(f"{t:.2f}" for t in plan.decoder.thresholds))
            examples = (dataset.dev or dataset.test or dataset.data) if dataset else None
            export_dir = os.path.join(args.output_dir, EXPORT_DIR)
            manifest = export_ensemble(plan, export_dir, examples, export_type=args.export_type,
                                       export_fp16=args.export_fp16, quantize=args.quantize == Quantize.INT8.value,
                                       opset=args.opset, tolerance=args.tolerance, models=models)
        del models
        summary = {"members": [os.path.abspath(m.path) for m in plan.members], "views": plan.num_views,
                   "task_type": plan.decoder.task_type, "thresholds": manifest.get("thresholds"),
                   "threshold_search": plan.threshold_search, "export": os.path.abspath(export_dir),
                   "parity": manifest["parity"], "metrics": {}}
        splits = ([("eval", dataset.dev)] if args.do_eval else []) + (
            [("test", dataset.test)] if args.do_predict and dataset.test else [])
        for prefix, examples in splits:
            result = evaluate(plan, export_dir, examples, args.batch_size)
            metrics = {f"{prefix}_{k}": v for k, v in result["ensemble"].items()}
            metrics[f"{prefix}_samples"] = result["samples"]
            write_json_atomic(os.path.join(args.output_dir, f"{prefix}_results.json"), metrics)
            summary["metrics"][prefix] = {k: result[k] for k in ("ensemble", "members", "members_mean", "samples")}
            if prefix == "test":
                write_predictions(os.path.join(args.output_dir, "test_predictions.tsv"), examples,
                                  plan.decoder.probabilities(result["logits"]), plan.labels,
                                  gold=dataset.gold_names(examples), decoder=plan.decoder)
        if args.do_predict and dataset.data:
            logits, _ = export_outputs(export_dir, dataset.data, args.batch_size)
            write_predictions(os.path.join(args.output_dir, "data_predictions.tsv"), dataset.data,
                              plan.decoder.probabilities(logits), plan.labels, decoder=plan.decoder)
        write_json_atomic(os.path.join(args.output_dir, ENSEMBLE_FILE), summary)
    return summary


def describe_summary(summary: dict) -> str:
    """ensemble.py's closing lines: the ensemble beside its members, and where the export is."""
    lines = [f"ensemble of {len(summary['members'])} members ({summary['views']} view(s)), parity passed: "
             + ", ".join(f"{r['backend']} max |Δ| {r['max_abs_diff']:.2g}" for r in summary["parity"]["results"][:2])]
    for prefix, result in summary["metrics"].items():
        split = "dev" if prefix == "eval" else "test"
        for key in ("accuracy", "micro_f1", "macro_f1"):
            if key in result["ensemble"]:
                members = ", ".join(f"{m[key]:.4f}" for m in result["members"])
                lines.append(f"  {split} {key:<9} ensemble {result['ensemble'][key]:.4f} | members mean "
                             f"{result['members_mean'][key]:.4f} ({members})")
    lines.append(f"  export  {summary['export']} (python infer.py --model_path_prefix {summary['export']} "
                 "--input_file TEXTS)")
    return "\n".join(lines)
