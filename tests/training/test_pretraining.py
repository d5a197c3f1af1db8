"""pretrain.py: masked-LM loss goes down on a learnable corpus, resume is exact, masking is whole-word
(or per token) and reproducible, the result is a model directory train.py takes, bad inputs."""
import os

import numpy as np
import pytest
from helpers import logged_losses, read_json

import pretrain
from utils.errors import run_cli
from utils.testing.synthetic import make_mlm_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    texts = make_mlm_corpus(440, seed=1)
    train, held_out = root / "corpus.txt", root / "held_out.txt"
    train.write_text("\n".join(texts[:400]) + "\n", encoding="utf-8")
    held_out.write_text("\n".join(texts[400:]) + "\n", encoding="utf-8")
    return str(train), str(held_out)


def pretrain_argv(model_dir, corpus_file, out, *flags, steps=40):
    return ["--model_name_or_path", model_dir, "--input_file", corpus_file, "--output_dir", out,
            "--max_seq_length", "32", "--per_device_train_batch_size", "16", "--learning_rate", "5e-3",
            "--warmup_steps", "10", "--max_steps", str(steps), "--save_steps", "20", "--logging_steps", "1",
            "--seed", "7", *flags]


@pytest.fixture(scope="module")
def pretrained(tiny_model_dir, corpus, tmp_path_factory):
    """100 steps of whole-word-masked MLM on the learnable corpus, with a held-out evaluation."""
    out = str(tmp_path_factory.mktemp("pretrained") / "tapt")
    assert run_cli(pretrain.main, pretrain_argv(tiny_model_dir, corpus[0], out, "--eval_file", corpus[1],
                                                steps=100)) == 0
    return out


def test_loss_goes_down_on_a_learnable_corpus(pretrained):
    by_step = logged_losses(pretrained)
    first, last = np.mean([by_step[s] for s in range(1, 6)]), np.mean([by_step[s] for s in range(91, 101)])
    assert first > 5.0  # ~ln(vocabulary): the random model knows nothing
    assert last < 0.5 * first, (first, last)
    evaluation = read_json(os.path.join(pretrained, "eval_results.json"))
    assert evaluation["eval_loss"] < 0.5 * first
    assert evaluation["eval_perplexity"] == pytest.approx(np.exp(evaluation["eval_loss"]), rel=1e-6)


def test_the_result_is_a_model_directory_train_py_takes(pretrained, corpus):
    from utils.rundir.checkpoints import verify
    from utils.model.plm import check_model_dir, load_plm
    from utils.training.pretraining import MODEL_FILES

    check_model_dir(pretrained)
    verify(pretrained, purpose="model", model_files=MODEL_FILES)  # the final model is marked, like train.py's
    record = read_json(os.path.join(pretrained, "pretraining.json"))
    assert record["global_step"] == 100 and record["masking"] == "word" and not record["base_was_pretrained"]
    assert record["input_files"][0]["texts"] == 400
    model, tokenizer = load_plm(pretrained)
    assert type(model).__name__ == "ErnieForMaskedLM" and len(tokenizer) > 100


def test_resume_is_exact(tiny_model_dir, corpus, tmp_path):
    """Resumed from checkpoint-20 of a 40-step run, into another directory: the same losses at every
    later step and byte-identical final weights."""
    first = str(tmp_path / "first")
    assert run_cli(pretrain.main, pretrain_argv(tiny_model_dir, corpus[0], first, "--masking", "char",
                                                "--save_total_limit", "3")) == 0
    resumed = str(tmp_path / "resumed")
    assert run_cli(pretrain.main, pretrain_argv(tiny_model_dir, corpus[0], resumed, "--masking", "char",
                                                "--resume_from_checkpoint",
                                                os.path.join(first, "checkpoint-20"))) == 0
    uninterrupted, continued = logged_losses(first), logged_losses(resumed)
    assert sorted(continued) == list(range(1, 41))  # the history up to step 20 comes with the checkpoint
    assert all(continued[step] == uninterrupted[step] for step in range(21, 41))
    with open(os.path.join(first, "model_state.pdparams"), "rb") as a, \
            open(os.path.join(resumed, "model_state.pdparams"), "rb") as b:
        assert a.read() == b.read()


def test_pretraining_resumed_at_its_last_step_takes_no_step(tiny_model_dir, corpus, tmp_path):
    """Stopped after checkpoint-4 of --max_steps 4 was saved (before the final model): resumed in place it takes
    no further step (paddlenlp took a fifth), and ends with the uninterrupted run's weights, losses and
    train_loss (a constant learning rate, so an extra step cannot hide)."""
    from conftest import assert_same_run, interrupted_at

    def argv(out):
        return pretrain_argv(tiny_model_dir, corpus[0], str(out), "--masking", "char", "--lr_scheduler_type",
                             "constant", "--save_steps", "2", "--logging_steps", "3", steps=4)

    uninterrupted = tmp_path / "uninterrupted"
    assert run_cli(pretrain.main, argv(uninterrupted)) == 0
    resumed = tmp_path / "resumed"
    with interrupted_at("checkpoint-4 saved"):
        assert run_cli(pretrain.main, argv(resumed)) == 130
    assert not (resumed / "pretraining.json").exists()
    assert run_cli(pretrain.main, argv(resumed) + ["--resume_from_checkpoint", str(resumed)]) == 0
    assert read_json(resumed / "pretraining.json")["global_step"] == 4
    assert_same_run(str(uninterrupted), str(resumed))


@pytest.mark.slow
def test_sigkill_then_resume_in_place_continues_exactly(tiny_model_dir, corpus, tmp_path):
    """Kill -9 pretrain.py while it saves checkpoint-20 (checkpoint-15 complete): every marked checkpoint is
    whole, the interrupted save is unmarked, and resuming in place from the last marked one ends with the
    losses and weights of a run that was never interrupted."""
    from conftest import assert_same_run, killed_at

    argv = pretrain_argv(tiny_model_dir, corpus[0], "OUT", "--masking", "char", "--save_steps", "5",
                         "--save_total_limit", "3", steps=40)
    killed, pause = tmp_path / "killed", tmp_path / "paused"
    killed_at("pretrain.py", [str(killed) if a == "OUT" else a for a in argv], "checkpoint-20 written", pause)
    assert not (killed / "pretraining.json").exists()
    checkpoints = sorted(killed.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    marked = [c for c in checkpoints if (c / "checkpoint_complete.json").is_file()]
    assert [c.name for c in checkpoints] == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert [c.name for c in marked] == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
    for checkpoint in marked:
        assert set(read_json(checkpoint / "checkpoint_complete.json")["files"]) <= {p.name for p in checkpoint.iterdir()}

    uninterrupted = str(tmp_path / "uninterrupted")
    assert run_cli(pretrain.main, [uninterrupted if a == "OUT" else a for a in argv]) == 0
    assert run_cli(pretrain.main, [str(killed) if a == "OUT" else a for a in argv]
                   + ["--resume_from_checkpoint", str(killed)]) == 0
    assert_same_run(uninterrupted, str(killed))
    assert all((c / "checkpoint_complete.json").is_file() for c in killed.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def encoder_and_tokenizer(tiny_model_dir):
    from utils.model.plm import load_tokenizer
    from utils.training.pretraining import CorpusEncoder

    tokenizer = load_tokenizer(tiny_model_dir)
    return tokenizer, {m: CorpusEncoder(tokenizer, 64, m) for m in ("word", "char")}


@pytest.mark.parametrize("masking", ["word", "char"])
def test_a_long_line_is_segmented_only_as_far_as_its_tokens_are_kept(masking, encoder_and_tokenizer, monkeypatch):
    """A 2-million-character line: jieba (and the tokenizer) see a prefix of a bounded length, not the line,
    and the encoding is the one segmenting it whole gave; normal lines are encoded exactly as before; a
    line of spaces first (no tokens) still finds its text."""
    import jieba

    import utils.training.pretraining as pretraining

    tokenizer, encoders = encoder_and_tokenizer
    encoder = encoders[masking]
    texts = make_mlm_corpus(200, seed=3)
    seen = []
    lcut, encode = jieba.lcut, encoder.fast.encode
    monkeypatch.setattr(jieba, "lcut", lambda text, *a, **k: seen.append(len(text)) or lcut(text, *a, **k))
    monkeypatch.setattr(encoder.fast, "encode", lambda text, *a, **k: seen.append(
        sum(map(len, text)) if isinstance(text, list) else len(text)) or encode(text, *a, **k), raising=False)
    line = "".join(texts)
    line = line * (2_000_000 // len(line) + 1)
    encoded = encoder.encode((line,))
    assert len(line) >= 2_000_000 and seen and max(seen) <= pretraining.CHARS_PER_TOKEN * encoder.max_seq_length
    spaced = " " * 20_000 + line[:5_000]
    lines = [(text,) for text in texts + [spaced]] + list(zip(texts, texts[1:]))  # single texts and pairs
    cut = [encoder.encode(text) for text in lines]
    seen.clear()

    monkeypatch.setattr(pretraining, "CHARS_PER_TOKEN", 10 ** 9)  # as before: every line segmented whole
    assert encoder.encode((line[:20_000],)) == encoded
    assert [encoder.encode(text) for text in lines] == cut
    assert max(seen) == len(spaced)


def test_whole_word_masking_masks_words_and_is_reproducible(encoder_and_tokenizer):
    import jieba

    from utils.training.pretraining import MaskedTextDataset, random_token_ids

    tokenizer, encoders = encoder_and_tokenizer
    texts = make_mlm_corpus(200, seed=3)
    encoded = [encoders["word"].encode((t,)) for t in texts]
    for text, enc in zip(texts[:20], encoded):
        words = [w for w in jieba.lcut(text) if w.strip()]
        assert [tokenizer.convert_ids_to_tokens(enc.input_ids[s:e]) for s, e in enc.spans] == \
            [tokenizer.convert_ids_to_tokens(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]
    assert all(len(e.spans) == len(e.input_ids) - 2 for e in (encoders["char"].encode((t,)) for t in texts))
    dataset = MaskedTextDataset(encoded, seed=5, masked_lm_prob=0.15, mask_id=tokenizer.mask_token_id,
                                random_ids=random_token_ids(tokenizer))
    n = len(dataset)
    masked = kept = replaced = total = 0
    for index, enc in enumerate(encoded):
        item = dataset[index]
        assert item == dataset[index]                       # the same key masks the same way
        positions = set(item["positions"])
        assert positions and all(any(p in range(s, e) for s, e in enc.spans) for p in positions)
        for start, end in enc.spans:                         # a word is masked whole or not at all
            inside = [p in positions for p in range(start, end)]
            assert all(inside) or not any(inside)
        assert item["labels"] == [enc.input_ids[p] for p in item["positions"]]
        for p in item["positions"]:
            total += 1
            value = item["input_ids"][p]
            masked += value == tokenizer.mask_token_id
            kept += value == enc.input_ids[p]
            replaced += value not in (tokenizer.mask_token_id, enc.input_ids[p])
    assert 0.7 < masked / total < 0.9 and 0.03 < kept / total < 0.2 and 0.03 < replaced / total < 0.2
    assert any(dataset[i]["positions"] != dataset[n + i]["positions"] for i in range(20))  # new masks each epoch
    share = np.mean([len(dataset[i]["positions"]) / (len(e.input_ids) - 2) for i, e in enumerate(encoded)])
    assert 0.1 < share < 0.3


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case, flags, message, where", [
    ("empty input file", ["--input_file", "EMPTY"], "has no texts", "empty.txt"),
    ("labelled lines", ["--input_file", "LABELLED"], "found 2 tabs (a labelled line?", "labelled.txt:2"),
    ("missing input file", ["--input_file", "/nonexistent/texts.txt"], "input file not found",
     "/nonexistent/texts.txt"),
    ("no input file", [], "is required", "--input_file"),
    ("evaluation without held-out texts", ["--input_file", "GOOD", "--eval_steps", "5"], "none was given",
     "--eval_steps"),
    ("unknown masking", ["--input_file", "GOOD", "--masking", "span"], "must be one of word or char", "--masking"),
    ("masking probability", ["--input_file", "GOOD", "--masked_lm_prob", "0"], "must be in (0, 1)",
     "--masked_lm_prob"),
    ("longer than the model's positions", ["--input_file", "GOOD", "--max_seq_length", "4096"],
     "has only 512 positions", "--max_seq_length"),
    ("resume from a train.py checkpoint", ["--input_file", "GOOD", "--resume_from_checkpoint", "TRAIN_CKPT"],
     "is a train.py checkpoint (a classifier)", "checkpoint-"),
])
def test_bad_inputs(case, flags, message, where, tiny_model_dir, trained, tmp_path, capsys, monkeypatch):
    import glob

    import utils.model.plm

    monkeypatch.setattr(utils.model.plm, "load_plm", lambda *a, **k: pytest.fail("a model was loaded"))
    files = {"EMPTY": lambda: write(tmp_path / "empty.txt", "\n \n"),
             "LABELLED": lambda: write(tmp_path / "labelled.txt", "苹果是红色的\n苹果\t红色\tapple\n"),
             "GOOD": lambda: write(tmp_path / "good.txt", "苹果是红色的\n"),
             "TRAIN_CKPT": lambda: glob.glob(os.path.join(trained[1], "checkpoint-*"))[0]}
    flags = [files[f]() if f in files else f for f in flags]
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(out), "--max_steps", "2", *flags]
    assert run_cli(pretrain.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and where in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_pretrained_model_is_not_a_classifier(pretrained, tmp_path, capsys):
    """Given where a classifier is expected (--resume_from_checkpoint, --teacher, --members), the pretrain.py
    output is named for what it is, with the flag that takes it."""
    import ensemble
    import train
    from utils.testing.synthetic import write_keyword_dataset

    data_dir = write_keyword_dataset(str(tmp_path / "data"))
    for main, argv in ((train.main, ["--do_predict", "--data_dir", data_dir, "--resume_from_checkpoint",
                                     pretrained, "--output_dir", str(tmp_path / "out")]),
                       (ensemble.main, ["--members", pretrained, pretrained + "/checkpoint-100", "--output_dir",
                                        str(tmp_path / "ens")])):
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err
        assert "is a pretrain.py language model" in err and f"--model_name_or_path {pretrained}" in err, err


def test_a_large_corpus_is_encoded_as_its_batches_are_drawn(encoder_and_tokenizer):
    """Nothing is encoded ahead (a million-line corpus took minutes and ~2.8 GB before the first step);
    an item is what encoding the text gives."""
    from utils.training.pretraining import LazyEncoded

    tokenizer, encoders = encoder_and_tokenizer
    calls = []

    class Counting:
        def encode(self, text):
            calls.append(text)
            return encoders["word"].encode(text)

    texts = [("苹果很甜",), ("香蕉",)] * 500_000
    lazy = LazyEncoded(texts, Counting())
    assert len(lazy) == 1_000_000 and calls == []
    assert lazy[3] == encoders["word"].encode(("香蕉",)) and calls == [("香蕉",)]
