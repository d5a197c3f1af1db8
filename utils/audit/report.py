"""What audit.py writes into its --output_dir, every file atomically (docs/how-to/label-audit.md):

    label_issues.tsv                 one suspect a row, most suspect first: line (file:line), text (text_a,
                                     text_b for pairs), given, suggested, score (cleanlab's label quality:
                                     lower is more suspect), p_given, p_suggested (out-of-fold probabilities;
                                     label sets: one per label, comma-separated, as the labels are)
    label_issues.html                the same table in the explanation page's style (utils/reporting/explain.py)
    label_issues.label-studio.json   review tasks: the given label as the task's annotation (what the data
                                     says now), the suggestion as a prediction scored by its probability
    label_issues.label-studio.xml    the labelling config those tasks use (utils/annotation/label_studio.py)
    oof_probabilities.tsv            every audited example: line, given, then each label's out-of-fold probability
    audit.json                       folds, repeats, counts, cleanlab's settings, each fold's model-selection
                                     metrics, the out-of-fold accuracy (and each repeat's)
"""
from __future__ import annotations

import html
import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from ..annotation import label_studio
from ..files import write_json_atomic, write_text_atomic
from ..reporting.explain import page_head
from ..task.decoding import LABEL_SEPARATOR
from .folds import Pool
from .issues import Issue

ISSUES_TSV = "label_issues.tsv"
ISSUES_HTML = "label_issues.html"
REVIEW_TASKS = "label_issues.label-studio.json"
REVIEW_CONFIG = "label_issues.label-studio.xml"
OOF_TSV = "oof_probabilities.tsv"
SUMMARY = "audit.json"
OUTPUT_FILES = (ISSUES_TSV, ISSUES_HTML, REVIEW_TASKS, REVIEW_CONFIG, OOF_TSV, SUMMARY)
MODEL_VERSION = "audit.py out-of-fold suggestion"


def names(pool: Pool, ids: Sequence[int]) -> str:
    return LABEL_SEPARATOR.join(pool.labels.labels[i] for i in ids)


def numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:.6f}" for v in values)


def issue_rows(pool: Pool, issues: Sequence[Issue]) -> List[Dict[str, Any]]:
    """The issues as records: what every output shows of them."""
    rows = []
    for rank, issue in enumerate(issues, 1):
        example = pool.examples[issue.index]
        rows.append({"rank": rank, "line": example.where, "texts": example.texts,
                     "given": names(pool, issue.given), "suggested": names(pool, issue.suggested),
                     "score": issue.score, "p_given": issue.p_given, "p_suggested": issue.p_suggested})
    return rows


def issues_tsv(pool: Pool, rows: Sequence[Dict[str, Any]]) -> str:
    header = ["line", *(["text_a", "text_b"] if pool.pair else ["text"]), "given", "suggested", "score", "p_given",
              "p_suggested"]
    lines = ["\t".join(header)]
    for row in rows:
        lines.append("\t".join([row["line"], *row["texts"], row["given"], row["suggested"], f"{row['score']:.6f}",
                                numbers(row["p_given"]), numbers(row["p_suggested"])]))
    return "\n".join(lines) + "\n"


def oof_tsv(pool: Pool, probs: np.ndarray) -> str:
    lines = ["\t".join(["line", "given", *pool.labels.labels])]
    for example, given, row in zip(pool.examples, pool.given(), probs):
        lines.append("\t".join([example.where, names(pool, given), *(f"{p:.6f}" for p in row)]))
    return "\n".join(lines) + "\n"


CSS = ("table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:0.4em;text-align:left;"
       "vertical-align:top}.text{font-size:1.2em}.given{background:rgba(210,40,40,0.25);border-radius:3px}"
       ".suggested{background:rgba(0,150,60,0.3);border-radius:3px}.num{font-variant-numeric:tabular-nums}")


def repeated(summary: Dict[str, Any]) -> str:
    repeats, rounds = summary.get("repeats", 1), len(summary.get("rounds") or [1])
    text = f" run {repeats} times (each example's probabilities averaged)" if repeats > 1 else ""
    if rounds > 1:
        text += (f", round {rounds} of {rounds}: trained without the "
                 f"{summary['rounds'][-1]['trained_without']} examples round {rounds - 1} flagged")
    return text


def issues_html(pool: Pool, rows: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> str:
    """One self-contained page: the suspects in a table, most suspect first."""
    title = f"Label issues: {len(rows)} suspect label(s) of {summary['examples']} audited"
    page_text = title + "".join("".join(r["texts"]) + r["given"] + r["suggested"] for r in rows)
    parts = [page_head(title, page_text, CSS),
             f"<p class='meta'>Out-of-fold probabilities from {summary['folds']} folds{repeated(summary)}, "
             "confident learning "
             f"(cleanlab {html.escape(summary['cleanlab']['cleanlab'])}). <span class='given'>given</span> is the "
             "label in the data, <span class='suggested'>suggested</span> what the models trained without this "
             "text say; score: cleanlab's label quality (lower is more suspect). Probabilities are out of fold.</p>",
             "<table><tr><th>#</th><th>line</th><th>text</th><th>given</th><th>suggested</th><th>score</th>"
             "<th>p(given)</th><th>p(suggested)</th></tr>"]
    for row in rows:
        text = " <b>|</b> ".join(html.escape(t) for t in row["texts"])
        parts.append(f"<tr><td>{row['rank']}</td><td>{html.escape(row['line'])}</td><td class='text'>{text}</td>"
                     f"<td><span class='given'>{html.escape(row['given']) or '∅'}</span></td>"
                     f"<td><span class='suggested'>{html.escape(row['suggested']) or '∅'}</span></td>"
                     f"<td class='num'>{row['score']:.3f}</td><td class='num'>{numbers(row['p_given'])[:60]}</td>"
                     f"<td class='num'>{numbers(row['p_suggested'])[:60]}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def review_tasks(pool: Pool, rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Label Studio tasks: the given label as the annotation to review, the suggestion as a prediction
    (score: the suggested labels' lowest out-of-fold probability); the line, given label, suggestion and
    cleanlab's score as data fields."""
    task_type = str(pool.task_type)
    tasks = []
    for row in rows:
        given = row["given"].split(LABEL_SEPARATOR) if row["given"] else []
        suggested = row["suggested"].split(LABEL_SEPARATOR) if row["suggested"] else []
        text = tuple(row["texts"]) if pool.pair else row["texts"][0]
        prediction = {"model_version": MODEL_VERSION, "score": round(min(row["p_suggested"], default=0.0), 6),
                      "result": label_studio.result(suggested, task_type)}
        meta = {"line": row["line"], "given": row["given"], "suggested": row["suggested"],
                "label_quality": round(row["score"], 6), "rank": row["rank"]}
        tasks.append(label_studio.task(text, [prediction], meta,
                                       annotations=[{"result": label_studio.result(given, task_type)}]))
    return tasks


def write_report(output_dir: str, pool: Pool, issues: Sequence[Issue], probs: np.ndarray,
                 summary: Dict[str, Any]) -> Dict[str, str]:
    """Every output file; returns their paths by name. audit.json is written last."""
    rows = issue_rows(pool, issues)
    paths = {name: os.path.join(output_dir, name) for name in OUTPUT_FILES}
    write_text_atomic(paths[OOF_TSV], oof_tsv(pool, probs))
    write_text_atomic(paths[ISSUES_TSV], issues_tsv(pool, rows))
    write_text_atomic(paths[ISSUES_HTML], issues_html(pool, rows, summary))
    write_text_atomic(paths[REVIEW_TASKS], json.dumps(review_tasks(pool, rows), ensure_ascii=False, indent=1) + "\n")
    write_text_atomic(paths[REVIEW_CONFIG], label_studio.labeling_config(pool.labels.labels, str(pool.task_type),
                                                                         pool.pair))
    write_json_atomic(paths[SUMMARY], summary)
    return paths
