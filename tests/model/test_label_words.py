"""The label-word checker (utils/model/label_words.py): tokenization problems are flagged, candidates are
ranked and a label.txt is suggested, train.py warns about [UNK] and colliding words, and label.txt's
`name==w1|w2` alternatives are read."""
import logging
import os

import pytest

from utils.label_words import main as label_words_main
from utils.model.label_words import check_label_words, warn_label_words


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from utils.model.plm import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def problems(checks):
    return {c.label: "; ".join(c.problems) for c in checks}


def test_the_checker_flags_unk_collisions_and_unequal_lengths(tokenizer):
    found = problems(check_label_words({"a": "红色", "b": "龘", "c": "靐", "d": "黄"}, tokenizer))
    assert "[UNK]" in found["b"] and "[UNK]" in found["c"]
    assert "collides with c" in found["b"] and "collides with b" in found["c"]  # two [UNK]s: the same scores
    assert "split" not in found["a"]  # one token per Chinese character is how ERNIE reads Chinese
    assert "2 tokens while other labels' words have 1" in found["a"] and "1 tokens while" in found["d"]
    assert found.keys() == {"a", "b", "c", "d"}
    assert problems(check_label_words({"a": "红", "b": "黄"}, tokenizer)) == {"a": "", "b": ""}
    assert problems(check_label_words({"a": "红色", "b": "黄色"}, tokenizer)) == {"a": "", "b": ""}


def test_train_time_warnings_name_colliding_and_unknown_words(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        warn_label_words({"a": "龘", "b": "靐", "c": "红龘"}, tokenizer)
    text = caplog.text
    assert "collides with b" in text and "1 of its 2 tokens are [UNK]" in text


def test_train_warns_about_colliding_label_words_before_any_model_loads(tiny_model_dir, tmp_path, caplog,
                                                                         no_model_loads):
    """The warning belongs to planning the model (where data meets the tokenizer), not to the PLM loader."""
    import train
    from utils.errors import run_cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("a==龘\nb==靐\n", encoding="utf-8")  # both [UNK]: the same token ids
    for name in ("train.txt", "dev.txt"):
        (data / name).write_text("红色的苹果\ta\n黄色的香蕉\tb\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", str(data), "--output_dir",
                             str(tmp_path / "out"), "--do_train", "--max_steps", "1"])
    assert "label word '龘' of 'a': collides with b" in caplog.text


def test_label_file_alternatives_keep_the_first_word(tmp_path):
    from utils.errors import UserError
    from utils.dataset.labels import read_label_file

    path = tmp_path / "label.txt"
    path.write_text("apple==红色|红|苹果\nbanana==黄色\n", encoding="utf-8")
    labels = read_label_file(str(path))
    assert labels.label_words == {"apple": "红色", "banana": "黄色"}
    assert labels.alternatives == {"apple": ["红色", "红", "苹果"]}
    path.write_text("apple==红色||红\nbanana\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty alternative"):
        read_label_file(str(path))


def test_the_cli_ranks_candidates_and_suggests_a_label_file(tiny_model_dir, tmp_path, capsys):
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    data_dir = write_keyword_dataset(str(tmp_path / "data"),
                                     label_words={"apple": "红色|红", "banana": "黄色|黄", "grape": "龘"})
    out = str(tmp_path / "suggested.txt")
    assert label_words_main(["--data_dir", data_dir, "--model_name_or_path", tiny_model_dir, "--prompt", PROMPT,
                             "--top_tokens", "3", "--max_examples", "8", "--output", out]) == 0
    report = capsys.readouterr().out
    assert "grape\t龘\t[UNK]" in report and "suggested label.txt:" in report
    assert "label.txt" in report and "mlm" in report  # both sources of candidates
    lines = open(out, encoding="utf-8").read().splitlines()
    assert [line.split("==")[0] for line in lines] == ["apple", "banana", "grape"]
    words = [line.split("==")[1] for line in lines]
    assert len(set(words)) == 3  # never one word for two labels
    # bad input: one paragraph, exit 2, label.txt never overwritten
    assert label_words_main(["--data_dir", data_dir, "--model_name_or_path", tiny_model_dir,
                             "--output", os.path.join(data_dir, "label.txt")]) == 2
    assert "--output" in capsys.readouterr().err
    assert label_words_main(["--data_dir", str(tmp_path / "none"), "--model_name_or_path", tiny_model_dir,
                             "--no_ranking"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_a_word_cut_into_sub_word_pieces_is_flagged(tmp_path):
    """`##` pieces mean the vocabulary lacks the word; Chinese characters one token each do not."""
    from paddlenlp.transformers import ErnieTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "体", "育", "xyz", "##zy", "sport"])
                     + "\n", encoding="utf-8")
    found = problems(check_label_words({"a": "xyzzy", "b": "sport", "c": "体育"}, ErnieTokenizer(str(vocab))))
    assert found["a"].startswith("split into sub-word pieces (xyz ##zy)")
    assert "split" not in found["b"] and "split" not in found["c"]
