"""infer.py's Paddle-free preprocessing equals the training template + collator, text for text."""
import os
import random
import shutil

import numpy as np
import pytest

from conftest import shared_path
from utils.dataset.labels import LabelSet
from utils.model.assembly import build_prompt_model
from utils.model.plm import load_plm
from utils.deploy.preprocess import INPUT_NAMES, PromptPreprocessor, describe_template, max_lengths_for_truncation
from utils.model.prompt import build_template
from utils.testing.synthetic import FILLER, KEYWORDS

POOLS = ["abcXYZ hello World", "ÀÉÎõüçñßøØµªºİıǅ", "中文字符测试你好新闻", "，。！？、；：“”‘’（）【】《》…—～·",
         "!@#$%^&*()_+-=[]{}|;':\",./<>?`~", "0123456789０１２３", "😀🎉👍🏽❤️", "°±×÷€£¥©®™§¶",
         " \t\u3000\u00a0\u200b\u200d\ufeff", "ｱｲｳアイウあいう", "αβγАБВ", "\x00\x01\x7f\ufffd", "ﬁﬂ㎏㎡①②", FILLER]


def fuzz_texts(n, seed=0):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = rng.choice([1, 5, 20, 60, 200])  # some far beyond max_seq_length
        pieces = [rng.choice(rng.choice(POOLS)) if rng.random() < 0.9 else
                  rng.choice(["[MASK]", "[UNK]", "[SEP]", " ", "Hello", list(KEYWORDS.values())[0][0]])
                  for _ in range(length)]
        text = "".join(pieces).strip()
        texts.append(text or "空")
    return texts


def real_texts():
    """FewCLUE tnews's test texts (../shared); the test skips, saying so, where they are absent."""
    with open(shared_path("data", "fewclue", "tnews", "test.txt"), encoding="utf-8") as fp:
        return [line.split("\t")[0] for line in fp if line.strip()]


@pytest.fixture
def plm_and_tokenizer(tiny_model_dir):
    return load_plm(tiny_model_dir)  # fresh: the SoftVerbalizer takes over the PLM's MLM head


CASES = {
    "p-tuning lstm, truncating": ("这句话说的水果是", "lstm", None, False, 24),
    "mlp, padded virtual tokens": ("水果", "mlp", 6, False, 32),
    "pairs with hard text and sep": ("{'soft': '判断'}{'text': 'text_a'}{'sep'}是否{'text': 'text_b'}{'mask'}",
                                     "lstm", None, True, 40),
    "no truncation of text_b": ("{'text': 'text_a'}{'text': 'text_b', 'truncate': False}{'soft': None, 'length': 3}"
                                "{'mask'}", "none", None, True, 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_preprocessing_matches_training_template(case, plm_and_tokenizer, tiny_model_dir, tmp_path):
    texts = fuzz_texts(1200)
    assert any(len(t) > CASES[case][-1] for t in texts)  # truncation is exercised
    assert_preprocessing_matches(case, texts, plm_and_tokenizer, tiny_model_dir, tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_preprocessing_matches_training_template_on_fewclue_texts(case, plm_and_tokenizer, tiny_model_dir, tmp_path):
    assert_preprocessing_matches(case, real_texts()[:800], plm_and_tokenizer, tiny_model_dir, tmp_path)


def assert_preprocessing_matches(case, texts, plm_and_tokenizer, tiny_model_dir, tmp_path):
    prompt, encoder, virtual, pair, max_len = CASES[case]
    plm, tokenizer = plm_and_tokenizer
    parts = build_template(prompt, encoder, 16, virtual, pair)
    model = build_prompt_model(plm, tokenizer, parts, LabelSet({"a": "红色", "b": "黄色"}), max_len)
    template = model.template
    shutil.copy(os.path.join(tiny_model_dir, "vocab.txt"), tmp_path / "vocab.txt")
    pre = PromptPreprocessor(describe_template(template, max_len), str(tmp_path))

    assert len(texts) >= 800
    rng = random.Random(1)
    examples = [{"text_a": t, **({"text_b": rng.choice(texts)} if pair else {})} for t in texts]
    mine = pre.encode(examples)
    for example, feature in zip(examples, mine):
        expected = template(dict(example))
        for name in INPUT_NAMES:
            assert feature[name] == expected[name], (case, name, example)
        assert len(feature["input_ids"]) <= max_len

    from paddlenlp.prompt import PromptDataCollatorWithPadding

    collate = PromptDataCollatorWithPadding(tokenizer, padding=True, return_tensors="np")
    for start in range(0, 200, 50):
        batch = collate([template(dict(e)) for e in examples[start:start + 50]])
        padded = pre.pad(mine[start:start + 50])
        for name in INPUT_NAMES:
            np.testing.assert_array_equal(padded[name], batch[name])


def test_truncation_rule_takes_from_the_longest_part_first():
    # 8 tokens of room: the short part stays whole, the long one gives way, fixed parts never shrink.
    assert max_lengths_for_truncation([[1] * 3, [9, 9], [1] * 20], [True, False, True], 8) == [3, None, 3]
    assert max_lengths_for_truncation([[1] * 3, [1] * 2], [True, True], 10) == [None, None]


@pytest.mark.parametrize("texts", ["fuzz", "fewclue"])
def test_real_vocab_tokenizer_matches_ernie_tokenizer(tmp_path, texts):
    """With the real 40k ERNIE vocab (optional, ../shared), on fuzz and on FewCLUE texts."""
    from paddlenlp.transformers import AutoTokenizer, ErnieTokenizer

    from utils.deploy.preprocess import load_wordpiece_tokenizer

    vocab = shared_path("vocab", "ernie-3.0-base-zh-vocab.txt")
    texts = fuzz_texts(3000, seed=7) if texts == "fuzz" else real_texts()
    # Loaded the way training loads it (from_pretrained also makes special tokens unsplittable).
    ErnieTokenizer(vocab).save_pretrained(str(tmp_path))
    ernie = AutoTokenizer.from_pretrained(str(tmp_path))
    fast = load_wordpiece_tokenizer(vocab, True, "[UNK]", ernie.all_special_tokens)
    for text in texts:
        expected = ernie.encode(text, add_special_tokens=False, return_token_type_ids=False)["input_ids"]
        assert fast.encode(text, add_special_tokens=False).ids == expected, text


def write_vocab(path, words, newline="\n"):
    path.write_bytes(newline.join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]).encode("utf-8") + b"\n")
    return str(path)


def test_one_tokenizer_serves_every_copy_of_a_vocabulary_with_the_same_options(tmp_path):
    """A swap's new version and a service's other models reuse the tokenizer of a vocabulary already
    loaded (building one holds the GIL beside the serving threads); another content or option builds its own."""
    from utils.deploy.preprocess import shared_wordpiece_tokenizer

    first = shared_wordpiece_tokenizer(write_vocab(tmp_path / "a.txt", ["苹", "果", "##果"]))
    assert shared_wordpiece_tokenizer(write_vocab(tmp_path / "copy.txt", ["苹", "果", "##果"])) is first
    assert shared_wordpiece_tokenizer(str(tmp_path / "a.txt"), False) is not first  # do_lower_case differs
    assert shared_wordpiece_tokenizer(str(tmp_path / "a.txt"), special_tokens=["[MASK]"]) is not first
    other = shared_wordpiece_tokenizer(write_vocab(tmp_path / "b.txt", ["果", "苹"]))
    assert other is not first
    assert first.encode("苹果", add_special_tokens=False).ids == [5, 6]
    assert other.encode("苹果", add_special_tokens=False).ids == [6, 5]


def test_a_vocabulary_rewritten_in_place_gets_a_tokenizer_of_its_new_content(tmp_path):
    from utils.deploy.preprocess import shared_wordpiece_tokenizer

    path = write_vocab(tmp_path / "vocab.txt", ["苹", "果"])
    before = shared_wordpiece_tokenizer(path)
    write_vocab(tmp_path / "vocab.txt", ["果", "苹"])
    after = shared_wordpiece_tokenizer(path)
    assert after is not before and after.encode("苹", add_special_tokens=False).ids == [6]


def test_the_process_keeps_the_tokenizers_of_the_last_few_vocabularies_only(tmp_path, monkeypatch):
    import utils.deploy.preprocess as preprocess

    monkeypatch.setattr(preprocess, "SHARED_TOKENIZERS", 2)
    monkeypatch.setattr(preprocess, "_shared", preprocess.OrderedDict())
    paths = [write_vocab(tmp_path / f"{i}.txt", [str(i)]) for i in range(3)]
    first = preprocess.shared_wordpiece_tokenizer(paths[0])
    for path in paths[1:]:
        preprocess.shared_wordpiece_tokenizer(path)
    assert len(preprocess._shared) == 2
    assert preprocess.shared_wordpiece_tokenizer(paths[0]) is not first  # evicted, built again


def test_two_threads_asking_at_once_for_a_new_vocabulary_get_one_tokenizer(tmp_path, monkeypatch):
    """Both build (neither holds the lock while building); both are handed the first one stored."""
    import threading

    import utils.deploy.preprocess as preprocess

    monkeypatch.setattr(preprocess, "_shared", preprocess.OrderedDict())
    path = write_vocab(tmp_path / "vocab.txt", ["苹", "果"])
    both_built, built = threading.Barrier(2), []
    build = preprocess.wordpiece_tokenizer

    def held_build(*args):
        built.append(build(*args))
        both_built.wait(timeout=60)
        return built[-1]

    monkeypatch.setattr(preprocess, "wordpiece_tokenizer", held_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(preprocess.shared_wordpiece_tokenizer(path)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 2 and built[0] is not built[1]
    assert len(got) == 2 and got[0] is got[1] is preprocess._shared.popitem()[1]


def test_a_vocabulary_with_windows_line_ends_reads_as_a_text_file_reads(tmp_path):
    from utils.deploy.preprocess import load_wordpiece_tokenizer

    crlf = load_wordpiece_tokenizer(write_vocab(tmp_path / "crlf.txt", ["苹", "果"], newline="\r\n"))
    assert crlf.encode("果", add_special_tokens=False).ids == [6]
    assert crlf.get_vocab()["苹"] == 5 and "苹\r" not in crlf.get_vocab()
