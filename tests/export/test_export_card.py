"""utils/export/card.py and utils/rundir/record.py on a real run: every run and export directory carries a
model card whose numbers are the run's, whose command line is the one that ran, whose data hashes are the
files'; the card is documentation (not in the manifest), so editing it breaks nothing."""
import json
import os
import shlex

import yaml
from huggingface_hub import ModelCard

import infer
from utils.errors import run_cli
from utils.files import sha256_file
from utils.rundir.names import CARD_FILE, RUN_RECORD_FILE, is_tool_card


def front(path):
    with open(path, encoding="utf-8") as fp:
        return yaml.safe_load(fp.read().split("---\n")[1])


def metrics_of(meta):
    return {(r["dataset"]["split"], m["type"], (m.get("args") or {}).get("average")): m["value"]
            for model in meta["model-index"] for r in model["results"] for m in r["metrics"]}


def test_the_run_and_its_export_carry_cards_with_the_runs_own_numbers(trained):
    data_dir, out = trained
    with open(os.path.join(out, "all_results.json"), encoding="utf-8") as fp:
        results = json.load(fp)
    for directory in (out, os.path.join(out, "export")):
        path = os.path.join(directory, CARD_FILE)
        assert is_tool_card(path)
        meta = front(path)
        assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "paddlenlp"
        got = metrics_of(meta)
        assert got[("dev", "accuracy", None)] == round(results["eval_accuracy"], 4)
        assert got[("test", "f1", "macro")] == round(results["test_macro_f1"], 4)
        assert ModelCard.load(path).data.eval_results  # huggingface_hub reads it
        expected = "out/export" if directory.endswith("export") else "out"  # the final name, not the temporary one
        assert meta["model-index"][0]["name"] == expected
    with open(os.path.join(out, "export", "manifest.json"), encoding="utf-8") as fp:
        assert CARD_FILE not in json.load(fp)["files"]  # documentation: not verified, free to edit


def test_the_record_holds_the_command_that_ran_and_the_data_it_read(trained):
    data_dir, out = trained
    with open(os.path.join(out, RUN_RECORD_FILE), encoding="utf-8") as fp:
        record = json.load(fp)
    [command] = record["commands"]
    argv = shlex.split(command["command"])
    assert argv[:2] == ["python", "train.py"] and argv[2:] == command["argv"]
    assert argv[argv.index("--data_dir") + 1] == data_dir
    for name in ("train", "dev", "test", "label"):
        info = command["data"][name]
        assert info["sha256"] == sha256_file(info["path"]) and info["bytes"] == os.path.getsize(info["path"])
    card = open(os.path.join(out, "export", CARD_FILE), encoding="utf-8").read()
    assert command["command"] in card and command["data"]["train"]["sha256"] in card


def test_an_edited_card_does_not_stop_the_export_from_loading(trained, tmp_path, capsys):
    import shutil

    data_dir, out = trained
    export = str(tmp_path / "export")
    shutil.copytree(os.path.join(out, "export"), export)
    with open(os.path.join(export, CARD_FILE), "a", encoding="utf-8") as fp:
        fp.write("\nMy own notes.\n")
    (tmp_path / "in.txt").write_text("苹果\n", encoding="utf-8")
    code = run_cli(infer.main, ["--model_path_prefix", export, "--input_file", str(tmp_path / "in.txt"),
                                "--output_file", str(tmp_path / "out.tsv")])
    assert code == 0, capsys.readouterr().err
