"""utils/reporting/card.py: the model card's metadata obeys the Hub's rules, its body says what the files say,
and a README.md the tool did not write is never replaced.

The Hub's metadata rules, as tests (no network): the front matter is YAML between `---` lines at the
very top; `pipeline_tag` is one of the Hub's task ids; `language` ISO 639-1 codes; `library_name` a
string; `tags` and `metrics` lists of strings; `model-index` a list of models, each with a `name` and
`results`, each result with `task.type`, `dataset.type` and `dataset.name`, and `metrics` each with a
`type` and a numeric `value` (what huggingface_hub's `model_index_to_eval_results` requires; it
parses every card here).
"""
import os
import re

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from utils.reporting.card import CardFacts, front_matter, render_card, write_card
from utils.rundir.names import CARD_FILE, is_tool_card

MODEL = {"labels": ["苹果", "香蕉"], "label_words": ["水果", "黄色"], "task_type": "multi-class",
         "template": [{"soft": None, "length": 4}, {"text": "text_a"}, {"mask": None}], "max_seq_length": 128,
         "model_name_or_path": "ernie-3.0-base-zh", "method": "ptuning", "head": "soft", "temperature": 1.3}
RESULTS = {"eval_accuracy": 0.875, "eval_macro_f1": 0.86, "eval_ece": 0.05, "test_accuracy": 0.8,
           "test_macro_f1": 0.79, "test_ece": 0.07, "train_loss": 0.3}
RECORD = {"version": 1, "commands": [{"command": "python train.py --data_dir data/fruit --do_train",
                                      "data": {"train": {"path": "/x/data/fruit/train.txt", "bytes": 12,
                                                         "sha256": "ab" * 32}}}]}
# https://huggingface.co/docs/hub/model-cards: pipeline_tag is one of the Hub's tasks (the subset a classifier may use)
HUB_TASKS = {"text-classification", "zero-shot-classification", "token-classification", "fill-mask"}


def hub_rules(meta: dict) -> None:
    """The metadata rules the Hub applies to a model card, as assertions."""
    assert isinstance(meta.get("library_name"), str) and meta["library_name"]
    assert meta.get("pipeline_tag") in HUB_TASKS
    languages = meta["language"] if isinstance(meta["language"], list) else [meta["language"]]
    assert all(re.fullmatch(r"[a-z]{2,3}", code) for code in languages)
    for key in ("tags", "metrics"):
        if key in meta:
            assert isinstance(meta[key], list) and all(isinstance(v, str) and v for v in meta[key])
    for model in meta.get("model-index", []):
        assert isinstance(model["name"], str) and model["name"]
        assert model["results"]
        for result in model["results"]:
            assert result["task"]["type"] in HUB_TASKS
            assert isinstance(result["dataset"]["type"], str) and isinstance(result["dataset"]["name"], str)
            for metric in result["metrics"]:
                assert isinstance(metric["type"], str) and isinstance(metric["value"], (int, float))
                assert metric["type"] in meta["metrics"]


def parse(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_front_matter_obeys_the_hubs_rules_and_huggingface_hub_reads_the_results():
    text = render_card(CardFacts(name="fruit", model=MODEL, results=RESULTS, record=RECORD))
    meta = parse(text)
    hub_rules(meta)
    card = ModelCard(text)
    results = model_index_to_eval_results(card.data.to_dict()["model-index"])[1]
    got = {(r.dataset_split, r.metric_type, (r.metric_args or {}).get("average")): r.metric_value for r in results}
    assert got == {("dev", "accuracy", None): 0.875, ("dev", "f1", "macro"): 0.86, ("test", "accuracy", None): 0.8,
                   ("test", "f1", "macro"): 0.79}
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "fruit"  # the data folder's name


def test_without_metrics_there_is_no_model_index_but_the_card_is_still_valid():
    meta = front_matter(CardFacts(name="zero", model=MODEL))
    hub_rules(meta)
    assert "model-index" not in meta and "metrics" not in meta


def test_the_body_says_labels_words_template_calibration_data_hash_and_command():
    text = render_card(CardFacts(name="fruit", model=MODEL, results=RESULTS, record=RECORD))
    assert "| 0 | 苹果 | 水果 |" in text and "| 1 | 香蕉 | 黄色 |" in text
    assert '"text": "text_a"' in text and "temperature: 1.3000" in text
    assert "| split | Accuracy | Macro F1 | ECE (calibration error) |" in text  # no micro F1: none was measured
    assert "| dev | 0.8750 | 0.8600 | 0.0500 |" in text
    assert "python train.py --data_dir data/fruit --do_train" in text and "ab" * 32 in text
    assert "## Intended use and limits" in text
    assert "long texts: cut off after max_seq_length tokens" in text
    windowed = render_card(CardFacts(name="w", model=dict(MODEL, long_text={
        "mode": "window", "stride": None, "aggregation": "mean", "max_windows": 16})))
    assert "long texts: window (stride half a window, mean over at most 16 windows)" in windowed


def test_label_sets_show_their_thresholds_and_multiruns_their_mean_and_std():
    model = dict(MODEL, task_type="multi-label", thresholds=[0.4, 0.6], threshold_search="per-label")
    multirun = {"metrics": {"eval_macro_f1": {"mean": 0.7, "std": 0.05, "n": 5}}}
    text = render_card(CardFacts(name="m", model=model, multirun=multirun))
    assert "thresholds: [0.4, 0.6] (searched: per-label)" in text
    assert "eval_macro_f1: 0.7000 ± 0.0500 (n=5)" in text
    assert "multi-label" in parse(text)["tags"]


def test_a_readme_of_the_users_is_kept_and_the_tools_own_card_is_replaced(tmp_path):
    path = tmp_path / CARD_FILE
    path.write_text("# my notes\n", encoding="utf-8")
    assert write_card(str(tmp_path), CardFacts(name="x", model=MODEL)) is None
    assert path.read_text(encoding="utf-8") == "# my notes\n" and not is_tool_card(str(path))
    os.remove(path)
    write_card(str(tmp_path), CardFacts(name="x", model=MODEL))
    assert is_tool_card(str(path))
    write_card(str(tmp_path), CardFacts(name="y", model=MODEL, results=RESULTS))
    assert "# y" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("text", ["no card", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")])
def test_only_the_marker_makes_a_tool_card(tmp_path, text):
    path = tmp_path / CARD_FILE
    path.write_text(text, encoding="utf-8")
    assert not is_tool_card(str(path))
