"""What ensemble.py runs: check everything, lock the output directory, export, evaluate."""
from __future__ import annotations

import logging
import os
from typing import List

from ..errors import UserError
from ..files import write_json_atomic
from .plan import EnsemblePlan, label_difference, plan_ensemble

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
EXPORT_DIR = "export"
# What ensemble.py writes into its --output_dir (replaced only with --overwrite_output_dir).
OUTPUTS = (EXPORT_DIR, ENSEMBLE_FILE, "eval_results.json", "test_results.json", "test_predictions.tsv",
           "data_predictions.tsv")


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
                        f"({label_difference(dataset.labels.labels, plan.labels)})", dataset.labels.path)
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
        plan, manifest = export(args, plan, dataset, threshold_search)
        export_dir = os.path.join(args.output_dir, EXPORT_DIR)
        summary = {"members": [os.path.abspath(m.path) for m in plan.members], "views": plan.num_views,
                   "task_type": plan.decoder.task_type, "thresholds": manifest.get("thresholds"),
                   "threshold_search": plan.threshold_search, "export": os.path.abspath(export_dir),
                   "parity": manifest["parity"], "metrics": {}}
        write_evaluation(args, plan, dataset, export_dir, summary)
        write_json_atomic(os.path.join(args.output_dir, ENSEMBLE_FILE), summary)
    return summary


def export(args, plan: EnsemblePlan, dataset, threshold_search):
    """Load the members, search thresholds if asked, write OUTPUT_DIR/export; `(plan, manifest)`."""
    import paddle

    from ..choices import Quantize
    from ..model import compat
    from . import graph
    from .evaluate import search_ensemble_thresholds
    from .export import export_ensemble

    compat.apply()
    with paddle.utils.unique_name.guard():
        models = graph.load_models(plan)
        if threshold_search:
            plan = search_ensemble_thresholds(plan, models, dataset.dev, threshold_search, args.threshold)
            logger.info("--threshold_search %s on dev.txt: thresholds %s", threshold_search,
                        ", ".join(f"{t:.2f}" for t in plan.decoder.thresholds))
        examples = (dataset.dev or dataset.test or dataset.data) if dataset else None
        manifest = export_ensemble(plan, os.path.join(args.output_dir, EXPORT_DIR), examples,
                                   export_type=args.export_type, export_fp16=args.export_fp16,
                                   quantize=args.quantize == Quantize.INT8.value, opset=args.opset,
                                   tolerance=args.tolerance, models=models, fuse_attention=args.fuse_attention)
    return plan, manifest


def write_evaluation(args, plan: EnsemblePlan, dataset, export_dir: str, summary: dict) -> None:
    """--do_eval / --do_predict: metrics beside the members' (into `summary`) and the predictions files."""
    from ..deploy.predictions import write_predictions
    from .evaluate import evaluate, export_outputs

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
