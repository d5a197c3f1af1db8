"""The space file: ranges, choices, label-word sets; its own mistakes named before anything runs."""
import json

import pytest

from utils.errors import UserError
from utils.search.space import (CHOICE, DEFAULT_SPACE, FLOAT, INT, LABEL_WORDS, Space, apply_params, check_space,
                                load_space, parse_param)

KNOWN = ["--learning_rate", "--ppt_learning_rate", "--soft_encoder", "--prompt", "--max_steps", "--freeze_plm",
         "--method", "--data_dir", "--output_dir", "--seed"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_and_json_give_the_same_space(tmp_path):
    yaml_path = write(tmp_path, "space.yaml", """
learning_rate: {low: 1e-5, high: 1.0e-3, log: true}   # YAML reads 1e-5 as a string: accepted as a number
max_steps: {low: 100, high: 500, step: 100}
soft_encoder: {choices: [lstm, mlp]}
freeze_plm: {choices: [false, true]}
label_words: {choices: [{a: 甲, b: 乙}], ranked: 2}
""")
    json_path = write(tmp_path, "space.json", json.dumps({
        "soft_encoder": {"choices": ["lstm", "mlp"]}, "freeze_plm": {"choices": [False, True]},
        "label_words": {"choices": [{"a": "甲", "b": "乙"}], "ranked": 2},
        "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "max_steps": {"low": 100, "high": 500, "step": 100}}))
    a, b = load_space(yaml_path), load_space(json_path)
    assert a.fingerprint() == b.fingerprint()
    assert (a["learning_rate"].kind, a["learning_rate"].low, a["learning_rate"].log) == (FLOAT, 1e-5, True)
    assert (a["max_steps"].kind, a["max_steps"].step) == (INT, 100)
    assert a["freeze_plm"].kind == CHOICE and a["freeze_plm"].choices == [False, True]
    assert a[LABEL_WORDS].ranked == 2


def test_a_space_file_saved_with_a_bom_is_the_same_space(tmp_path):
    text = '{"max_steps": {"low": 100, "high": 500, "step": 100}}'
    plain, bom = tmp_path / "plain.json", tmp_path / "bom.json"
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_space(str(bom)).fingerprint() == load_space(str(plain)).fingerprint()


def test_the_default_space_is_used_without_a_file():
    space = load_space(None)
    assert space.names() == list(DEFAULT_SPACE) and space.source == "the default search space"


@pytest.mark.parametrize("text, message", [
    ("", "the search space is empty"),
    ("{}", "the search space is empty"),
    ("lr: [1, 2]", "expected {low: .., high: ..}"),
    ("learning_rate: {low: 1e-3, high: 1e-5}", "low (0.001) must be below high"),
    ("learning_rate: {low: 0, high: 1e-3, log: true}", "a log range needs low > 0"),
    ("learning_rate: {low: 1e-5}", "needs both low and high"),
    ("learning_rate: {low: x, high: 1}", "low must be a number"),
    ("soft_encoder: {choices: []}", "an empty choice list"),
    ("soft_encoder: {choices: [lstm, lstm]}", "a choice is repeated"),
    ("soft_encoder: {choices: [[lstm]]}", "must be a string, number or boolean"),
    ("soft_encoder: {choices: [lstm], ranked: 2}", "ranked is for label_words"),
    ("label_words: {choices: [红色]}", "a mapping label: word"),
    ("max_steps: {low: 1, high: 5, step: 0}", "step is for int ranges"),
    ("learning_rate: {low: 1e-5, high: 1e-3, logg: true}", "unknown key(s) ['logg']"),
    ("learning_rat: {low: 1e-5, high: 1e-3}", "learning_rat: not a train.py flag"),
    ("seed: {choices: [1, 2]}", "search.py sets --seed"),
    ("learning_rate: {low: 1e-5, high: [", "is not valid YAML"),
])
def test_a_bad_space_file_is_named(tmp_path, text, message):
    path = write(tmp_path, "space.yaml", text)
    with pytest.raises(UserError) as caught:
        space = load_space(path)
        check_space(space.params, [], KNOWN, space.source)
    assert message in str(caught.value) and path in str(caught.value)


@pytest.mark.parametrize("name", ["space.json", "space.yaml"])
def test_a_space_file_nested_too_deeply_is_named_not_a_crash(tmp_path, name):
    path = write(tmp_path, name, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nests too deeply") as caught:
        load_space(path)
    assert path in str(caught.value)


def test_a_searched_flag_also_given_after_the_dashes_is_refused():
    space = Space([parse_param("learning_rate", {"low": 1e-5, "high": 1e-3}, "s.yaml")], "s.yaml")
    with pytest.raises(UserError, match="both searched"):
        check_space(space.params, ["--learning_rate", "1e-4"], KNOWN, "s.yaml")


def test_values_reach_train_py_as_it_reads_them():
    argv = apply_params(["--do_train"], {"freeze_plm": True, "learning_rate": 1e-4, "max_steps": 30,
                                         "soft_encoder": "mlp", LABEL_WORDS: "{}"})
    assert argv == ["--do_train", "--freeze_plm", "true", "--learning_rate", "0.0001", "--max_steps", "30",
                    "--soft_encoder", "mlp"]
