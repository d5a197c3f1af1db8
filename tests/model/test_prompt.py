import pytest

from utils.errors import UserError
from utils.model.prompt import build_template, count_masks, parse_template_string, template_kind, validate_template

VALID = [
    "{'soft': '这条新闻标题的主题是', 'encoder': 'lstm', 'hidden_size': 200}{'text': 'text_a'}{'mask'}",
    "{'text': 'text_a'}这句话的意思是{'mask'}",
    "{'soft': None, 'length': 8, 'encoder': 'mlp'}{'text': 'text_a'}{'sep'}{'text': 'text_b'}{'mask'}",
    "{'text':'text_a'} 和 {'text':'text_b'}{'mask': None, 'length': 2}",
    '{"soft": "问题：", "soft_id": 1}{"text": "text_a"}{"mask"}',
    "{'text': 'text_a', 'truncate': False, 'token_type': 1, 'position': 0}{'mask'}",
]


@pytest.mark.parametrize("prompt", VALID)
def test_parser_matches_paddlenlp_on_valid_templates(prompt):
    from paddlenlp.prompt.template import Template  # upstream's eval-based parser, on trusted input only

    assert parse_template_string(prompt) == Template.parse_template_string(prompt)


def test_parser_result_shape():
    assert parse_template_string("{'text': 'text_a'}是{'mask'}") == [
        {"text": "text_a"}, {"hard": "是"}, {"mask": None}]


@pytest.mark.parametrize("prompt, message", [
    ("{'text': 'text_a'}{'mask'", "has no matching"),
    ("{'text': 'text_a'}}", "without a matching"),
    ("{'text': __import__('os').system('touch /tmp/pwned')}{'mask'}", "no expressions or calls"),
    ("{'text': 'text_a'}{print('x')}", "no expressions or calls"),
    ("{'txt': 'text_a'}{'mask'}", "unknown key 'txt'"),
    ("{'text': 'text_c'}{'mask'}", "'text' must be 'text_a' or 'text_b'"),
    ("{'soft': '提示', 'encoder': 'gru'}{'text': 'text_a'}{'mask'}", "'encoder' must be 'lstm', 'mlp' or None"),
    ("{'soft': None, 'length': 0}{'text': 'text_a'}{'mask'}", "'length' must be a positive int"),
    ("{'options': 'label.txt'}{'text': 'text_a'}", "UTC templates"),
    ("{'text': 'text_a', 'mask': None}", "exactly one of"),
    ("{1: 2}", "not a dict of named keys"),
])
def test_parser_rejects_with_clear_errors(prompt, message, tmp_path):
    with pytest.raises(UserError) as info:
        parse_template_string(prompt)
    assert message in str(info.value)
    assert str(info.value).startswith("--prompt: ")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("encoder, expected", [
    ("lstm", {"soft": "主题是", "encoder": "lstm", "hidden_size": 200}),
    ("mlp", {"soft": "主题是", "encoder": "mlp", "hidden_size": 200}),
    ("none", {"soft": "主题是"}),
])
def test_plain_prompt_becomes_p_tuning_template(encoder, expected):
    parts = build_template("主题是", soft_encoder=encoder, encoder_hidden_size=200)
    assert parts == [expected, {"text": "text_a"}, {"mask": None}]
    assert template_kind(parts) == "soft"


def test_plain_prompt_for_pairs_virtual_tokens_and_default():
    parts = build_template("判断：", "lstm", 64, num_virtual_tokens=6, is_pair=True)
    assert parts == [{"soft": "判断：", "length": 6, "encoder": "lstm", "hidden_size": 64}, {"text": "text_a"},
                     {"sep": None}, {"text": "text_b"}, {"mask": None}]
    assert build_template(None, "mlp", 32)[0] == {"soft": None, "length": 1, "encoder": "mlp", "hidden_size": 32}
    assert build_template("x", "lstm", 8, mask_length=2)[-1] == {"mask": None, "length": 2}


def test_full_template_is_used_as_written():
    prompt = "{'text': 'text_a'}这句话的意思是{'mask'}"
    assert build_template(prompt, "lstm", 200) == parse_template_string(prompt)
    assert template_kind(build_template(prompt, "lstm", 200)) == "manual"


@pytest.mark.parametrize("prompt, pair, message", [
    ("{'soft': 'a'}{'text': 'text_a'}", False, "needs exactly 1 mask token(s) in the template, found 0"),
    ("{'text': 'text_a'}{'mask'}{'mask'}", False, "found 2"),
    ("{'soft': 'a'}{'mask'}", False, "never uses the input text"),
    ("{'text': 'text_a'}{'text': 'text_b'}{'mask'}", False, "data has one text per line"),
])
def test_validate_template(prompt, pair, message):
    parts = parse_template_string(prompt)
    with pytest.raises(UserError) as info:
        validate_template(parts, is_pair=pair)
    assert message in str(info.value)


def test_count_masks():
    assert count_masks(parse_template_string("{'text': 'text_a'}{'mask': None, 'length': 3}{'mask'}")) == 4
