"""A trial's value, folders and train.py flags; runs reported one by one so a pruner can stop it."""
import json
import os

import pytest

from conftest import FAST
from utils.search.objective import InvalidConfiguration, TrialSetup, objective_value, prepare_trial, run_trial
from utils.search.space import LABEL_WORDS
from utils.testing.synthetic import PROMPT
from utils.training.multirun import without_flag


def test_the_value_is_mean_minus_sample_std():
    assert objective_value([0.9, 0.7])["value"] == pytest.approx(0.8 - 0.1414213562)
    assert objective_value([0.8])["value"] == 0.8  # one run: no spread to subtract
    assert objective_value([1.0, 1.0])["value"] == 1.0


def setup_for(tmp_path, model, data_dir, seeds=(1, 2)):
    flags = ["--model_name_or_path", model, "--data_dir", data_dir, "--prompt", PROMPT, "--do_train", "--do_eval",
             "--max_steps", "4", *without_flag(FAST, "--seed")]
    return TrialSetup(str(tmp_path / "search"), flags, list(seeds), None, None, None, data_dir, "eval_accuracy")


def test_a_trial_with_label_words_trains_on_its_own_label_file(tmp_path, tiny_model_dir, keyword_data):
    setup = setup_for(tmp_path, tiny_model_dir, keyword_data)
    words = {"apple": "苹果", "banana": "香蕉", "grape": "葡萄"}
    runs, flags = prepare_trial(setup, 3, {"soft_encoder": "mlp", LABEL_WORDS: json.dumps(words)})
    data = os.path.join(setup.output_dir, "trials", "3", "data")
    assert [r.output_dir for r in runs] == [os.path.join(setup.output_dir, "trials", "3", "runs", n)
                                            for n in ("seed1", "seed2")]
    assert flags[-2:] == ["--data_dir", data] and flags.count("--data_dir") == 1
    assert "--soft_encoder" in flags and flags[flags.index("--soft_encoder") + 1] == "mlp"
    with open(os.path.join(data, "label.txt"), encoding="utf-8") as fp:
        assert fp.read() == "apple==苹果\nbanana==香蕉\ngrape==葡萄\n"
    with open(os.path.join(keyword_data, "label.txt"), encoding="utf-8") as fp:
        assert "苹果" not in fp.read()  # the user's folder is never touched


def test_a_combination_train_py_refuses_is_not_run(tmp_path, tiny_model_dir, keyword_data, no_model_loads):
    setup = setup_for(tmp_path, tiny_model_dir, keyword_data)
    with pytest.raises(InvalidConfiguration, match="--freeze_plm"):
        prepare_trial(setup, 0, {"freeze_plm": True, "method": "finetune"})


def test_a_run_below_the_median_stops_the_trial_after_it(tmp_path, tiny_model_dir, keyword_data):
    """The executor is the caller's: here a stand-in that writes what train.py would, no training."""
    setup = setup_for(tmp_path, tiny_model_dir, keyword_data, seeds=(1, 2, 3))
    executed, reported = [], []

    def execute(run, command):
        executed.append((run.name, command[command.index("--seed") + 1]))
        return 1.0, {"eval_accuracy": 0.5}

    record = run_trial(setup, 0, {}, execute, lambda value, step, record: reported.append((value, step, record['n'])) or True)
    assert executed == [("seed1", "1")] and reported == [(0.5, 0, 1)]
    assert record["pruned"] and record["n"] == 1
    record = run_trial(setup, 1, {}, execute, lambda value, step, record: False)
    assert [name for name, _ in executed[1:]] == ["seed1", "seed2", "seed3"]
    assert not record["pruned"] and record["value"] == 0.5 and len(record["runs"]) == 3
    summary = json.load(open(os.path.join(setup.output_dir, "trials", "1", "summary.json"), encoding="utf-8"))
    assert summary["metrics"]["eval_accuracy"]["n"] == 3  # multirun's summary of the trial's runs
