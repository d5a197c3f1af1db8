"""select.py: stream a file of unlabelled texts through an export, keep bounded pools, pick K, write.

The input streams in infer.py's chunks (utils/dataset/inputs.py, every line checked) through the same
predictor batches, locally or on a Ray cluster (utils/serving/ray_infer.py `RayWorkers`: the workers
return the outputs asked for). Only the outputs a strategy needs are fetched: `logits`, an ensemble's
`member_logits` (disagreement), `mask_embedding` (diversity, hybrid). What is kept:

    entropy, margin, disagreement   the K best texts (with --balance: the K best per predicted class)
    hybrid                          the --pool_size most uncertain (entropy) texts with their vectors
    diversity                       a seeded uniform sample of --pool_size texts with their vectors

so memory does not grow with the input. Texts of --exclude_file and repeats of a held text are never
candidates. Outputs (written only once every line was scored, each atomically): the TSV of picks,
Label Studio tasks with the model's pre-labels (utils/annotation/label_studio.py) and its labelling config.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..annotation import label_studio
from ..choices import Diversity, Strategy
from ..dataset.inputs import InputFile
from ..deploy.bundle import read_decoder, read_labels, read_manifest, resolve_export_dir
from ..deploy.format import MEMBER_OUTPUT, OUTPUT_NAME, REPRESENTATION_OUTPUT
from ..deploy.predictor import CHUNK_SIZE
from ..deploy.preprocess import read_config, text_keys_of
from ..files import check_output_file, count_lines, write_text_atomic
from ..progress import Progress
from ..task.decoding import LABEL_SEPARATOR, probabilities
from .pools import read_exclusions, text_key
from .strategies import registered, strategy_for

logger = logging.getLogger(__name__)

__all__ = ["SelectOptions", "Selector", "select_file", "side_files"]


@dataclass(frozen=True)
class SelectOptions:
    """What to pick: select.py's flags without the runtime ones."""

    k: int
    strategy: str = Strategy.ENTROPY.value
    disagreement: str = "kl"
    pool_size: int = 10000
    balance: bool = False
    seed: int = 0
    diversity: str = Diversity.KCENTER.value


@dataclass
class Candidate:
    line: int
    example: dict
    probs: np.ndarray              # the export's probabilities (its decoder's), a copy
    score: float                   # the strategy's uncertainty score (diversity: 0)
    vector: Optional[np.ndarray] = None


def side_files(output_path: str) -> Tuple[str, str]:
    """`(tasks, config)`: STEM.label-studio.json and STEM.label-studio.xml beside the TSV."""
    stem = os.path.splitext(output_path)[0]
    return stem + ".label-studio.json", stem + ".label-studio.xml"


def needed_outputs(strategy: str, manifest: dict, export_dir: str) -> List[str]:
    """The outputs the strategy reads, or a `UserError` when the export has not got them."""
    have = [o.get("name") for o in manifest.get("outputs") or [] if isinstance(o, dict)] or [OUTPUT_NAME]
    chosen = registered(strategy)
    for output in chosen.outputs:
        if output not in have:
            raise chosen.missing(output, export_dir)
    return [OUTPUT_NAME, *chosen.outputs]


class Selector:
    """Takes scored chunks (`add`), holds the bounded pools, returns the picks (`picks`); what is pooled and
    picked is the registered strategy's (strategies.py)."""

    def __init__(self, options: SelectOptions, decoder, excluded=frozenset()):
        self.options, self.decoder, self.excluded = options, decoder, excluded
        self.strategy = strategy_for(options, decoder)
        self.scorer = self.strategy.scorer
        self.scored = self.skipped = 0
        self.pools = {}  # per predicted class with --balance (ranked strategies), else one (key None)
        if self.strategy.pool_key(0) is None:
            self.pools[None] = self.strategy.new_pool()

    @property
    def peak(self) -> int:
        """The most candidates held at once (all pools together, each at its own peak)."""
        return sum(pool.peak for pool in self.pools.values())

    def _pool(self, label: int):
        key = self.strategy.pool_key(label)
        if key not in self.pools:
            self.pools[key] = self.strategy.new_pool()
        return self.pools[key]

    def add(self, examples: List[dict], lines: List[int], arrays: Dict[str, np.ndarray]) -> None:
        """One chunk: its examples, their input line numbers, the export's outputs on them."""
        probs = self.decoder.probabilities(arrays[OUTPUT_NAME])
        if self.scorer.members:
            scores = self.scorer.score(probabilities(arrays[MEMBER_OUTPUT], 1.0, self.decoder.activation))
        else:
            scores = self.scorer.score(probs)
        priority = self.scorer.priority(scores)
        vectors = arrays.get(REPRESENTATION_OUTPUT)
        classes = probs.argmax(axis=1)
        self.scored += len(examples)
        sample = self.strategy.keeps_vectors  # a uniform sample: every text is offered, whatever its score
        # Texts below the pool's entry threshold cannot enter (it only rises): skipped without a look
        # (unless exclusions must be counted, or the pools are per class).
        single = None if sample else self.pools.get(None)
        order = np.arange(len(examples))
        if single is not None and not self.excluded:
            order = np.flatnonzero(priority >= single.threshold())
        for i in order:
            key = text_key(examples[i])
            if key in self.excluded:
                self.skipped += 1
                continue
            pool = self._pool(int(classes[i]))
            if not sample and priority[i] < pool.threshold():
                continue
            item = Candidate(lines[i], examples[i], probs[i].copy(), float(scores[i]),
                             None if vectors is None else vectors[i].copy())
            self.strategy.offer(pool, priority[i], lines[i], key, item)

    def picks(self) -> List[Tuple[Candidate, float]]:
        """`(candidate, score shown)` in rank order: the strategy's score (entropy, margin, disagreement),
        or for diversity and hybrid the k-center distance at the time of the pick (k-means: to the centroid)."""
        return self.strategy.picks(self.pools)


def prediction_of(decoder, labels: List[str], probs: np.ndarray):
    """What infer.py predicts for one text (its label, or label set), as utils.deploy.classifier's types."""
    from ..deploy.classifier import LabelSetPrediction, Prediction

    order = np.argsort(-probs, kind="stable")
    top = [(labels[j], float(probs[j])) for j in order]
    if decoder.multi_label:
        chosen = decoder.decide(probs[None])[0]
        return LabelSetPrediction([(labels[j], float(probs[j])) for j in order if chosen[j]], top)
    return Prediction(decoder.names(probs[None])[0], float(probs[order[0]]), top[:1])


def write_outputs(picks, output_path: str, decoder, labels: List[str], pair: bool, strategy: str,
                  model_version: str) -> None:
    """The TSV of picks, the Label Studio tasks with pre-labels and the labelling config."""
    tasks_path, config_path = side_files(output_path)
    header = ["rank", "line", *(["text_a", "text_b"] if pair else ["text"]), "score", "prediction"]
    rows, tasks = ["\t".join(header)], []
    for rank, (candidate, score) in enumerate(picks, start=1):
        prediction = prediction_of(decoder, labels, candidate.probs)
        names = (LABEL_SEPARATOR.join(prediction.names) if decoder.multi_label else prediction.label)
        texts = [candidate.example["text_a"]] + ([candidate.example["text_b"]] if pair else [])
        rows.append("\t".join([str(rank), str(candidate.line), *texts, f"{score:.6g}", names]))
        text = tuple(texts) if pair else texts[0]
        tasks.append(label_studio.task(text, [label_studio.prediction(prediction, decoder.task_type, model_version)],
                                       meta={"rank": rank, "line": candidate.line, "strategy": strategy,
                                             "score": round(float(score), 6)}))
    write_text_atomic(output_path, "\n".join(rows) + "\n")
    write_text_atomic(tasks_path, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    write_text_atomic(config_path, label_studio.labeling_config(labels, decoder.task_type, pair))


def local_chunks(model, names: List[str], batch_size: int, sort_by_length: bool):
    """`classify_chunks` running the export here: each chunk's outputs `names`, as infer.py batches them
    (a long text's windows aggregated as infer.py does)."""
    def classify_chunks(chunks, on_texts):
        for examples, lines in chunks:
            arrays = model.document_outputs(examples, names, batch_size, sort_by_length, on_texts)
            yield examples, lines, arrays
            del examples, lines, arrays  # before the next chunk is read

    return classify_chunks


def ray_chunks(cluster, names: List[str]):
    """The same on a Ray cluster: each chunk to a worker's `outputs` (utils/serving/ray_infer.py)."""
    return cluster.classify_chunks(call=lambda worker, examples: worker.outputs.remote(examples, names))


def select_file(model_path: str, input_path: str, output_path: str, options: SelectOptions,
                exclude_path: Optional[str] = None, runtime: Optional[dict] = None, ray: Optional[str] = None,
                chunk_size: Optional[int] = None, sort_by_length: bool = True, progress: Optional[bool] = None,
                device_id: int = 0) -> dict:
    """Pick `options.k` texts of `input_path` with the export at `model_path`; write `output_path` and
    its Label Studio files; return the summary. `runtime`: `Classifier`'s options (device, num_threads,
    use_fp16, use_int8, max_seq_length, batch_size). Every user mistake is reported before the model loads."""
    started = time.perf_counter()
    runtime = dict(runtime or {})
    export_dir = resolve_export_dir(model_path)
    manifest = read_manifest(export_dir)
    labels = read_labels(export_dir)
    decoder = read_decoder(export_dir, manifest, labels)
    names = needed_outputs(options.strategy, manifest, export_dir)
    config = read_config(export_dir)
    pair = "text_b" in text_keys_of(config)
    for path in (output_path, *side_files(output_path)):
        check_output_file(path, not_same_as=input_path)
    excluded = read_exclusions(exclude_path, pair)
    inputs = InputFile(input_path, pair, labels, decoder.task_type)  # the first line checked before the model
    selector = Selector(options, decoder, excluded)
    chunks = ((examples, lines) for examples, _, lines in inputs.chunks(chunk_size or CHUNK_SIZE, numbered=True))
    batch_size = runtime.get("batch_size", 32)
    summary: Dict = {}
    try:
        if ray:
            from ..serving.ray_infer import RayWorkers

            cluster = RayWorkers(ray, model_path, sort_by_length=sort_by_length, **runtime)
            with cluster:
                _consume(selector, ray_chunks(cluster, names), chunks, input_path, progress, batch_size)
                cluster.add_window_counts(summary)
                cluster.memory()
            summary = cluster.report(summary)
        else:
            from ..deploy.classifier import Classifier

            classifier = Classifier(model_path, device_id=device_id, **runtime)
            _consume(selector, local_chunks(classifier.model, names, batch_size, sort_by_length), chunks,
                     input_path, progress, batch_size)
            summary.update(model=os.path.join(export_dir, classifier.model.model_file), device=classifier.device)
            summary.update(classifier.model.window_report())  # --long_text: as infer.py reports them
    finally:
        inputs.close()
    seconds = time.perf_counter() - started
    picks = selector.picks()
    write_outputs(picks, output_path, decoder, labels, pair, options.strategy, os.path.basename(
        os.path.abspath(export_dir)))
    return _summary(summary, selector, picks, options, output_path, seconds)


def _consume(selector: Selector, classify_chunks, chunks, input_path: str, progress: Optional[bool],
             batch_size: int) -> None:
    total = count_lines(input_path)
    with Progress(total, enabled=progress if progress is not None else total > batch_size) as bar:
        for examples, lines, arrays in classify_chunks(chunks, bar.update):
            selector.add(examples, lines, arrays)
            del examples, lines, arrays


def _summary(summary: dict, selector: Selector, picks, options: SelectOptions, output_path: str,
             seconds: float) -> dict:
    tasks_path, config_path = side_files(output_path)
    summary.update(strategy=options.strategy, k=options.k, picked=len(picks), texts_scored=selector.scored,
                   excluded=selector.skipped, candidates_held_peak=selector.peak, seconds=round(seconds, 3),
                   texts_per_second=round(selector.scored / seconds, 1) if seconds > 0 else None,
                   output_file=output_path, label_studio_tasks=tasks_path, label_studio_config=config_path)
    if len(picks) < options.k:
        note = (f"only {len(picks)} distinct texts were available (after exclusions and repeats); all of them "
                f"were picked, fewer than --k {options.k}")
        summary["note"] = note
        logger.warning(note)
    return summary
