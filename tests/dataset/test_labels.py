import pytest

from utils.errors import UserError
from utils.dataset.labels import read_label_file


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


@pytest.mark.parametrize("second", ["b==乙\n".encode("gbk"), b"b==\xed\xa0\x80\n"], ids=["GBK", "encoded surrogate"])
def test_non_utf8_names_line(tmp_path, second):
    path = write(tmp_path, "a==甲\n".encode("utf-8") + second, raw=True)
    with pytest.raises(UserError) as info:
        read_label_file(path)
    assert info.value.line == 2 and "not valid UTF-8" in str(info.value)


@pytest.mark.parametrize("task_type, text, line, message", [
    ("multi-label", "a==甲\nb,c==乙\n", 2, "label 'b,c' contains `,`, which separates labels"),
    ("hierarchical", "a==甲\nb,c==乙\n", 2, "contains `,`"),
    ("hierarchical", "体育\n体育##比赛\n科技##手机\n", 3,
     "the parent path '科技' of '科技##手机' is not in label.txt: hierarchical labels list every node"),
    ("hierarchical", "a\na##b\na##b##c\nd##e##f\nd\n", 4, "the parent path 'd##e' of 'd##e##f'"),
])
def test_label_paths_and_commas_by_task_type(tmp_path, task_type, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        read_label_file(path, task_type)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value)


EMPTY_LEVELS = ["体育####比赛", "##体育", "体育##", "体育## ##x", " ## "]


@pytest.mark.parametrize("label", EMPTY_LEVELS)
@pytest.mark.parametrize("word", ["", "==比赛"], ids=["no word", "with a word"])
def test_a_hierarchical_label_with_an_empty_level_is_named_so_in_label_txt(tmp_path, label, word):
    path = write(tmp_path, f"体育\n体育##比赛\n{label}{word}\n")
    with pytest.raises(UserError) as info:
        read_label_file(path, "hierarchical")
    assert str(info.value) == (f"{path}:3: label path {label.strip()!r} has an empty level (write `A##B`, each "
                               "level named)")


@pytest.mark.parametrize("label", EMPTY_LEVELS)
def test_a_hierarchical_data_line_with_an_empty_level_is_named_so(tmp_path, label):
    """Not "not in label.txt": the README promises the empty level is named, in data lines too."""
    from utils.dataset.folder import load_dataset_dir

    data = tmp_path / "data"
    data.mkdir()
    write(data, "体育\n体育##比赛\n科技\n")
    write(data, "比赛新闻\t体育##比赛\n手机新闻\t科技\n", name="dev.txt")
    write(data, f"比赛新闻\t体育##比赛\n手机新闻\t科技,{label}\n", name="train.txt")
    with pytest.raises(UserError) as info:
        load_dataset_dir(str(data), task_type="hierarchical")
    assert str(info.value) == (f"{data / 'train.txt'}:2: label path {label.strip()!r} has an empty level (write "
                               "`A##B`, each level named)")


def test_the_same_files_are_fine_where_the_rules_do_not_apply(tmp_path):
    assert read_label_file(write(tmp_path, "a==甲\nb,c==乙\n")).labels == ["a", "b,c"]  # multi-class: any name
    assert read_label_file(write(tmp_path, "体育\n科技##手机\n"), "multi-label").labels == ["体育", "科技##手机"]
    labels = read_label_file(write(tmp_path, "组织关系==组织\n组织关系##辞/离职==离职\n"), "hierarchical")
    assert labels.label_words == {"组织关系": "组织", "组织关系##辞/离职": "离职"}


IDS = {"A": 0, "A##x": 1, "B": 2}


@pytest.mark.parametrize("text, task_type, expected", [
    ("A", "multi-label", [1.0, 0.0, 0.0]),
    (" A , B ", "multi-label", [1.0, 0.0, 1.0]),
    ("A##x", "multi-label", [0.0, 1.0, 0.0]),        # flat multi-label: a path is just a name
    ("A##x", "hierarchical", [1.0, 1.0, 0.0]),       # its ancestors are implied
    ("A,A##x", "hierarchical", [1.0, 1.0, 0.0]),     # as upstream lists them
    ("B", "multi-class", 2),
])
def test_label_columns(text, task_type, expected):
    from utils.dataset.labels import parse_label_field

    assert parse_label_field(text, IDS, "train.txt", 3, task_type) == expected


@pytest.mark.parametrize("text, task_type, message", [
    ("A,,B", "multi-label", "empty label between commas in 'A,,B'"),
    ("A,", "multi-label", "empty label between commas"),
    (",A", "hierarchical", "empty label between commas"),
    ("", "multi-label", "no label after the tab"),
    ("A,C", "multi-label", "label 'C' is not in label.txt (known: A, A##x, B)"),
    ("A，B", "multi-label", "labels are separated by an ASCII comma `,`, not `，`"),
    ("A,B,A", "hierarchical", "label 'A' appears twice in 'A,B,A'"),
    ("A,B", "multi-class", "several labels on one line need --task_type multi-label"),
])
def test_bad_label_columns_name_file_and_line(text, task_type, message):
    from utils.dataset.labels import parse_label_field

    with pytest.raises(UserError) as info:
        parse_label_field(text, IDS, "train.txt", 3, task_type)
    assert str(info.value).startswith("train.txt:3: ") and message in str(info.value)
