"""annotate.py import (utils/annotation/importing.py and its readers): what lands where, the
inferred task type, the policies, and every hostile export refused in one paragraph naming the
file and the task id (Label Studio) or line (doccano), with nothing written."""
import json
import os

import pytest

import annotate
from utils.annotation import label_studio as ls
from utils.dataset.folder import load_dataset_dir
from utils.errors import run_cli


def choice(*labels, cancelled=False, when="", who=1, from_name="label"):
    result = [dict(r, from_name=from_name) for r in ls.result(list(labels))] if labels else []
    return {"result": result, "was_cancelled": cancelled, "updated_at": when, "completed_by": who}


def taxonomy(*paths):
    return {"result": [{"from_name": "label", "to_name": "text", "type": "taxonomy",
                        "value": {"taxonomy": [list(p) for p in paths]}}]}


def task(ident, text, *annotations, **data):
    return {"id": ident, "data": {"text": text, **data}, "annotations": list(annotations)}


def fruit_tasks(n=10):
    """`n` tasks per label of three, one annotation each."""
    out = []
    for i in range(n):
        for label in ("apple", "banana", "grape"):
            out.append(task(len(out) + 1, f"{label} text {i}", choice(label)))
    return out


def write(tmp_path, content, name="export.json"):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in content), encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return str(path)


def run_import(capsys, path, out, *flags, fmt="label-studio"):
    code = run_cli(annotate.main, ["import", "--format", fmt, "--input", path, "--output_dir", str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(path):
    with open(path, encoding="utf-8") as fp:
        return fp.read().splitlines()


def test_labelled_tasks_are_split_and_unannotated_ones_go_to_data_txt_as_the_console_says(tmp_path, capsys):
    tasks = fruit_tasks() + [task(99, "nobody labelled me"), task(100, "skipped", choice(cancelled=True))]
    code, out, err = run_import(capsys, write(tmp_path, tasks), tmp_path / "data")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["train"], summary["dev"], summary["test"], summary["data"]) == (24, 3, 3, 1)
    assert "1 tasks without an annotation: data.txt" in err and "every annotator skipped: left out" in err
    assert lines(tmp_path / "data" / "data.txt") == ["nobody labelled me"]
    assert lines(tmp_path / "data" / "label.txt") == ["apple", "banana", "grape"]
    folder = load_dataset_dir(str(tmp_path / "data"), need_test=True)
    assert len(folder.train) == 24 and summary["splits"] == "stratified by label"
    for split in (folder.dev, folder.test):
        assert sorted(folder.gold_names(split)) == ["apple", "banana", "grape"]


def test_the_task_type_is_inferred_from_taxonomy_and_several_choices(tmp_path, capsys):
    hierarchical = [task(i, f"t{i}", taxonomy(["科技", "手机"] if i % 2 else ["体育"])) for i in range(6)]
    code, out, err = run_import(capsys, write(tmp_path, hierarchical), tmp_path / "h", "--splits", "1", "0", "0")
    assert code == 0, err
    assert json.loads(out)["task_type"] == "hierarchical"
    assert lines(tmp_path / "h" / "label.txt") == ["体育", "科技", "科技##手机"]
    assert "t1\t科技,科技##手机" in lines(tmp_path / "h" / "train.txt")
    multi = [task(1, "a", choice("x", "y")), task(2, "b", choice("x")), task(3, "c", choice("y"))]
    code, out, err = run_import(capsys, write(tmp_path, multi, "m.json"), tmp_path / "m", "--splits", "1", "0", "0")
    assert code == 0 and json.loads(out)["task_type"] == "multi-label", err
    assert lines(tmp_path / "m" / "train.txt") == ["a\tx,y", "b\tx", "c\ty"]


@pytest.mark.parametrize("policy, expected", [("majority", "banana"), ("latest", "apple"), ("drop", None)])
def test_disagreeing_annotators_follow_the_conflict_policy_and_agreement_is_no_conflict(tmp_path, capsys, policy,
                                                                                      expected):
    tasks = fruit_tasks(4) + [
        task(50, "disputed", choice("banana", when="2024-01-01", who=1), choice("banana", when="2024-01-02", who=2),
             choice("apple", when="2024-01-03", who=3)),
        task(51, "agreed", choice("grape", who=1), choice("grape", who=2))]
    code, out, err = run_import(capsys, write(tmp_path, tasks), tmp_path / "d", "--conflict", policy,
                                "--splits", "1", "0", "0")
    assert code == 0, err
    train = lines(tmp_path / "d" / "train.txt")
    assert "agreed\tgrape" in train
    assert (f"disputed\t{expected}" in train) if expected else not any(t.startswith("disputed") for t in train)
    assert json.loads(out)["conflicts"] == 1


def test_a_text_in_several_tasks_is_kept_once_and_never_in_two_files(tmp_path, capsys):
    tasks = fruit_tasks(10) + [task(90, "apple text 0", choice("apple")), task(91, "apple text 1")]
    code, out, err = run_import(capsys, write(tmp_path, tasks), tmp_path / "d")
    assert code == 0, err
    texts = [line.split("\t")[0] for name in ("train.txt", "dev.txt", "test.txt", "data.txt")
             if os.path.exists(tmp_path / "d" / name) for line in lines(tmp_path / "d" / name)]
    assert len(texts) == len(set(texts)) == 30 and json.loads(out)["duplicates_merged"] == 2


def test_json_min_exports_and_doccano_lines_import_like_the_full_export(tmp_path, capsys):
    rows = [{"id": i, "text": f"text {i}", "label": "ab"[i % 2], "annotator": 1} for i in range(8)]
    rows.append({"id": 8, "text": "multi", "label": {"choices": ["a", "b"]}})
    code, out, err = run_import(capsys, write(tmp_path, rows), tmp_path / "min", "--splits", "1", "0", "0")
    assert code == 0, err
    assert "multi\ta,b" in lines(tmp_path / "min" / "train.txt")
    doccano = [{"id": i, "text": f"text {i}", "label": ["A##B" if i % 2 else "C"]} for i in range(8)]
    doccano.append({"id": 8, "text": "unlabelled", "label": []})
    code, out, err = run_import(capsys, write(tmp_path, doccano, "d.jsonl"), tmp_path / "doc", "--splits", "1", "0",
                                "0", fmt="doccano")
    assert code == 0, err
    assert json.loads(out)["task_type"] == "hierarchical"
    assert "text 1\tA,A##B" in lines(tmp_path / "doc" / "train.txt")
    assert lines(tmp_path / "doc" / "data.txt") == ["unlabelled"]


def test_pairs_keep_text_b_and_html_and_line_breaks_are_cleaned_only_when_asked(tmp_path, capsys):
    tasks = [task(i, f"甲{i}", choice("ab"[i % 2]), text_b=f"乙{i}") for i in range(6)]
    code, _, err = run_import(capsys, write(tmp_path, tasks), tmp_path / "p", "--splits", "1", "0", "0")
    assert code == 0, err
    assert lines(tmp_path / "p" / "train.txt")[0] == "甲0\t乙0\ta"
    messy = [task(1, "<p>苹果</p><b>好</b> &amp; 甜", choice("a")), task(2, "两行\n文本\t制表", choice("b"))]
    code, _, err = run_import(capsys, write(tmp_path, messy, "messy.json"), tmp_path / "c", "--strip_html",
                              "--normalize_whitespace", "--splits", "1", "0", "0")
    assert code == 0, err
    assert lines(tmp_path / "c" / "train.txt") == ["苹果 好 & 甜\ta", "两行 文本 制表\tb"]


HOSTILE = [
    # (name, content (file or tasks), flags, words of the error, where: a task id or a line)
    ("not json", "this is not json", (), "is not JSON", ":1: "),
    ("truncated", json.dumps(fruit_tasks(2))[:-40], (), "truncated", "export.json:"),
    ("jsonl as label-studio", '{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["y"]}\n', (),
     "use --format doccano", ":2: "),
    ("label-studio as doccano", fruit_tasks(2), ("--format", "doccano"), "use --format label-studio", ":1: "),
    ("not utf-8", "[{\"id\": 1, \"data\": {\"text\": \"".encode() + "苹果".encode("gbk") + b"\"}}]", (),
     "not valid UTF-8", ":1: "),
    ("empty text", fruit_tasks(2) + [task(7, "   ", choice("apple"))], (), "`text` is empty", "task 7"),
    ("no text field", fruit_tasks(2) + [{"id": 8, "data": {"html": "<p>a</p>"}, "annotations": []}], (),
     "--text_key", "task 8"),
    ("html", fruit_tasks(2) + [task(9, "<div>苹果</div>", choice("apple"))], (), "HTML markup", "task 9"),
    ("tab in text", fruit_tasks(2) + [task(10, "苹\t果", choice("apple"))], (), "--normalize_whitespace", "task 10"),
    ("newline in text", fruit_tasks(2) + [task(11, "苹\n果", choice("apple"))], (), "line break", "task 11"),
    ("lone surrogate", "[" + json.dumps(task(12, "x", choice("a")))[:-1].replace('"x"', '"\\ud800"') + "}]", (),
     "lone surrogate", "task 12"),
    ("disagreement", fruit_tasks(2) + [task(13, "?", choice("apple"), choice("grape"))], (),
     "annotations disagree", "task 13"),
    ("duplicates disagree", fruit_tasks(2) + [task(14, "apple text 0", choice("grape"))], (),
     "across duplicates", "task 14"),
    ("label not in label.txt", fruit_tasks(2) + [task(15, "x", choice("melon"))], ("--label_file", "LABELS"),
     "'melon' is not in", "task 15"),
    ("comma in a label set", [task(16, "x", choice("a,b", "c")), task(17, "y", choice("c"))], (),
     "contains `,`", "task 16"),
    ("empty level", [task(18, "x", choice("A##", "B")), task(19, "y", choice("B"))], (), "empty or padded level",
     "task 18"),
    ("ner labels", fruit_tasks(2) + [task(20, "x", {"result": [{"from_name": "ner", "to_name": "text",
                                                                  "type": "labels", "value": {"start": 0, "end": 1,
                                                                                              "labels": ["PER"]}}]})],
     (), "span labels (NER)", "task 20"),
    ("two controls", fruit_tasks(2) + [task(21, "x", choice("apple", from_name="other"))], (), "--from_name",
     "task 21"),
    ("several choices as multi-class", fruit_tasks(2) + [task(22, "x", choice("apple", "grape"))],
     ("--task_type", "multi-class"), "takes one", "task 22"),
    ("taxonomy as multi-label", [task(23, "x", taxonomy(["A", "B"])), task(24, "y", taxonomy(["C"]))],
     ("--task_type", "multi-label"), "needs --task_type hierarchical", "task 23"),
    ("cancelled refused", fruit_tasks(2) + [task(25, "x", choice(cancelled=True))], ("--cancelled", "error"),
     "skipped (cancelled)", "task 25"),
    ("unlabeled refused", fruit_tasks(2) + [task(26, "x")], ("--unlabeled", "error"), "has no annotation", "task 26"),
    ("pairs mixed with texts", fruit_tasks(2) + [task(27, "x", choice("apple"), text_b="y")], (), "second text",
     "task 27"),
    ("one label only", [task(28, "x", choice("a")), task(29, "y", choice("a"))], (), "a classifier needs two",
     "annotate.py import"),
    ("label ids in doccano", [{"id": 30, "text": "x", "label": [3]}], ("--format", "doccano"), "label id",
     ":1: id 30"),
    ("doccano spans", [{"id": 31, "text": "x", "label": [[0, 1, "PER"]]}], ("--format", "doccano"), "spans",
     ":1: id 31"),
    ("doccano truncated", '{"id": 1, "text": "a", "label": ["x"]}\n{"id": 2, "text": "b", "lab', ("--format", "doccano"),
     "truncated", ":2: "),
    ("existing output dir", fruit_tasks(2), ("EXISTING",), "--overwrite_output_dir", "--output_dir"),
    ("nested too deeply", "[" * 100_000 + "]" * 100_000, (), "nests its JSON too deeply", "export.json: "),
    ("doccano line nested too deeply", '{"id": 1, "text": "a", "label": ["x"]}\n' + "[" * 100_000 + "]" * 100_000,
     ("--format", "doccano"), "nests its JSON too deeply", ":2: "),
    ("a huge label", [task(32, "x", choice("a" * 100_000)), task(33, "y", choice("a" * 100_000))], (),
     "characters left out", "annotate.py import"),
]


@pytest.mark.parametrize("name, content, flags, words, where", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_every_hostile_export_is_one_paragraph_naming_the_task_and_writes_nothing(tmp_path, capsys, name, content,
                                                                                 flags, words, where):
    fmt = "label-studio"
    flags = list(flags)
    if "--format" in flags:
        fmt = flags.pop(flags.index("--format") + 1)
        flags.remove("--format")
    jsonl = fmt == "doccano" and not isinstance(content, str) and isinstance(content[0], dict) and "data" not in \
        content[0]
    path = write(tmp_path, content, "export.jsonl" if jsonl else "export.json")
    out = tmp_path / "out"
    if "LABELS" in flags:
        (tmp_path / "label.txt").write_text("apple\nbanana\ngrape\n", encoding="utf-8")
        flags[flags.index("LABELS")] = str(tmp_path / "label.txt")
    if "EXISTING" in flags:
        flags.remove("EXISTING")
        out.mkdir()
        (out / "keep.txt").write_text("mine", encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    code, stdout, err = run_import(capsys, path, out, *flags, fmt=fmt)
    assert code == 2, err
    assert err.startswith("error: ") and words in err and where in err, err
    assert err.count("\n") == 2 and "Traceback" not in err and len(err) < 3000, err
    assert sorted(os.listdir(tmp_path)) == before and stdout == ""
    if "keep.txt" in before or os.path.exists(out):
        assert os.listdir(out) == ["keep.txt"]


def test_a_failed_import_over_an_existing_folder_leaves_it_as_it_was(tmp_path, capsys):
    out = tmp_path / "data"
    code, _, err = run_import(capsys, write(tmp_path, fruit_tasks()), out)
    assert code == 0, err
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    bad = fruit_tasks() + [task(77, "<b>x</b>", choice("apple"))]
    code, _, err = run_import(capsys, write(tmp_path, bad, "bad.json"), out, "--overwrite_output_dir")
    assert code == 2 and "task 77" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "data", "export.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_import_that_loses_the_race_for_its_folder_refuses_and_loses_nothing(tmp_path, capsys, monkeypatch,
                                                                              overwrite):
    """Two imports into one folder: the other one writes it after this one's flags were checked. Held
    deterministically: the other import's folder appears while this one splits its tasks."""
    from utils.annotation import importing

    out = tmp_path / "data"
    real_splits = importing.assign_splits

    def the_other_import_writes_first(*args, **kwargs):
        out.mkdir()
        (out / "train.txt").write_text("the other import's\tapple\n", encoding="utf-8")
        return real_splits(*args, **kwargs)

    monkeypatch.setattr(importing, "assign_splits", the_other_import_writes_first)
    code, stdout, err = run_import(capsys, write(tmp_path, fruit_tasks()), out,
                                   *(["--overwrite_output_dir"] if overwrite else []))
    if overwrite:  # asked to replace the folder: replaced as a whole
        assert code == 0, err
        assert "the other import's" not in (out / "train.txt").read_text(encoding="utf-8")
    else:
        assert code == 2 and "another process" in err and "--overwrite_output_dir" in err, err
        assert os.listdir(out) == ["train.txt"]
        assert (out / "train.txt").read_text(encoding="utf-8") == "the other import's\tapple\n"
    assert sorted(os.listdir(tmp_path)) == ["data", "export.json"]  # no temp folder, no lock file left
