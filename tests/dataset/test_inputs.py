"""Input files for infer.py: the first line decides the layout, every later line must match it
(`file:line` errors otherwise), and the file is read in chunks of bounded size."""
import pytest

from utils.errors import UserError
from utils.dataset.inputs import InputFile

LABELS = ["apple", "banana"]


def make(tmp_path, text, pair=False):
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8")
    return InputFile(str(path), pair=pair, labels=LABELS)


def read_all(inputs, size=1000):
    examples, gold = [], []
    for chunk, chunk_gold in inputs.chunks(size):
        examples += chunk
        gold += chunk_gold or []
    return examples, gold


def test_plain_texts_have_no_gold(tmp_path):
    inputs = make(tmp_path, "苹果\n\n香蕉\n")
    assert not inputs.has_gold
    assert read_all(inputs) == ([{"text_a": "苹果"}, {"text_a": "香蕉"}], [])


def test_a_known_label_in_a_last_column_is_gold(tmp_path):
    inputs = make(tmp_path, "苹果\tapple\n香蕉\tbanana\n")
    assert inputs.has_gold
    assert read_all(inputs) == ([{"text_a": "苹果"}, {"text_a": "香蕉"}], ["apple", "banana"])


def test_pairs_with_and_without_gold(tmp_path):
    assert read_all(make(tmp_path, "甲\t乙\n", pair=True)) == ([{"text_a": "甲", "text_b": "乙"}], [])
    assert read_all(make(tmp_path, "甲\t乙\tapple\n", pair=True)) == ([{"text_a": "甲", "text_b": "乙"}], ["apple"])


@pytest.mark.parametrize("text, pair, message", [
    ("苹果\tcherry\n", False, "in.txt:1: expected one text per line (no tab), found 1 tab (a last column counts as "
                              "a gold label only if it is one of the model's labels: apple, banana)"),
    ("苹果\n香蕉\tbanana\n", False, "in.txt:2: expected `text` as on line 1, found 1 tab"),
    ("苹果\tapple\n香蕉\n", False, "in.txt:2: expected `text<TAB>gold label` as on line 1, found no tab"),
    ("苹果\tapple\n香蕉\tcherry\n", False, "in.txt:2: gold label 'cherry' is not one of the model's labels"),
    ("甲\t乙\n丙\n", True, "in.txt:2: expected `text_a<TAB>text_b` as on line 1, found no tab"),
    ("苹果\n香蕉\t\n", False, "in.txt:2: expected `text` as on line 1, found 1 tab"),
    ("苹果\tapple\n\tapple\n", False, "in.txt:2: empty text"),
    ("\n\n", False, "in.txt: has no texts"),
])
def test_lines_that_do_not_match_the_first_are_errors_naming_the_line(tmp_path, text, pair, message):
    with pytest.raises(UserError) as error:
        read_all(make(tmp_path, text, pair=pair))
    assert message in str(error.value)


def test_chunks_hold_at_most_size_lines_in_file_order(tmp_path):
    inputs = make(tmp_path, "".join(f"t{i}\tapple\n" for i in range(10)))
    chunks = list(inputs.chunks(4))
    assert [len(examples) for examples, _ in chunks] == [4, 4, 2]
    assert [e["text_a"] for examples, _ in chunks for e in examples] == [f"t{i}" for i in range(10)]


def test_unreadable_inputs_are_reported_before_reading(tmp_path):
    with pytest.raises(UserError, match="input file is a directory"):
        InputFile(str(tmp_path), pair=False, labels=LABELS)
    with pytest.raises(UserError, match="input file not found"):
        InputFile(str(tmp_path / "missing.txt"), pair=False, labels=LABELS)


def test_label_sets_in_a_last_column_are_gold_for_multi_label_models(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("苹果香蕉\tbanana, apple\n苹果\tapple\n", encoding="utf-8")
    inputs = InputFile(str(path), pair=False, labels=LABELS, task_type="multi-label")
    assert inputs.has_gold
    assert read_all(inputs) == ([{"text_a": "苹果香蕉"}, {"text_a": "苹果"}], ["apple,banana", "apple"])  # output order
    path.write_text("苹果香蕉\tapple,banana\n苹果\tapple,,banana\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_all(InputFile(str(path), pair=False, labels=LABELS, task_type="multi-label"))
    assert str(info.value).startswith(f"{path}:2: ") and "empty label between commas" in str(info.value)
    path.write_text("苹果\tapple,cherry\n", encoding="utf-8")
    with pytest.raises(UserError, match="lists only the model's labels, separated by commas"):
        InputFile(str(path), pair=False, labels=LABELS, task_type="multi-label")


@pytest.mark.parametrize("raw, column", [
    (b"\xed\xa0\x80", 3),          # U+D800 encoded as if it were a character (CESU-8 / WTF-8): a lone surrogate
    (b"\xb9\xfb", 3),              # GBK
    (b"\xff", 3),
], ids=["encoded surrogate", "GBK", "0xFF"])
def test_bytes_that_are_not_utf8_are_a_file_line_error_so_no_lone_surrogate_gets_in(tmp_path, raw, column):
    """Files are decoded strictly: the bytes of a lone surrogate are refused like any other that are
    not UTF-8, naming the line (input files, data files and label.txt share the reader)."""
    from utils.dataset.folder import read_examples

    path = tmp_path / "in.txt"
    path.write_bytes("苹果\n".encode("utf-8") + b"ab" + raw + b"\n")
    for read in (lambda: read_all(InputFile(str(path), pair=False, labels=LABELS)),
                 lambda: read_examples(str(path), labelled=False)):
        with pytest.raises(UserError) as error:
            read()
        assert str(error.value).startswith(f"{path}:2: not valid UTF-8 (byte {raw[:1]!r} at column {column})")
