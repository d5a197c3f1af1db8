"""Every candidate of a space through train.py's own checks (no weights load); label-word sets."""
import json

import pytest

from conftest import FAST
from utils.errors import UserError
from utils.search.candidates import (check_candidates, dataset_labels, ranked_label_sets, resolve_label_words,
                                     train_known_flags)
from utils.search.space import LABEL_WORDS, Space, parse_param
from utils.testing.synthetic import PROMPT
from utils.training.multirun import without_flag


def flags(model):
    return ["--model_name_or_path", model, "--prompt", PROMPT, "--do_train", "--do_eval", "--max_steps", "10",
            *without_flag(without_flag(without_flag(FAST, "--seed"), "--learning_rate"), "--ppt_learning_rate")]


def space(**entries):
    return Space([parse_param(name, spec, "space.yaml") for name, spec in entries.items()], "space.yaml")


def test_train_py_flags_are_known():
    known = train_known_flags()
    assert {"--learning_rate", "--ppt_learning_rate", "--soft_encoder", "--prompt", "--freeze_plm", "--method",
            "--max_steps"} <= set(known)


def test_good_candidates_pass(tiny_model_dir, keyword_data, no_model_loads):
    check_candidates(space(prompt={"choices": [PROMPT, "{'soft': None, 'length': 4}{'text': 'text_a'}{'mask'}"]},
                           soft_encoder={"choices": ["lstm", "mlp", "none"]},
                           learning_rate={"low": 1e-5, "high": 1e-2, "log": True},
                           method={"choices": ["ptuning", "finetune"]}),
                     flags(tiny_model_dir), keyword_data)


@pytest.mark.parametrize("entry, message", [
    ({"prompt": {"choices": [PROMPT, "{'text': 'text_a'}{'mask'}{'mask'}"]}},
     "needs exactly 1 mask token(s) in the template, found 2"),
    ({"prompt": {"choices": ["{'text': 'text_a'}是"]}}, "found 0"),
    ({"soft_encoder": {"choices": ["lstm", "gru"]}}, "soft_encoder: candidate 'gru'"),
    ({"learning_rate": {"low": -1.0, "high": 1e-3}}, "learning_rate: candidate '-1.0'"),
    ({"per_device_train_batch_size": {"low": 0, "high": 8}}, "per_device_train_batch_size: candidate '0'"),
])
def test_a_candidate_train_py_refuses_is_named_before_any_model_loads(tiny_model_dir, keyword_data, no_model_loads,
                                                                       entry, message):
    with pytest.raises(UserError) as caught:
        check_candidates(space(**entry), flags(tiny_model_dir), keyword_data)
    assert message in str(caught.value) and "space.yaml" in str(caught.value)


def test_label_word_sets_name_every_label(keyword_data):
    labels = dataset_labels(keyword_data, [])
    param = parse_param(LABEL_WORDS, {"choices": [{"apple": "苹果", "banana": "香蕉", "grape": "葡萄"}]}, "s.yaml")
    resolved = resolve_label_words(param, labels, None, "s.yaml")
    assert [json.loads(c) for c in resolved.choices] == [
        {"apple": "红色", "banana": "黄色", "grape": "紫色"}, {"apple": "苹果", "banana": "香蕉", "grape": "葡萄"}]
    for bad, message in (({"apple": "苹果", "banana": "香蕉"}, "missing ['grape']"),
                         ({"apple": "苹果", "banana": "香蕉", "grape": "葡萄", "pear": "梨"}, "unknown ['pear']"),
                         ({"apple": "苹\t果", "banana": "香蕉", "grape": "葡萄"}, "without a tab")):
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            resolve_label_words(parse_param(LABEL_WORDS, {"choices": [bad]}, "s.yaml"), labels, None, "s.yaml")


def test_a_label_word_set_the_head_cannot_use_is_refused(tiny_model_dir, keyword_data):
    """--verbalizer manual needs label words of equal token counts: a set with a 1- and 2-token word is refused."""
    labels = dataset_labels(keyword_data, [])
    param = parse_param(LABEL_WORDS, {"choices": [{"apple": "红", "banana": "黄色", "grape": "紫色"}]}, "s.yaml")
    resolved = resolve_label_words(param, labels, None, "s.yaml")
    with pytest.raises(UserError, match="label_words: candidate"):
        check_candidates(Space([resolved], "s.yaml"), flags(tiny_model_dir) + ["--verbalizer", "manual"],
                         keyword_data)


def test_ranked_sets_come_from_the_checkers_ranking(tiny_model_dir, keyword_data):
    labels = dataset_labels(keyword_data, [])
    sets = ranked_label_sets(tiny_model_dir, keyword_data, PROMPT, 2, labels)
    assert len(sets) == 2
    for words in sets:
        assert set(words) == {"apple", "banana", "grape"} and len(set(words.values())) == 3
    assert sets[0] != sets[1]
