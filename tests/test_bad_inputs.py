"""The catalogue of bad inputs: each stops train.py/export.py/infer.py with one paragraph naming the
file and line (where there is one), exit code 2, no traceback, and nothing written or lost."""
import json
import os
import shutil

import pytest

import export as export_cli
import infer
import train
import helpers
from conftest import resign
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT

LABELS = "apple==红色\nbanana==黄色\ngrape==紫色\n"
GOOD = "苹果很好吃\tapple\n香蕉是黄的\tbanana\n葡萄\tgrape\n"


def dataset(root, **files):
    """A small valid dataset, with `files` (name -> text or bytes) replaced; None deletes a file."""
    data = root / "data"
    data.mkdir()
    contents = {"label.txt": LABELS, "train.txt": GOOD, "dev.txt": GOOD, "test.txt": GOOD, **files}
    for name, text in contents.items():
        if text is None:
            continue
        if isinstance(text, bytes):
            (data / name).write_bytes(text)
        else:
            (data / name).write_text(text, encoding="utf-8")
    return str(data)


# (case id, files to change, extra flags, expected text in the message, file name + line expected in it)
TRAIN_CASES = [
    ("missing data_dir", None, [], "data directory not found", None),
    ("missing train.txt", {"train.txt": None}, [], "train file not found", "train.txt"),
    ("missing label.txt", {"label.txt": None}, [], "label file not found", "label.txt"),
    ("empty train.txt", {"train.txt": "\n\n"}, [], "train file has no examples", "train.txt"),
    ("line without tab", {"train.txt": GOOD + "没有标签的一行\n"}, [], "found no tab", "train.txt:4"),
    ("too many tabs", {"train.txt": "甲\t乙\t丙\tapple\n"}, [], "found 3 tabs", "train.txt:1"),
    ("label not in label.txt", {"dev.txt": GOOD + "西瓜\twatermelon\n"}, [], "'watermelon' is not in label.txt",
     "dev.txt:4"),
    ("duplicate label", {"label.txt": LABELS + "apple==苹果\n"}, [], "duplicate label 'apple'", "label.txt:4"),
    ("empty label word", {"label.txt": LABELS + "melon==\n"}, [], "empty label word", "label.txt:4"),
    ("non-UTF-8 bytes", {"train.txt": GOOD.encode("utf-8") + "坏编码\tapple\n".encode("gbk")}, [],
     "not valid UTF-8", "train.txt:4"),
    ("empty text", {"train.txt": GOOD + "\tapple\n"}, [], "empty text", "train.txt:4"),
    ("pair layout mismatch", {"dev.txt": "甲\t乙\tapple\n"}, [], "as on the first line of train.txt", "dev.txt:1"),
    ("prompt syntax error", {}, ["--prompt", "{'text': 'text_a'}{'mask'"], "has no matching", "--prompt"),
    ("prompt calls a function", {}, ["--prompt", "{'text': __import__('os').getcwd()}{'mask'}"],
     "no expressions or calls", "--prompt"),
    ("unknown prompt key", {}, ["--prompt", "{'soft': 'x', 'encoderr': 'lstm'}{'text': 'text_a'}{'mask'}"],
     "unknown key 'encoderr'", "--prompt"),
    ("prompt without mask", {}, ["--prompt", "{'soft': '水果'}{'text': 'text_a'}"], "found 0", "--prompt"),
    ("prompt with two masks", {}, ["--prompt", "{'text': 'text_a'}{'mask'}和{'mask'}"], "found 2", "--prompt"),
    ("unequal label words, manual verbalizer", {"label.txt": "apple==红\nbanana==黄色\ngrape==紫色\n"},
     ["--verbalizer", "manual"], "same number of tokens", "label.txt"),
    ("max_seq_length shorter than the prompt", {}, ["--max_seq_length", "8"], "the prompt alone takes",
     "--max_seq_length"),
    ("unknown soft encoder", {}, ["--soft_encoder", "gru"], "must be one of lstm, mlp or none", "--soft_encoder"),
    ("gpu on the CPU build", {}, ["--device", "gpu"], "CPU build", "--device"),  # a CPU build is simulated
    ("fp16 on CPU", {}, ["--fp16", "--device", "cpu"], "needs --device gpu", "--fp16"),
    # A built-in model name offline: test_train.py runs train.py on it (the CLI end to end), test_plm.py
    # the unreachable-host probe.
    ("missing checkpoint", {}, ["--resume_from_checkpoint", "/nonexistent/checkpoint-10"],
     "checkpoint directory not found", "/nonexistent/checkpoint-10"),
    ("missing checkpoint, with a label-set flag", {}, ["--resume_from_checkpoint", "/nonexistent/ckpt", "--threshold",
                                                      "0.3"], "checkpoint directory not found", "/nonexistent/ckpt"),
    ("unknown flag", {}, ["--no_such_flag", "1"], "unknown flag(s) ['--no_such_flag', '1']", "train.py"),
]


def run_train(capsys, argv):
    code = run_cli(train.main, argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, files, extra, message, where", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input(case, files, extra, message, where, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PTUNING_OFFLINE", "1")
    if case == "gpu on the CPU build":  # on every machine, CUDA build or not: nothing may start on a GPU
        import paddle

        monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    data_dir = str(tmp_path / "missing") if files is None else dataset(tmp_path, **files)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", str(out),
            "--prompt", PROMPT, "--do_train", "--do_eval", "--max_steps", "2", "--max_seq_length", "40", *extra]
    code, err = run_train(capsys, argv)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err
    if where:
        assert where in err
    if out.exists():
        assert not (out / "train_results.json").exists() and not list(out.glob("checkpoint-*"))


ML_LABELS = "体育\n体育##比赛==比赛\n财经\n财经##股市==股市\n"
ML_GOOD = "球赛\t体育,体育##比赛\n股市\t财经,财经##股市\n股市和球赛\t体育,财经\n"
# (case id, task type, files to change, expected text in the message, file name + line expected in it)
LABEL_SET_CASES = [
    ("empty label between commas", "multi-label", {"train.txt": ML_GOOD + "球\t体育,,财经\n"},
     "empty label between commas in '体育,,财经'", "train.txt:4"),
    ("trailing comma", "hierarchical", {"dev.txt": "球\t体育,\n"}, "empty label between commas", "dev.txt:1"),
    ("unknown label in a set", "multi-label", {"dev.txt": ML_GOOD + "西瓜\t体育,水果\n"},
     "label '水果' is not in label.txt", "dev.txt:4"),
    ("full-width comma", "multi-label", {"train.txt": "球\t体育，财经\n"}, "not `，`", "train.txt:1"),
    ("label twice on a line", "hierarchical", {"train.txt": ML_GOOD + "球\t体育,体育##比赛,体育\n"},
     "label '体育' appears twice", "train.txt:4"),
    ("no label after the tab", "multi-label", {"train.txt": ML_GOOD + "球\t\n"}, "no label after the tab",
     "train.txt:4"),
    ("child without its parent in label.txt", "hierarchical", {"label.txt": ML_LABELS + "科技##手机==手机\n"},
     "the parent path '科技' of '科技##手机' is not in label.txt", "label.txt:5"),
    ("empty level in a label path", "hierarchical", {"label.txt": ML_LABELS + "科技\n科技####手机\n"},
     "has an empty level", "label.txt:6"),
    ("comma in a label name", "multi-label", {"label.txt": ML_LABELS + "科技,数码\n"}, "contains `,`",
     "label.txt:5"),
    ("duplicate label", "hierarchical", {"label.txt": ML_LABELS + "体育==运动\n"}, "duplicate label '体育'",
     "label.txt:5"),
    ("several labels without --task_type", "multi-class", {"label.txt": "体育\n财经\n", "train.txt": "球\t体育,财经\n"},
     "several labels on one line need --task_type multi-label", "train.txt:1"),
    ("missing tab (the existing checks apply)", "multi-label", {"train.txt": ML_GOOD + "没有标签的一行\n"},
     "found no tab", "train.txt:4"),
]


@pytest.mark.parametrize("case, task_type, files, message, where", LABEL_SET_CASES, ids=[c[0] for c in LABEL_SET_CASES])
def test_label_set_bad_input(case, task_type, files, message, where, tiny_model_dir, tmp_path, capsys, no_model_loads):
    contents = {"label.txt": ML_LABELS, "train.txt": ML_GOOD, "dev.txt": ML_GOOD, "test.txt": ML_GOOD, **files}
    data_dir = dataset(tmp_path, **contents)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", str(out),
            "--prompt", PROMPT, "--do_train", "--do_eval", "--do_predict", "--max_steps", "2", "--max_seq_length", "40",
            "--task_type", task_type]
    code, err = run_train(capsys, argv)
    assert code == 2, err
    assert err.startswith(f"error: {data_dir}/{where}: ") and "Traceback" not in err and err.count("\n") <= 2, err
    assert message in err, err
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".ptuning.lock"]


def test_nothing_to_do(tmp_path, capsys):
    code, err = run_train(capsys, ["--data_dir", str(tmp_path)])
    assert code == 2 and "nothing to do" in err


def test_blank_lines_bom_crlf_are_fine_and_long_texts_keep_the_prompt(tiny_model_dir, tmp_path, capsys):
    """Not errors: a BOM, CRLF, blank lines; a text far over max_seq_length is cut, the prompt and mask stay."""
    long_text = "苹果" + "的" * 500
    data_dir = dataset(tmp_path, **{"train.txt": ("\ufeff" + GOOD.replace("\n", "\r\n") + "\r\n\r\n"
                                                  + long_text + "\tapple\r\n").encode("utf-8")})
    out = tmp_path / "out"
    code, err = run_train(capsys, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir",
                                   str(out), "--prompt", PROMPT, "--do_train", "--do_predict", "--max_steps", "2",
                                   "--max_seq_length", "24", "--logging_steps", "1"])
    assert code == 0, err
    from utils.dataset.labels import read_label_file
    from utils.model.assembly import rebuild_from_checkpoint

    model, tokenizer, _ = rebuild_from_checkpoint(str(out))
    encoded = model.template({"text_a": long_text})
    assert len(encoded["input_ids"]) == 24
    soft = encoded["soft_token_ids"]
    n_prompt = len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert soft[1:1 + n_prompt] == list(range(1, n_prompt + 1))  # the whole soft prompt survives
    assert encoded["input_ids"][-2] == tokenizer.mask_token_id  # and the mask, before [SEP]
    assert read_label_file(os.path.join(data_dir, "label.txt")).labels == ["apple", "banana", "grape"]


def test_existing_output_dir_is_never_overwritten(trained, tmp_path, capsys):
    data_dir, out = trained
    def state():  # (the lock file is bookkeeping: a refused run may take the lock to look)
        return {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out) if name != ".ptuning.lock"}

    before = state()
    code, err = run_train(capsys, ["--data_dir", data_dir, "--output_dir", out, "--do_train", "--do_eval",
                                   "--model_name_or_path", "unused", "--max_steps", "1"])
    assert code == 2 and "--overwrite_output_dir" in err
    assert state() == before


def test_corrupt_checkpoint(trained, tmp_path, capsys):
    data_dir, out = trained
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(out, checkpoint, ignore=shutil.ignore_patterns("checkpoint-*", "export"))
    with open(checkpoint / "model_state.pdparams", "r+b") as fp:
        fp.truncate(1000)
    code, err = run_train(capsys, ["--do_predict", "--data_dir", data_dir, "--output_dir", str(tmp_path / "p"),
                                   "--resume_from_checkpoint", str(checkpoint)])
    assert code == 2 and "truncated, damaged or edited" in err and "model_state.pdparams" in err
    (checkpoint / "checkpoint_complete.json").unlink()  # without the marker, loading itself must fail clearly
    code, err = run_train(capsys, ["--do_predict", "--data_dir", data_dir, "--output_dir", str(tmp_path / "p"),
                                   "--resume_from_checkpoint", str(checkpoint)])
    assert code == 2 and "corrupt or truncated" in err and "model_state.pdparams" in err
    (checkpoint / "ptuning_config.json").write_text("{not json", encoding="utf-8")
    code, err = run_train(capsys, ["--do_predict", "--data_dir", data_dir, "--output_dir", str(tmp_path / "p"),
                                   "--resume_from_checkpoint", str(checkpoint)])
    assert code == 2 and "ptuning_config.json:1: checkpoint config is corrupt" in err
    code, err = run_cli(export_cli.main, ["--resume_from_checkpoint", str(checkpoint), "--output_dir",
                                          str(tmp_path / "e")]), capsys.readouterr().err
    assert code == 2 and "corrupt" in err and not (tmp_path / "e").exists()


def edit_json(name, change, sign=False):
    """Damage an export's JSON file: `change(obj)` returns the new content; `sign` records the
    result in manifest.json (a hand-edited export), so only the content check can catch it."""

    def damage(export_dir):
        path = os.path.join(export_dir, name)
        with open(path, encoding="utf-8") as fp:
            obj = json.load(fp)
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(change(obj), fp)
        if sign:
            resign(export_dir, name)
    return damage


def replace(obj, **fields):
    return {**obj, **fields}


def without(obj, key):
    return {k: v for k, v in obj.items() if k != key}


def flip_byte(name, where=0.5):
    """Same size, one byte changed (in model.onnx: a weight; the model still loads)."""

    def damage(export_dir):
        helpers.flip_byte(os.path.join(export_dir, name), where)
    return damage


def truncate(name):
    def damage(export_dir):
        with open(os.path.join(export_dir, name), "r+b") as fp:
            fp.truncate(os.path.getsize(os.path.join(export_dir, name)) // 2)
    return damage


SHA_DIFFERS = "sha256 differs from manifest.json (modified or corrupt); export again"
MANIFEST_CASES = [
    ("manifest is a list", edit_json("manifest.json", lambda m: []), "manifest.json: is a JSON list, not an object"),
    ("manifest files is a list", edit_json("manifest.json", lambda m: replace(m, files=[])),
     "manifest.json: `files` is missing or not an object"),
    ("manifest lacks files", edit_json("manifest.json", lambda m: without(m, "files")),
     "manifest.json: `files` is missing"),
    ("manifest file entry lacks sha256", edit_json("manifest.json", lambda m: replace(
        m, files={**m["files"], "model.onnx": {"bytes": m["files"]["model.onnx"]["bytes"]}})),
     "manifest.json: `files` entry 'model.onnx' is not {bytes: int, sha256: 64 hex digits}"),
    ("manifest onnx is a string", edit_json("manifest.json", lambda m: replace(m, onnx="model.onnx")),
     "manifest.json: `onnx` is missing or has no `fp32` model file name"),
    ("manifest points outside the export", edit_json("manifest.json", lambda m: replace(
        m, onnx={**m["onnx"], "fp32": "../model.onnx"})), "manifest.json: `onnx` is missing or has no `fp32`"),
    ("manifest max_seq_length is text", edit_json("manifest.json", lambda m: replace(m, max_seq_length="abc")),
     "manifest.json: `max_seq_length` is 'abc', not a positive integer"),
    ("manifest lacks max_seq_length", edit_json("manifest.json", lambda m: without(m, "max_seq_length")),
     "manifest.json: `max_seq_length` is None"),
    ("manifest task_type unknown", edit_json("manifest.json", lambda m: replace(m, task_type="multilabel")),
     "manifest.json: `task_type` is 'multilabel', not one of multi-class, multi-label, hierarchical"),
    ("manifest thresholds one short", edit_json("manifest.json", lambda m: replace(
        m, task_type="multi-label", thresholds=[0.5, 0.5])),
     "manifest.json: `thresholds` must be a list of 3 numbers in [0, 1] (one per label)"),
    ("manifest hierarchical decoding unknown", edit_json("manifest.json", lambda m: replace(
        m, task_type="hierarchical", hierarchical_decoding="top-down")),
     "manifest.json: `hierarchical_decoding` is 'top-down', not consistent or flat"),
    ("manifest does not list vocab.txt", edit_json("manifest.json", lambda m: replace(
        m, files=without(m["files"], "vocab.txt"))), "vocab.txt is not listed in manifest.json"),
    ("model.onnx: one byte flipped, same size", flip_byte("model.onnx"), "model.onnx: " + SHA_DIFFERS),
    ("vocab.txt: one byte changed, same size", flip_byte("vocab.txt", 0.9), "vocab.txt: " + SHA_DIFFERS),
    ("preprocess.json: edited, same size", flip_byte("preprocess.json", 0.99), "preprocess.json: " + SHA_DIFFERS),
    ("labels.json truncated", truncate("labels.json"), "labels.json: has"),
    ("labels.json is an object (signed)", edit_json("labels.json", lambda e: {"labels": e}, sign=True),
     "labels.json: is not a list of {id, label, word} entries"),
    ("labels.json ids not 0..n-1 (signed)", edit_json("labels.json", lambda e: [
        replace(x, id=x["id"] + 1) for x in e], sign=True), "labels.json: is not a list of {id, label, word}"),
    ("labels.json lists fewer labels than the model (signed)", edit_json("labels.json", lambda e: e[:2], sign=True),
     "the ONNX model outputs 3 logits, labels.json lists 2 labels"),
    ("preprocess.json parts is a string (signed)", edit_json("preprocess.json", lambda c: replace(c, parts="x"),
                                                              sign=True),
     "preprocess.json: `parts` is missing or not a non-empty list"),
    ("preprocess.json vocab outside the export (signed)", edit_json("preprocess.json", lambda c: replace(
        c, tokenizer={**c["tokenizer"], "vocab_file": "/etc/passwd"}), sign=True),
     "preprocess.json: `tokenizer.vocab_file` is missing or not a file name in the export"),
    ("preprocess.json max_seq_length is text (signed)", edit_json("preprocess.json", lambda c: replace(
        c, max_seq_length="40"), sign=True), "preprocess.json: `max_seq_length` is '40', not a positive integer"),
]
INFER_CASES = [
    ("no manifest", lambda d: os.remove(os.path.join(d, "manifest.json")), "manifest.json missing"),
    ("no vocab", lambda d: os.remove(os.path.join(d, "vocab.txt")), "vocab.txt is missing"),
    ("corrupt labels", lambda d: open(os.path.join(d, "labels.json"), "w").write("[1, 2"), "labels.json"),
    ("corrupt preprocess", lambda d: open(os.path.join(d, "preprocess.json"), "w").write("{"), "preprocess.json"),
] + MANIFEST_CASES


@pytest.mark.parametrize("case, damage, message", INFER_CASES, ids=[c[0] for c in INFER_CASES])
def test_infer_bad_export(case, damage, message, trained, tmp_path, capsys):
    export_dir = tmp_path / "export"
    shutil.copytree(os.path.join(trained[1], "export"), export_dir)
    damage(str(export_dir))
    code = run_cli(infer.main, ["--model_path_prefix", str(export_dir), "--data_dir", trained[0], "--output_file",
                                str(tmp_path / "o.tsv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.tsv").exists()


@pytest.mark.parametrize("script, argv, flag", [
    ("infer", ["--model_path_prefix", "x", "--device", "tpu"], "--device"),
    ("infer", [], "--model_path_prefix"),
    ("multirun", ["--seeds", "one"], "--seeds"),
])
def test_argparse_errors_are_one_paragraph_too(script, argv, flag, capsys):
    import multirun

    main = {"infer": infer.main, "multirun": multirun.main}[script]
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and flag in err and "usage:" not in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["--debug", "PTUNING_DEBUG=1"])
def test_debug_shows_the_traceback_instead_of_the_one_paragraph(how, tmp_path):
    """utils/errors.py's promise: the one-paragraph error hides the traceback unless --debug or
    PTUNING_DEBUG=1 asks for it (then the UserError propagates and Python prints it)."""
    import subprocess
    import sys

    from conftest import ROOT

    argv = [sys.executable, "infer.py", "--model_path_prefix", str(tmp_path / "nowhere"), "--input_file",
            str(tmp_path / "none.txt")]
    env = {k: v for k, v in os.environ.items() if k != "PTUNING_DEBUG"}
    plain = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**env, "PTUNING_DEBUG": "0"})
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    assert "(run with --debug or PTUNING_DEBUG=1 for a traceback)" in plain.stderr
    if how == "--debug":
        debug = subprocess.run(argv + ["--debug"], cwd=ROOT, capture_output=True, text=True, env=env)
    else:
        debug = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**env, "PTUNING_DEBUG": "1"})
    assert debug.returncode == 1, debug.stderr
    assert debug.stderr.startswith("Traceback (most recent call last):"), debug.stderr
    assert "utils.errors.UserError: " in debug.stderr and "input file not found" in debug.stderr
    assert "run with --debug" not in debug.stderr


def test_train_takes_debug_and_raises_the_user_error(tiny_model_dir, tmp_path, no_model_loads):
    """--debug is no train.py flag (the dataclass parser would refuse it): run_cli strips it."""
    from utils import console
    from utils.errors import UserError

    data_dir = dataset(tmp_path, **{"train.txt": GOOD + "没有标签的一行\n"})
    try:
        with pytest.raises(UserError) as error:
            run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir",
                                 str(tmp_path / "out"), "--do_train", "--debug"])
    finally:
        console.setup(False)  # (the console of the tests that follow is not in debug mode)
    assert error.value.line == 4 and error.value.path.endswith("train.txt")
