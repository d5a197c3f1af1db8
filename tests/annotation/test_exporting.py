"""annotate.py export without a model (utils/annotation/exporting.py): labelled files become
annotated tasks, streamed, and the round trip through import is lossless for every task type and pairs."""
import json
import os
import xml.etree.ElementTree as ET

import pytest

import annotate
from utils.dataset.folder import load_dataset_dir
from utils.errors import run_cli
from utils.testing.synthetic import write_keyword_dataset, write_multilabel_keyword_dataset

from conftest import EXAMPLE_DATA

SPLITS = ("train", "dev", "test")


def pair_dataset(path):
    """The keyword task as sentence pairs: each text with a reversed copy."""
    source = write_keyword_dataset(str(path) + "-single")
    os.makedirs(path)
    for name in os.listdir(source):
        with open(os.path.join(source, name), encoding="utf-8") as fp:
            rows = [line.rstrip("\n").split("\t") for line in fp if line.strip()]
        with open(os.path.join(path, name), "w", encoding="utf-8") as fp:
            for row in rows:
                fp.write("\t".join(row if name == "label.txt" else [row[0], row[0][::-1], *row[1:]]) + "\n")
    return str(path)


DATASETS = {
    "multi-class": lambda p: write_keyword_dataset(str(p)),
    "multi-label": lambda p: write_multilabel_keyword_dataset(str(p)),
    "hierarchical": lambda p: os.path.join(os.path.dirname(EXAMPLE_DATA), "hierarchical_example"),
    "pairs": pair_dataset,
}


def examples(data_dir, task_type):
    folder = load_dataset_dir(data_dir, need_test=True, task_type=task_type)
    labelled = set()
    for split in SPLITS:
        rows = getattr(folder, split) or []
        for row, gold in zip(rows, folder.gold_names(rows)):
            labelled.add((row["text_a"], row.get("text_b"), gold))
    unlabeled = {(row["text_a"], row.get("text_b")) for row in folder.data or []}
    return labelled, unlabeled


def run(capsys, *argv):
    code = run_cli(annotate.main, list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("fmt", ["label-studio", "doccano"])
@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_import_of_the_export_of_a_folder_gives_the_folder_back_up_to_the_split(tmp_path, capsys, kind, fmt):
    source = DATASETS[kind](tmp_path / "source")
    task_type = "multi-class" if kind == "pairs" else kind
    out = str(tmp_path / ("tasks.json" if fmt == "label-studio" else "tasks.jsonl"))
    summary = run(capsys, "export", "--format", fmt, "--data_dir", source, "--output", out, "--task_type", task_type)
    assert summary["tasks"] == summary["annotated"] + len(examples(source, task_type)[1])
    copy = str(tmp_path / "copy")
    run(capsys, "import", "--format", fmt, "--input", out, "--output_dir", copy, "--label_file",
        os.path.join(source, "label.txt"), "--task_type", task_type, "--seed", "7")
    assert examples(copy, task_type) == examples(source, task_type)
    with open(os.path.join(source, "label.txt"), "rb") as a, open(os.path.join(copy, "label.txt"), "rb") as b:
        assert a.read() == b.read()


def original_tasks(kind):
    """Label Studio tasks of one kind, with what each should import as: `{text: labels}` (None: unlabelled)."""
    from utils.annotation import label_studio as ls

    rows = {}
    for i in range(30):
        if kind == "multi-class":
            labels = ["apple", "banana", "grape"][i % 3:i % 3 + 1]
        elif kind == "multi-label":
            labels = [["apple"], ["apple", "grape"], ["banana"]][i % 3]
        else:
            labels = [["科技", "科技##手机"], ["体育"], ["科技", "科技##电脑"]][i % 3]
        rows[f"text {i}"] = labels
    rows["nobody"] = None
    task_type = kind
    tasks = [dict(ls.task(text), id=i + 1, annotations=[{"result": ls.result(labels, task_type)}] if labels else [])
             for i, (text, labels) in enumerate(rows.items())]
    return tasks, {text: frozenset(labels) if labels else None for text, labels in rows.items()}


@pytest.mark.parametrize("fmt", ["label-studio", "doccano"])
@pytest.mark.parametrize("kind", ["multi-class", "multi-label", "hierarchical"])
def test_the_export_of_an_import_keeps_every_text_and_label(tmp_path, capsys, kind, fmt):
    from utils.annotation.importing import read_records
    from utils.annotation.records import ReadOptions

    tasks, expected = original_tasks(kind)
    path = tmp_path / "original.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    folder = str(tmp_path / "folder")
    summary = run(capsys, "import", "--format", "label-studio", "--input", str(path), "--output_dir", folder)
    assert summary["task_type"] == kind
    out = str(tmp_path / "again")
    run(capsys, "export", "--format", fmt, "--data_dir", folder, "--output", out, "--task_type", kind)
    records = read_records(fmt, out, ReadOptions())
    got = {}
    for record in records:
        labels = set().union(*(v.labels for v in record.votes)) if record.votes else None
        if labels and kind == "hierarchical":
            labels = {p for label in labels for p in ("##".join(label.split("##")[:i + 1])
                                                      for i in range(label.count("##") + 1))}
        got[record.text] = frozenset(labels) if labels else None
    assert got == expected


def test_the_labelling_config_names_every_label_and_the_pair_text(tmp_path, capsys):
    source = pair_dataset(tmp_path / "pairs")
    out = str(tmp_path / "tasks.json")
    run(capsys, "export", "--format", "label-studio", "--input_file", os.path.join(source, "data.txt"),
        "--label_file", os.path.join(source, "label.txt"), "--output", out)
    config = ET.parse(out + ".config.xml").getroot()
    assert [c.get("value") for c in config.find("Choices")] == ["apple", "banana", "grape"]
    assert [t.get("value") for t in config.findall("Text")] == ["$text", "$text_b"]
    with open(out, encoding="utf-8") as fp:
        tasks = json.load(fp)
    assert all(set(t["data"]) == {"text", "text_b"} and "annotations" not in t for t in tasks)


def test_tasks_are_written_as_the_input_streams_in_chunks(tmp_path, capsys, monkeypatch):
    """No chunk larger than --chunk_size is ever handed on, and the file is a valid JSON list."""
    from utils.annotation import exporting

    source = write_keyword_dataset(str(tmp_path / "kw"))
    seen = []
    real = exporting.make_tasks

    def spy(chunk, *args, **kwargs):
        seen.append(len(chunk))
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(exporting, "make_tasks", spy)
    out = str(tmp_path / "tasks.json")
    run(capsys, "export", "--format", "label-studio", "--input_file", os.path.join(source, "train.txt"),
        "--data_dir", source, "--output", out, "--chunk_size", "10")
    assert max(seen) == 10 and sum(seen) == 96
    with open(out, encoding="utf-8") as fp:
        assert len(json.load(fp)) == 96
