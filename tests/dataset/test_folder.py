import pytest

from utils.dataset.folder import load_dataset_dir, read_examples
from utils.errors import UserError


def make_dir(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path)


LABELS = "pos==好\nneg==坏\n"


def test_single_sentence_dataset(tmp_path):
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": "很好\tpos\n很差\tneg\n", "dev.txt": "不错\tpos\n",
                            "test.txt": "糟糕\tneg\n", "data.txt": "还行\n\n一般\n"})
    ds = load_dataset_dir(d, need_test=True)
    ids = ds.labels.label_to_id
    assert ds.train == [{"text_a": "很好", "labels": ids["pos"]}, {"text_a": "很差", "labels": ids["neg"]}]
    assert ds.test == [{"text_a": "糟糕", "labels": ids["neg"]}]
    assert ds.data == [{"text_a": "还行"}, {"text_a": "一般"}]
    assert not ds.is_pair


def test_sentence_pairs(tmp_path):
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": "甲\t乙\tpos\n", "dev.txt": "丙\t丁\tneg\n",
                            "data.txt": "戊\t己\n"})
    ds = load_dataset_dir(d)
    assert ds.is_pair
    assert ds.train[0] == {"text_a": "甲", "text_b": "乙", "labels": ds.labels.label_to_id["pos"]}
    assert ds.data == [{"text_a": "戊", "text_b": "己"}]
    assert ds.test is None


@pytest.mark.parametrize("train, line, message", [
    ("好\tpos\n没有标签\n", 2, "found no tab"),
    ("好\tpos\n甲\t乙\t丙\tpos\n", 2, "found 3 tabs"),
    ("好\tpos\n甲\t乙\tpos\n", 2, "expected `text<TAB>label` (as on the first line of train.txt)"),
    ("好\tpos\n坏\tunknown\n", 2, "label 'unknown' is not in label.txt (known: neg, pos)"),
    ("好\tpos\n\tneg\n", 2, "empty text"),
])
def test_bad_lines(tmp_path, train, line, message):
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": train, "dev.txt": "好\tpos\n"})
    with pytest.raises(UserError) as info:
        load_dataset_dir(d)
    assert info.value.path.endswith("train.txt") and info.value.line == line
    assert message in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        load_dataset_dir(str(tmp_path / "nope"))
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": "\n\n", "dev.txt": "好\tpos\n"})
    with pytest.raises(UserError, match="train file has no examples"):
        load_dataset_dir(d)
    (tmp_path / "train.txt").write_text("好\tpos\n", encoding="utf-8")
    with pytest.raises(UserError, match="test file not found"):
        load_dataset_dir(d, need_test=True)


def test_dev_layout_must_match_train(tmp_path):
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": "甲\t乙\tpos\n", "dev.txt": "好\tpos\n"})
    with pytest.raises(UserError) as info:
        load_dataset_dir(d)
    assert info.value.path.endswith("dev.txt") and "text_a<TAB>text_b<TAB>label" in str(info.value)


def test_crlf_bom_and_data_txt_with_tab(tmp_path):
    (tmp_path / "x.txt").write_bytes("\ufeff好\tpos\r\n坏\tneg\r\n".encode("utf-8"))
    assert read_examples(str(tmp_path / "x.txt"), labelled=True, label_to_id={"pos": 0, "neg": 1}) == [
        {"text_a": "好", "labels": 0}, {"text_a": "坏", "labels": 1}]
    d = make_dir(tmp_path, {"label.txt": LABELS, "train.txt": "好\tpos\n", "dev.txt": "好\tpos\n",
                            "data.txt": "文本\tpos\n"})
    with pytest.raises(UserError, match="one text per line"):
        load_dataset_dir(d)


def test_multi_label_and_hierarchical_datasets(tmp_path):
    d = make_dir(tmp_path, {"label.txt": "体育\n体育##比赛==比赛\n财经\n", "train.txt": "球赛\t体育##比赛\n股市和球赛\t财经,体育\n",
                            "dev.txt": "好\t体育,体育##比赛\n", "test.txt": "糟糕\t财经\n"})
    flat = load_dataset_dir(d, need_test=True, task_type="multi-label")
    assert flat.labels.labels == ["体育", "体育##比赛", "财经"]
    assert [e["labels"] for e in flat.train] == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    tree = load_dataset_dir(d, need_test=True, task_type="hierarchical")
    assert [e["labels"] for e in tree.train] == [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert tree.gold_names(tree.train) == ["体育,体育##比赛", "体育,财经"]  # output order, ancestors included
    assert tree.task_type == "hierarchical"


def test_a_bad_label_column_names_its_file_and_line_for_every_split(tmp_path):
    d = make_dir(tmp_path, {"label.txt": "a\nb\n", "train.txt": "好\ta,b\n", "dev.txt": "好\ta\n坏\ta,,b\n"})
    with pytest.raises(UserError) as info:
        load_dataset_dir(d, task_type="multi-label")
    assert info.value.path.endswith("dev.txt") and info.value.line == 2 and "empty label between commas" in str(info.value)


def test_sentence_pairs_with_label_sets(tmp_path):
    d = make_dir(tmp_path, {"label.txt": "a\nb\n", "train.txt": "甲\t乙\ta,b\n", "dev.txt": "丙\t丁\tb\n",
                            "data.txt": "戊\t己\n"})
    ds = load_dataset_dir(d, task_type="multi-label")
    assert ds.is_pair and ds.train == [{"text_a": "甲", "text_b": "乙", "labels": [1.0, 1.0]}]


# -- dev.txt: optional for training alone, named where a flag reads it --

def without_dev(data_dir):
    import os

    os.remove(os.path.join(data_dir, "dev.txt"))
    return data_dir


def test_training_without_dev_txt_works_end_to_end(tiny_model_dir, keyword_data, tmp_path):
    """--do_train (with --do_predict and --do_export) needs no dev.txt, as upstream reads it for --do_eval:
    the model is trained, saved, predicts test.txt and is exported (its parity texts from test.txt)."""
    import os

    import train
    from conftest import FAST
    from utils.errors import run_cli
    from utils.testing.synthetic import PROMPT

    data = without_dev(keyword_data)
    out = tmp_path / "out"
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data, "--output_dir", str(out),
                                "--prompt", PROMPT, "--do_train", "--do_predict", "--do_export", "--max_steps", "4",
                                *FAST]) == 0
    for name in ("model_state.pdparams", "checkpoint_complete.json", "train_results.json", "test_results.json",
                 "test_predictions.tsv", os.path.join("export", "manifest.json")):
        assert (out / name).is_file(), name
    assert not (out / "eval_results.json").exists()


@pytest.mark.parametrize("flags, named", [
    (["--do_eval"], "--do_eval"),
    (["--evaluation_strategy", "steps", "--eval_steps", "2"], "--evaluation_strategy steps"),
    (["--evaluation_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end", "true"],
     "--load_best_model_at_end"),
    (["--calibrate"], "--calibrate"),
    (["--task_type", "multi_label", "--threshold_search", "global"], "--threshold_search"),
])
def test_a_flag_that_reads_dev_txt_is_refused_without_it_naming_the_flag_and_the_file(flags, named, tiny_model_dir,
                                                                                       tmp_path, capsys,
                                                                                       monkeypatch):
    import os

    import train
    import utils.model.plm
    from utils.errors import run_cli
    from utils.testing.synthetic import write_keyword_dataset, write_multilabel_keyword_dataset

    monkeypatch.setattr(utils.model.plm, "load_plm", lambda *a, **k: pytest.fail("a model was loaded"))
    write = write_multilabel_keyword_dataset if "--task_type" in flags else write_keyword_dataset
    data = without_dev(write(str(tmp_path / "data")))
    out = tmp_path / "out"
    code = run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data, "--output_dir", str(out),
                                "--do_train", "--max_steps", "4", *flags])
    err = capsys.readouterr().err
    dev = os.path.join(data, "dev.txt")
    assert code == 2 and err.startswith(f"error: {dev}: dev file not found") and named in err, err
    assert "Traceback" not in err and not out.exists()
