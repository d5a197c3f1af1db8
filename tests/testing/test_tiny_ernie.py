import json
import os

import pytest

from conftest import ROOT, shared_path
from utils.errors import UserError
from utils.testing.tiny_ernie import MARKER_FILE, SPECIAL_TOKENS, build_ernie, main, model_config, vocab_from_texts


def test_vocab_from_texts():
    vocab = vocab_from_texts(["你好 World", "世界2"])
    assert vocab[:5] == SPECIAL_TOKENS
    assert {"你", "好", "世", "界", "w", "2", "##o"} <= set(vocab)
    assert len(vocab) == len(set(vocab))


def test_build_is_idempotent_and_never_clobbers_other_folders(tmp_path):
    vocab = vocab_from_texts(["苹果香蕉"])
    path = str(tmp_path / "m")
    build_ernie(path, vocab, seed=1)
    marker = json.load(open(os.path.join(path, MARKER_FILE), encoding="utf-8"))
    assert marker["pretrained"] is False and "NOT pretrained" in marker["warning"]
    mtime = os.path.getmtime(os.path.join(path, "model_state.pdparams"))
    build_ernie(path, vocab, seed=1)  # same request: nothing rewritten
    assert os.path.getmtime(os.path.join(path, "model_state.pdparams")) == mtime
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to overwrite"):
        build_ernie(str(other), vocab)
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_different_earlier_build_is_not_replaced_without_asking(tmp_path):
    """`make demo` once replaced a user's 40k-vocab model at checkpoints/tiny-ernie with a 576-token one."""
    path = str(tmp_path / "tiny-ernie")
    build_ernie(path, vocab_from_texts(["苹果香蕉葡萄西瓜"]), seed=1)
    weights = os.path.join(path, "model_state.pdparams")
    before = open(weights, "rb").read()
    with pytest.raises(UserError, match="holds another model built by this command.*--overwrite_output_dir"):
        build_ernie(path, vocab_from_texts(["苹果"]), seed=1)
    assert open(weights, "rb").read() == before
    build_ernie(path, vocab_from_texts(["苹果"]), seed=1, overwrite=True)
    assert open(weights, "rb").read() != before


def test_the_demo_builds_its_own_model_directory():
    with open(os.path.join(ROOT, "Makefile")) as fp:
        makefile = fp.read()
    demo_model = [line.split(":=")[1].strip() for line in makefile.splitlines() if line.startswith("DEMO_MODEL")]
    assert demo_model and demo_model[0] != "checkpoints/tiny-ernie"


def test_cli_needs_a_vocab_source(tmp_path):
    with pytest.raises(UserError, match="--vocab_file or --data_dir"):
        main(["--output_dir", str(tmp_path / "m")])


def test_full_size_preset_uses_the_real_architecture():
    config = model_config("ernie-3.0-base-zh", vocab_size=39980)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (768, 12, 12)
    assert config["intermediate_size"] == 3072 and config["vocab_size"] == 40000


def test_real_vocab_file(tmp_path):
    from utils.testing.tiny_ernie import read_vocab_file

    tokens = read_vocab_file(shared_path("vocab", "ernie-3.0-base-zh-vocab.txt"))
    assert tokens[0] == "[PAD]" and len(tokens) > 39000
