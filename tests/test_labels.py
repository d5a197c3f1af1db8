import pytest

from utils.errors import UserError
from utils.labels import read_label_file


def write(tmp_path, text, name="label.txt", raw=False):
    path = tmp_path / name
    if raw:
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_three_line_forms_and_sorted_output_order(tmp_path):
    path = write(tmp_path, "news_car==汽车\n体育\n科技##手机\n")
    labels = read_label_file(path)
    assert labels.label_words == {"news_car": "汽车", "体育": "体育", "科技##手机": "手机"}
    # Output order is the label names sorted by code point, as paddlenlp's verbalizer orders logits.
    assert labels.labels == sorted(["news_car", "体育", "科技##手机"])
    assert labels.label_to_id == {name: i for i, name in enumerate(labels.labels)}
    assert labels.words_in_order() == [labels.label_words[n] for n in labels.labels]


def test_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path, "\ufeffa==甲\r\n\r\n  \nb==乙\r\n".encode("utf-8"), raw=True)
    assert read_label_file(path).label_words == {"a": "甲", "b": "乙"}


@pytest.mark.parametrize("text, line, message", [
    ("a==甲\na==乙\n", 2, "duplicate label 'a' (first defined on line 1)"),
    ("a==甲\nb==\n", 2, "empty label word"),
    ("a==甲\n==乙\n", 2, "empty label name"),
    ("a==甲\nb==乙==丙\n", 2, "more than one `==`"),
    ("a==甲\nb##\n", 2, "ends with `##`"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        read_label_file(path)
    assert info.value.path == path and info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_single_label_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="at least two labels"):
        read_label_file(write(tmp_path, "a==甲\n"))
    with pytest.raises(UserError, match="label file not found"):
        read_label_file(str(tmp_path / "nope.txt"))


def test_non_utf8_names_line(tmp_path):
    path = write(tmp_path, "a==甲\n".encode("utf-8") + "b==乙\n".encode("gbk"), raw=True)
    with pytest.raises(UserError) as info:
        read_label_file(path)
    assert info.value.line == 2 and "not valid UTF-8" in str(info.value)
