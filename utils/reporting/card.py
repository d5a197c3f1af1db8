"""The model card: README.md in every run and export directory, Hugging Face style.

YAML front matter the Hub reads (library_name, pipeline_tag, language, tags, metrics and a
`model-index` with the dev/test results), then for people: labels and label words, the template, the
task type and decoding (thresholds, temperature, reject option), calibration (ECE), the metrics (and
mean ± std over runs where a multirun measured them), the data files' sha256 and sizes, the command
lines that made it, the search that chose them, and intended use and limits.

Everything comes from files the tool already wrote: the export's manifest (or the model's spec),
all_results.json, run.json (utils/rundir/record.py), multirun's summary.json, search.py's record. A
README.md this tool did not write (no marker line) is never replaced.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from ..files import write_text_atomic
from ..rundir.names import CARD_MARKER as MARKER, is_tool_card

logger = logging.getLogger(__name__)

# (key in all_results.json without the split prefix, the Hub's metric type, its args, a readable name)
METRICS = (("accuracy", "accuracy", None, "Accuracy"), ("macro_f1", "f1", {"average": "macro"}, "Macro F1"),
           ("micro_f1", "f1", {"average": "micro"}, "Micro F1"))
SPLITS = (("eval", "dev"), ("test", "test"))
TASK = {"type": "text-classification", "name": "Text Classification"}


@dataclass
class CardFacts:
    """What a card says, read from the files of a run or an export (see `card_facts` helpers in callers)."""

    name: str                                   # the directory's name: the model-index name and the title
    model: Dict[str, Any]                       # the export manifest, or the spec's dict + its decoder's
    results: Dict[str, Any] = field(default_factory=dict)    # all_results.json
    record: Optional[Dict[str, Any]] = None     # run.json
    multirun: Optional[Dict[str, Any]] = None   # multirun.py's summary.json
    search: Optional[Dict[str, Any]] = None     # search.py's record of the search that chose the command
    export: Optional[Dict[str, Any]] = None     # an export's files and parity (the manifest), None for a run
    label_words: Optional[List[str]] = None     # in label order (an export's labels.json)

    @property
    def dataset_name(self) -> str:
        data = self.latest_command().get("data") or {}
        train = data.get("train") or next(iter(data.values()), None)
        return os.path.basename(os.path.dirname(train["path"])) if train else "custom"

    def latest_command(self) -> Dict[str, Any]:
        commands = (self.record or {}).get("commands") or []
        return commands[-1] if commands else {}


def metric_entries(results: Dict[str, Any], split: str) -> List[dict]:
    """The model-index metrics of one split (`eval` or `test`) that all_results.json has."""
    entries = []
    for key, hub_type, args, title in METRICS:
        value = results.get(f"{split}_{key}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            entry = {"type": hub_type, "value": round(float(value), 4), "name": f"{title} ({dict(SPLITS)[split]})"}
            if args:
                entry["args"] = dict(args)
            entries.append(entry)
    return entries


def front_matter(facts: CardFacts) -> Dict[str, Any]:
    """The YAML metadata (Hub rules: tests/reporting/test_card.py)."""
    task_type = facts.model.get("task_type") or "multi-class"
    tags = ["paddlenlp", "paddlepaddle", "p-tuning", "few-shot", task_type]
    if facts.export:
        tags.append("onnx")
    meta: Dict[str, Any] = {"library_name": "paddlenlp", "pipeline_tag": "text-classification", "language": ["zh"],
                            "tags": tags}
    results = []
    for split, shown in SPLITS:
        metrics = metric_entries(facts.results, split)
        if metrics:
            results.append({"task": dict(TASK), "dataset": {"type": facts.dataset_name, "name": facts.dataset_name,
                                                            "split": shown}, "metrics": metrics})
    if results:
        meta["metrics"] = sorted({m["type"] for r in results for m in r["metrics"]})
        meta["model-index"] = [{"name": facts.name, "results": results}]
    return meta


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def labels_section(facts: CardFacts) -> List[str]:
    labels = facts.model.get("labels") or []
    words = facts.label_words or facts.model.get("label_words") or [None] * len(labels)
    lines = ["## Labels", "", f"{len(labels)} labels, in the order of the model's outputs.", "",
             "| # | label | label word |", "|---|---|---|"]
    lines += [f"| {i} | {label} | {word or '–'} |" for i, (label, word) in enumerate(zip(labels, words))]
    return lines + [""]


def model_section(facts: CardFacts) -> List[str]:
    model = facts.model
    task_type = model.get("task_type") or "multi-class"
    lines = ["## Model", "",
             f"* base model: `{model.get('model_name_or_path') or 'unknown'}`; method: {model.get('method') or '–'}, "
             f"head: {model.get('head') or '–'}" + (" (zero-shot: the pretrained MLM head, untrained)"
                                                   if model.get("zero_shot") else ""),
             f"* task type: {task_type}; max_seq_length: {model.get('max_seq_length')} tokens",
             f"* template: `{json.dumps(model.get('template'), ensure_ascii=False)}`"]
    if task_type != "multi-class":
        thresholds = model.get("thresholds")
        lines.append(f"* thresholds: {'0.5 for every label' if thresholds is None else thresholds}"
                     + (f" (searched: {model['threshold_search']})" if model.get("threshold_search") else ""))
    long_text = model.get("long_text")
    if isinstance(long_text, dict) and long_text.get("mode") not in (None, "truncate"):
        lines.append(f"* long texts: {long_text['mode']} (stride {long_text.get('stride') or 'half a window'}, "
                     f"{long_text.get('aggregation')} over at most {long_text.get('max_windows')} windows): a text "
                     "longer than one input is read in several, and their probabilities combined")
    else:
        lines.append("* long texts: cut off after max_seq_length tokens (`--long_text truncate`)")
    temperature = model.get("temperature")
    lines.append(f"* temperature: {_fmt(temperature) if temperature is not None else '1 (not calibrated)'}")
    if model.get("reject_threshold") is not None:
        lines.append(f"* reject option: below {model['reject_threshold']} the answer is `{model.get('other_label')}`")
    if model.get("distillation"):
        lines.append(f"* distillation / self-training: `{json.dumps(model['distillation'], ensure_ascii=False)}`")
    return lines + [""]


def evaluation_section(facts: CardFacts) -> List[str]:
    results = facts.results
    lines = ["## Evaluation", ""]
    columns = [(key, title) for key, _, _, title in METRICS] + [("ece", "ECE (calibration error)")]
    columns = [(key, title) for key, title in columns if any(f"{split}_{key}" in results for split, _ in SPLITS)]
    rows = [f"| {shown} | " + " | ".join(_fmt(results.get(f"{split}_{key}")) for key, _ in columns) + " |"
            for split, shown in SPLITS if any(f"{split}_{key}" in results for key, _ in columns)]
    if rows:
        lines += ["| split | " + " | ".join(title for _, title in columns) + " |",
                  "|---|" + "---|" * len(columns)] + rows
    else:
        lines.append("No dev or test metrics were recorded for this model (train.py --do_eval / --do_predict).")
    if facts.multirun:
        lines += ["", "Over several runs (multirun.py; mean ± sample std, n runs):", ""]
        for key, stats in sorted((facts.multirun.get("metrics") or {}).items()):
            std = "–" if stats.get("std") is None else f"{stats['std']:.4f}"
            lines.append(f"* {key}: {stats['mean']:.4f} ± {std} (n={stats.get('n')})")
    return lines + [""]


def provenance_section(facts: CardFacts) -> List[str]:
    lines = ["## How it was made", ""]
    commands = (facts.record or {}).get("commands") or []
    if commands:
        lines += ["```bash"] + [c.get("command") or "# (an earlier command, not recorded)" for c in commands] + ["```", ""]
        data = commands[-1].get("data") or {}
        if data:
            lines += ["| data file | bytes | sha256 |", "|---|---|---|"]
            lines += [f"| {name} (`{info['path']}`) | {info['bytes']} | `{info['sha256']}` |"
                      for name, info in sorted(data.items())]
            lines.append("")
    else:
        lines += ["The command line is not known (no run.json beside the model).", ""]
    if facts.search:
        lines += [f"Chosen by a search: `{json.dumps(facts.search, ensure_ascii=False)}`", ""]
    return lines


def export_section(facts: CardFacts) -> List[str]:
    if not facts.export:
        return []
    export = facts.export
    onnx = export.get("onnx") or {}
    fusion = onnx.get("attention_fusion") or {}
    variants = [f"`{onnx[k]}` ({k}{', attention fused' if (fusion.get(k) or {}).get('graph') == 'fused' else ''})"
                for k in ("fp32", "fp16", "int8") if onnx.get(k)]
    checks = [f"{r.get('backend')}: max |Δ| {r.get('max_abs_diff'):.2g}"
              for r in (export.get("parity") or {}).get("results", []) if isinstance(r.get("max_abs_diff"), float)]
    return ["## Files", "", f"* ONNX: {', '.join(variants) or '–'}; opset {onnx.get('opset')}",
            f"* parity of the export against the trained model: {'; '.join(checks) or '–'}",
            "* every file's size and sha256: `manifest.json` (infer.py and serve.py verify them)",
            "* use: `python infer.py --model_path_prefix THIS_DIR --input_file texts.txt`, or `serve.py`", ""]


LIMITS = ("## Intended use and limits", "",
          "* Classifies Chinese texts into exactly the labels above; any other topic gets one of them anyway "
          "(a reject option, if listed above, is the only way to answer \"none\").",
          "* Trained on few examples: expect the metrics above to move by several points with another seed or "
          "another sample of the same size; the dev set is small and also chose the checkpoint.",
          "* A text longer than one input is read as \"long texts\" above says; with truncate, what lies past "
          "max_seq_length tokens is never seen.",
          "* Probabilities are as calibrated as the ECE above says; read them as scores unless it is small.", "")


def render_card(facts: CardFacts) -> str:
    """The whole README.md."""
    head = yaml.safe_dump(front_matter(facts), allow_unicode=True, sort_keys=False)
    what = ("a classifier on the [CLS] vector (fine-tuning baseline)" if facts.model.get("method") == "finetune"
            else "a prompt (P-tuning) and a verbalizer over its label words on the masked-LM head")
    title = [f"# {facts.name}", "", f"A few-shot text classifier: `{facts.model.get('model_name_or_path')}` with "
             f"{what}.", ""]
    body = (title + labels_section(facts) + model_section(facts) + evaluation_section(facts)
            + provenance_section(facts) + export_section(facts) + list(LIMITS))
    return (f"---\n{head}---\n{MARKER}: it is rewritten with the model; remove this line to keep your edits -->\n\n"
            + "\n".join(body))


def write_card(directory: str, facts: CardFacts, file_name: str = "README.md") -> Optional[str]:
    """Write the card unless a README.md of someone else's is there (then say so and keep it)."""
    path = os.path.join(directory, file_name)
    if os.path.exists(path) and not is_tool_card(path):
        logger.warning("%s is not a model card of this tool: kept as it is, no card written", path)
        return None
    write_text_atomic(path, render_card(facts))
    return path
