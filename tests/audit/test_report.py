"""utils/audit/report.py: label_issues.tsv (pairs too), the HTML page (drawn by a real headless browser), Label
Studio review tasks and config, oof_probabilities.tsv, audit.json."""
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import read_tsv

from utils.audit import report
from utils.audit.folds import Example, Pool
from utils.audit.issues import Issue
from utils.dataset.labels import LabelSet


def pool_of(lines, label_words, task_type="multi-class", path="/data/train.txt"):
    labels = LabelSet(label_words=label_words, path="/data/label.txt", lines={k: i for i, k in enumerate(label_words, 1)})
    examples = []
    for number, (texts, given) in enumerate(lines, 1):
        example = {"text_a": texts[0], **({"text_b": texts[1]} if len(texts) > 1 else {})}
        example["labels"] = (labels.label_to_id[given[0]] if task_type == "multi-class" else
                             [1.0 if label in given else 0.0 for label in labels.labels])
        examples.append(Example(path, number, "\t".join([*texts, ",".join(given)]), example))
    return Pool(labels, examples, [], task_type, pair=len(lines[0][0]) > 1)


SUMMARY = {"examples": 3, "folds": 3, "cleanlab": {"cleanlab": "2.9.0"}}


def test_a_pair_task_writes_both_texts_and_every_number(tmp_path):
    pool = pool_of([(("他赢了", "比赛"), ["体育"]), (("手机", "新款"), ["体育"]), (("跑步", "早上"), ["体育"])],
                   {"体育": "体育", "科技": "科技"})
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    issue = Issue(1, [0], [1], 0.2, [0.2], [0.8])
    paths = report.write_report(str(tmp_path), pool, [issue], probs, SUMMARY)
    header, rows = read_tsv(paths[report.ISSUES_TSV])
    assert header == ["line", "text_a", "text_b", "given", "suggested", "score", "p_given", "p_suggested"]
    assert rows == [["train.txt:2", "手机", "新款", "体育", "科技", "0.200000", "0.200000", "0.800000"]]
    header, rows = read_tsv(paths[report.OOF_TSV])
    assert header == ["line", "given", "体育", "科技"] and rows[2] == ["train.txt:3", "体育", "0.700000", "0.300000"]
    tasks = json.load(open(paths[report.REVIEW_TASKS], encoding="utf-8"))
    assert tasks[0]["data"]["text"] == "手机" and tasks[0]["data"]["text_b"] == "新款"
    assert tasks[0]["data"]["line"] == "train.txt:2" and tasks[0]["data"]["label_quality"] == 0.2
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["体育"]}   # what the data says now
    prediction = tasks[0]["predictions"][0]
    assert prediction["result"][0]["value"] == {"choices": ["科技"]} and prediction["score"] == 0.8
    config = ET.parse(paths[report.REVIEW_CONFIG]).getroot()
    assert [t.get("value") for t in config.findall("Text")] == ["$text", "$text_b"]
    assert json.load(open(paths[report.SUMMARY], encoding="utf-8")) == SUMMARY


def test_hierarchical_review_tasks_name_paths_and_the_config_is_a_taxonomy(tmp_path):
    words = {"科技": "科技", "科技##手机": "手机", "体育": "体育"}
    pool = pool_of([(("新手机",), ["体育"])] * 3, words, "hierarchical")
    labels = pool.labels.labels   # 体育, 科技, 科技##手机
    issue = Issue(0, [labels.index("体育")], [labels.index("科技"), labels.index("科技##手机")], 0.1, [0.1],
                  [0.9, 0.85])
    paths = report.write_report(str(tmp_path), pool, [issue], np.full((3, 3), 0.5), SUMMARY)
    _, rows = read_tsv(paths[report.ISSUES_TSV])
    assert rows[0][2:] == ["体育", "科技,科技##手机", "0.100000", "0.100000", "0.900000,0.850000"]
    task = json.load(open(paths[report.REVIEW_TASKS], encoding="utf-8"))[0]
    assert task["predictions"][0]["result"][0]["value"] == {"taxonomy": [["科技", "手机"]]}
    assert task["predictions"][0]["score"] == 0.85   # the least sure suggested label
    assert ET.parse(paths[report.REVIEW_CONFIG]).getroot().find("Taxonomy") is not None


def test_no_issue_still_writes_every_file_with_headers(tmp_path):
    pool = pool_of([(("a",), ["x"]), (("b",), ["y"])], {"x": "x", "y": "y"})
    paths = report.write_report(str(tmp_path), pool, [], np.array([[0.9, 0.1], [0.1, 0.9]]), SUMMARY)
    assert read_tsv(paths[report.ISSUES_TSV]) == (["line", "text", "given", "suggested", "score", "p_given",
                                                   "p_suggested"], [])
    assert json.load(open(paths[report.REVIEW_TASKS], encoding="utf-8")) == []
    assert sorted(os.listdir(tmp_path)) == sorted(report.OUTPUT_FILES)


def find_browser():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_the_html_page_renders_in_a_headless_browser(tmp_path):
    """A real browser draws the table: the given labels on red, the suggestions on green, Chinese text drawn
    with the page's own embedded font (the explanation page's style)."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium, or `make dev` installs it)")
    pool = pool_of([((f"这句话里有苹果{i}",), ["香蕉"]) for i in range(6)], {"苹果": "苹果", "香蕉": "香蕉"})
    issues = [Issue(i, [1], [0], 0.05 * i, [0.05 * i], [1 - 0.05 * i]) for i in range(6)]
    paths = report.write_report(str(tmp_path), pool, issues, np.full((6, 2), 0.5), SUMMARY)
    page = open(paths[report.ISSUES_HTML], encoding="utf-8").read()
    assert "@font-face" in page and "base64," in page and page.count("<tr>") == 7
    shot = tmp_path / "label_issues.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,600", "file://" + paths[report.ISSUES_HTML]],
                   check=True, timeout=120, capture_output=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (600, 1000, 3) and (pixels.std(axis=(0, 1)) > 5).all()
    red, green, blue = pixels[:, :, 0], pixels[:, :, 1], pixels[:, :, 2]
    assert ((red > green + 20) & (red > blue + 20)).sum() > 50     # the given labels' red marks
    assert ((green > red + 20) & (green > blue + 10)).sum() > 50   # the suggestions' green marks
    assert (pixels.sum(axis=2) < 200).sum() > 500                  # dark text
