"""The zero-shot baseline (utils/model/zero_shot.py, train.py --zero_shot): a tiny MLM pretrained on a
generated cloze corpus classifies the keyword task with no training, which also proves the mask
position and the label-word -> class mapping; and predicting needs a trained or zero-shot model."""
import json
import os
import random

import pytest

from conftest import FAST, read_tsv
from utils.testing.synthetic import KEYWORDS, PROMPT, make_text, write_keyword_dataset

# short fillers around the keyword: the tiny MLM learns to find it in ~300 steps (15 s on one core)
SHORT = dict(min_len=1, max_len=4)


@pytest.fixture(scope="module")
def cloze_model(tiny_model_dir, tmp_path_factory):
    """The tiny ERNIE after a few hundred MLM steps on `text + prompt + label word` sentences."""
    from utils.testing.cloze import pretrain_cloze_mlm

    rng = random.Random(7)
    corpus = [(make_text(rng, keyword, **SHORT), word) for _ in range(200) for keyword, word in KEYWORDS.values()]
    return pretrain_cloze_mlm(tiny_model_dir, str(tmp_path_factory.mktemp("cloze") / "mlm"), corpus, PROMPT,
                              steps=300, learning_rate=2e-3, mask_rate=0.0)


def zero_shot(model_dir, data_dir, out, *extra):
    import train
    from utils.errors import run_cli

    argv = ["--model_name_or_path", model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--zero_shot", "--do_eval", "--do_predict", *FAST, *extra]
    assert run_cli(train.main, argv) == 0
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        return json.load(fp)


def test_zero_shot_on_a_cloze_pretrained_mlm_reaches_0_9_without_training(cloze_model, tmp_path):
    data_dir = write_keyword_dataset(str(tmp_path / "data"), **SHORT)
    out = str(tmp_path / "out")
    results = zero_shot(cloze_model, data_dir, out, "--do_export", "--export_type", "onnx")
    print(f"zero-shot dev accuracy {results['eval_accuracy']:.4f}")
    assert results["eval_accuracy"] >= 0.9
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        spec = json.load(fp)
    assert spec["zero_shot"] is True and spec["verbalizer"] == "manual"
    # the text, then the prompt as hard text, then one mask per label-word token
    assert spec["template"] == [{"text": "text_a"}, {"hard": PROMPT}, {"mask": None, "length": 2}]
    with open(os.path.join(out, "export", "manifest.json"), encoding="utf-8") as fp:
        assert json.load(fp)["zero_shot"] is True
    with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
        assert json.load(fp)["test_accuracy"] >= 0.9

    # label.txt's lines shuffled: the same predictions (labels are matched by word, not by line)
    shuffled = str(tmp_path / "shuffled")
    write_keyword_dataset(shuffled, **SHORT)
    path = os.path.join(shuffled, "label.txt")
    lines = open(path, encoding="utf-8").read().splitlines()
    open(path, "w", encoding="utf-8").write("\n".join(reversed(lines)) + "\n")
    # ... and --calibrate fits only a temperature: the same labels, dev NLL no worse. (Four dev
    # lines mislabelled: with every dev answer right no temperature is fitted, T stays 1.)
    dev = os.path.join(shuffled, "dev.txt")
    rows = [line.split("\t") for line in open(dev, encoding="utf-8").read().splitlines()]
    for row in rows[:4]:
        row[1] = {"apple": "banana", "banana": "grape", "grape": "apple"}[row[1]]
    open(dev, "w", encoding="utf-8").write("".join("\t".join(row) + "\n" for row in rows))
    calibrated = zero_shot(cloze_model, shuffled, str(tmp_path / "out2"), "--calibrate")
    assert calibrated["eval_temperature"] != 1.0
    assert calibrated["eval_nll"] <= calibrated["eval_nll_uncalibrated"] + 1e-9
    def labels_of(directory):  # text, gold, label (confidences move with the temperature)
        return [row[:3] for row in read_tsv(os.path.join(directory, "test_predictions.tsv"))[1]]

    assert labels_of(out) == labels_of(str(tmp_path / "out2"))

    # label words swapped between two labels: the mapping is really read (accuracy collapses)
    swapped = str(tmp_path / "swapped")
    write_keyword_dataset(swapped, label_words={"apple": "黄色", "banana": "红色", "grape": "紫色"}, **SHORT)
    assert zero_shot(cloze_model, swapped, str(tmp_path / "out3"))["eval_accuracy"] <= 0.5


def test_zero_shot_flags_are_checked(tiny_model_dir, keyword_data, tmp_path, capsys):
    import train
    from utils.errors import run_cli

    out = str(tmp_path / "out")
    base = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", out]
    cases = [(["--zero_shot", "--do_train"], "--zero_shot"),
             (["--zero_shot", "--do_eval", "--resume_from_checkpoint", out], "--zero_shot"),
             (["--zero_shot", "--do_eval", "--method", "finetune"], "--zero_shot"),
             (["--zero_shot", "--do_eval", "--soft_encoder", "mlp"], "--zero_shot"),
             (["--zero_shot", "--do_eval", "--task_type", "multi-label"], "--zero_shot"),
             (["--zero_shot", "--do_eval", "--verbalizer", "soft"], "--verbalizer"),
             (["--zero_shot", "--do_eval", "--verbalizer=soft"], "--verbalizer"),
             (["--zero_shot", "--do_eval", "--prompt", "{'soft': '水果'}{'text': 'text_a'}{'mask'}{'mask'}"],
              "--prompt"),
             # no trained model and no --zero_shot: refused, never an untrained head's guesses
             (["--do_predict"], "--resume_from_checkpoint")]
    for extra, flag in cases:
        assert run_cli(train.main, base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and flag in err and "Traceback" not in err, (extra, err)
    assert not os.path.exists(os.path.join(out, "model_state.pdparams"))


def test_zero_shot_needs_label_words_of_equal_token_counts(tiny_model_dir, tmp_path, capsys):
    import train
    from utils.errors import run_cli

    data_dir = write_keyword_dataset(str(tmp_path / "data"), label_words={"apple": "红", "banana": "黄色",
                                                                         "grape": "紫色"})
    out = str(tmp_path / "out")
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out,
                                "--prompt", PROMPT, "--zero_shot", "--do_eval"]) == 2
    err = capsys.readouterr().err
    assert "--zero_shot predicts one token per [MASK]" in err and "label.txt" in err and "Traceback" not in err
    assert not os.path.exists(out) or not os.listdir(out) or not os.path.exists(os.path.join(out, "model_state.pdparams"))


@pytest.mark.parametrize("saved_as, safetensors", [("ErnieModel", False), ("ErnieForSequenceClassification", False),
                                                   ("ErnieModel", True)],
                         ids=["base model", "sequence classifier", "base model, safetensors"])
def test_zero_shot_refuses_a_model_whose_weights_lack_the_masked_lm_head(tiny_model_dir, keyword_data, tmp_path,
                                                                         capsys, saved_as, safetensors):
    """Not paddlenlp's "newly initialized" warning and a run through a random head: exit 2 naming
    the model directory, decided from the weight file's parameter names."""
    import paddlenlp.transformers
    import train
    from paddlenlp.transformers import ErnieTokenizer
    from utils.errors import run_cli

    headless = str(tmp_path / "headless")
    model = getattr(paddlenlp.transformers, saved_as).from_pretrained(tiny_model_dir)
    model.save_pretrained(headless, safe_serialization=safetensors)
    ErnieTokenizer.from_pretrained(tiny_model_dir).save_pretrained(headless)
    out = str(tmp_path / "out")
    assert run_cli(train.main, ["--model_name_or_path", headless, "--data_dir", keyword_data, "--output_dir", out,
                                "--prompt", PROMPT, "--zero_shot", "--do_eval", "--do_predict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {headless}: has no masked-LM head in its weights (cls.predictions."), err
    assert "randomly initialised" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "model_state.pdparams"))
    assert not os.path.exists(os.path.join(out, "eval_results.json"))


def test_the_head_check_counts_tied_and_aliased_weights_once(tiny_model_dir):
    from paddlenlp.transformers import ErnieForMaskedLM

    from utils.model.zero_shot import checkpoint_keys, missing_head_weights

    plm = ErnieForMaskedLM.from_pretrained(tiny_model_dir)
    keys = checkpoint_keys(tiny_model_dir)
    assert missing_head_weights(plm, keys) == []
    # the bias saved under its alias only (older checkpoints' `decoder_bias`) still counts
    assert missing_head_weights(plm, [k for k in keys if k != "cls.predictions.decoder.bias"]) == []
    without_transform = [k for k in keys if not k.startswith("cls.predictions.transform.")]
    assert missing_head_weights(plm, without_transform) == ["cls.predictions.transform.bias",
                                                            "cls.predictions.transform.weight"]
