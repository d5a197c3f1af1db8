"""The seeds' variants in one tool: fine-tuning baseline and multi-mask (manual) verbalizer, end to end."""
import json
import os

import numpy as np
import pytest

import infer
import train
from conftest import FAST, read_tsv
from utils.errors import UserError, run_cli
from utils.dataset.labels import LabelSet
from utils.model.plm import load_plm
from utils.testing.synthetic import PROMPT


def run_variant(tiny_model_dir, data_dir, out, *extra, steps="160"):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--do_train", "--do_eval", "--do_predict", "--do_export", "--max_steps", steps, "--eval_steps", "40",
            "--logging_steps", "40", *FAST, *extra]
    assert run_cli(train.main, argv) == 0
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        return json.load(fp)


def infer_matches_training(data_dir, out, tmp_path):
    pred = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", os.path.join(out, "export"), "--input_file",
                                os.path.join(data_dir, "test.txt"), "--output_file", pred, "--device", "cpu"]) == 0
    _, served = read_tsv(pred)
    _, trained = read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert [r[2] for r in served] == [r[2] for r in trained]
    np.testing.assert_allclose([float(r[3]) for r in served], [float(r[3]) for r in trained], atol=1e-4)


@pytest.mark.slow
def test_finetune_baseline_same_files_and_deployment(tiny_model_dir, keyword_data, tmp_path):
    out = str(tmp_path / "ft")
    metrics = run_variant(tiny_model_dir, keyword_data, out, "--method", "finetune")
    assert metrics["eval_accuracy"] >= 0.9
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        config = json.load(fp)
    assert config["method"] == "finetune" and config["verbalizer"] is None
    assert config["model_class"] == "ErnieForSequenceClassification"
    assert config["template"] == [{"text": "text_a"}]  # [CLS] text [SEP], no prompt
    for name in ("test_results.json", "test_predictions.tsv", "test_confusion_matrix.png", "training_curves.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "export", "manifest.json"), encoding="utf-8") as fp:
        assert json.load(fp)["method"] == "finetune"
    infer_matches_training(keyword_data, out, tmp_path)


@pytest.mark.slow
def test_manual_multi_mask_verbalizer(tiny_model_dir, keyword_data, tmp_path):
    out = str(tmp_path / "manual")
    metrics = run_variant(tiny_model_dir, keyword_data, out, "--verbalizer", "manual")
    assert metrics["eval_accuracy"] >= 0.9
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        config = json.load(fp)
    # Two-character label words (红色/黄色/紫色): two masks, the MLM head scores each token.
    assert config["template"][-1] == {"mask": None, "length": 2}
    assert config["verbalizer"] == "manual" and config["model_class"] == "ErnieForMaskedLM"
    infer_matches_training(keyword_data, out, tmp_path)
    import onnx

    ops = {n.op_type for n in onnx.load(os.path.join(out, "export", "model.onnx")).graph.node}
    assert "Loop" not in ops and "LSTM" not in ops


def test_manual_verbalizer_mlm_loss_option(tiny_model_dir):
    import paddle

    from utils.model.heads import LabelWordNLLLoss, MultiMaskVerbalizer

    _, tokenizer = load_plm(tiny_model_dir)
    verbalizer = MultiMaskVerbalizer({"a": ["红色"], "b": ["黄色"]}, tokenizer)
    logits = paddle.randn([3, 2, tokenizer.vocab_size])
    scores = verbalizer.process_outputs(logits, None)
    log_probs = paddle.nn.functional.log_softmax(logits, axis=-1).numpy()
    ids = np.array(verbalizer.token_ids.numpy()[:, 0, :])  # [labels, tokens]
    expected = np.stack([log_probs[:, 0, ids[j, 0]] + log_probs[:, 1, ids[j, 1]] for j in range(2)], axis=1)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-5)
    labels = paddle.to_tensor([0, 1, 1])
    loss = LabelWordNLLLoss(2)(scores, labels).numpy()
    token_ce = -np.mean([log_probs[b, k, ids[l, k]] for b, l in enumerate([0, 1, 1]) for k in range(2)])
    np.testing.assert_allclose(loss, token_ce, rtol=1e-5)


def full_projection_scores(model, batch):
    """The pre-speed-up computation: the MLM head on every position, then log-softmax over the vocabulary
    at the masks, summed over the label word's tokens (numpy, independent of MultiMaskVerbalizer's code)."""
    from paddlenlp.prompt import PromptModelForSequenceClassification

    _, vocab_logits = PromptModelForSequenceClassification.forward(model, **batch, return_hidden_states=True)
    logits = vocab_logits.numpy().astype("float64")
    logits = logits.reshape([-1, logits.shape[-1]])[batch["masked_positions"].numpy()]
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    ids = model.verbalizer.mask_token_index.numpy()  # [n_masks, labels]
    n_masks = ids.shape[0]
    log_probs = log_probs.reshape([-1, n_masks, log_probs.shape[-1]])
    return sum(log_probs[:, k, ids[k]] for k in range(n_masks)), vocab_logits


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("manual_loss", ["ce", "mlm"])
def test_mask_only_scores_equal_full_projection(tiny_model_dir, manual_loss):
    """Training and evaluation score the masks only (ce: only the label words' decoder rows); the
    probabilities, the loss and its gradients must be those of the full-vocabulary computation."""
    import paddle
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    from utils.model.assembly import build_prompt_model, criterion_for
    from utils.model.prompt import build_template

    paddle.seed(5)
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template(PROMPT, "lstm", 16, mask_length=2)
    labels = LabelSet({"apple": "红色", "banana": "黄色", "grape": "紫色"})
    options = {"loss": manual_loss}
    model = build_prompt_model(plm, tokenizer, parts, labels, 32, head="manual", head_options=options)
    model.train()
    model.plm.eval()  # no dropout, so both computations see the same network (the LSTM needs train mode for grads)
    criterion = criterion_for(model, options)
    assert model.verbalizer.normalize == (manual_loss == "mlm")
    texts = ["苹果是红色的", "香蕉很好吃", "葡萄" * 30, "一"]
    collate = PromptDataCollatorWithPadding(tokenizer, return_tensors="pd")
    batch = collate([model.template({"text_a": t, "labels": i % 3}) for i, t in enumerate(texts)])
    gold = batch.pop("labels")
    watched = {"soft prompt": model.template.soft_embeddings.weight,
               "head transform": model.plm.cls.predictions.transform.weight,
               "word embeddings (tied decoder)": model.plm.get_input_embeddings().weight,
               "decoder bias": model.plm.cls.predictions.decoder.bias}

    def loss_and_grads(scores):
        model.clear_gradients()
        loss = criterion(scores, gold)
        loss.backward()
        return float(loss), {name: p.grad.numpy().copy() for name, p in watched.items()}

    reference, vocab_logits = full_projection_scores(model, dict(batch))
    assert vocab_logits.shape[1] == batch["input_ids"].shape[1]  # the old path projected every position
    old_scores = model.verbalizer.process_outputs(vocab_logits, batch["masked_positions"])
    old_loss, old_grads = loss_and_grads(old_scores)
    new_scores = model(**batch)
    new_loss, new_grads = loss_and_grads(new_scores)

    scores = new_scores.numpy()
    np.testing.assert_allclose(softmax(scores), softmax(reference), atol=1e-5)
    assert (scores.argmax(-1) == reference.argmax(-1)).all()
    if manual_loss == "mlm":  # the MLM loss reads the normalised log-probabilities themselves
        np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert new_loss == pytest.approx(old_loss, rel=1e-5, abs=1e-6)
    for name, grad in old_grads.items():
        scale = np.abs(grad).max()
        assert scale > 0, name
        np.testing.assert_allclose(new_grads[name], grad, atol=1e-4 * scale, err_msg=name)


def test_manual_verbalizer_needs_equal_token_counts(tiny_model_dir, tmp_path):
    from utils.model.heads import label_word_token_count

    _, tokenizer = load_plm(tiny_model_dir)
    labels = LabelSet({"apple": "红色", "banana": "黄"}, path="label.txt", lines={"apple": 1, "banana": 2})
    with pytest.raises(UserError) as info:
        label_word_token_count(labels, tokenizer)
    message = str(info.value)
    assert message.startswith("label.txt: ") and "banana==黄: 1 (line 2)" in message and "apple==红色: 2" in message


def test_manual_verbalizer_rejects_wrong_mask_count(tiny_model_dir, keyword_data, tmp_path, capsys):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path / "o"),
            "--do_train", "--verbalizer", "manual", "--prompt", "{'soft': '水果'}{'text': 'text_a'}{'mask'}"]
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert "needs exactly 2 mask token(s)" in err and "{'mask': None, 'length': 2}" in err


def test_finetune_with_freeze_plm_is_refused(tiny_model_dir, keyword_data, tmp_path, capsys):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path / "o"),
            "--do_train", "--method", "finetune", "--freeze_plm"]
    assert run_cli(train.main, argv) == 2
    assert "nothing to train" in capsys.readouterr().err
