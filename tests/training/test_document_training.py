"""--long_text window --window_training document: the loss is each document's, on its windows'
aggregated probabilities, and a batch holds whole documents (utils/training/long_text.py)."""
import json
import types

import numpy as np
import paddle
import pytest

import train
from conftest import FAST, assert_same_run, killed_at
from utils.errors import run_cli
from utils.model.heads import BCEWithLogits, SoftTargetCrossEntropy
from utils.task.windows import aggregate
from utils.testing.synthetic import PROMPT, write_long_keyword_dataset
from utils.training.long_text import WINDOW_COUNTS, WINDOWS_KEY, DocumentCollator, document_logits
from utils.training.trainer import PTuningTrainer, SeededBatchSampler

# two documents: 3 windows (label 2) and 1 window (label 0); 3 labels
WINDOW_LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0], [-1.0, 1.0, 0.5], [0.3, -0.2, 0.1]], dtype="float32")
COUNTS, LABELS = [3, 1], [2, 0]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class FixedLogits(paddle.nn.Layer):
    """A "model" whose window logits are its one parameter: the gradient each window receives is visible."""

    def __init__(self, logits):
        super().__init__()
        self.logits = self.create_parameter(list(logits.shape), default_initializer=paddle.nn.initializer.Assign(
            logits))

    def forward(self, input_ids, labels=None, return_hidden_states=False, **_):
        assert input_ids.shape[0] == self.logits.shape[0]  # one input per window
        return (self.logits, None) if return_hidden_states else self.logits


def document_loss(criterion, multi_label, aggregation, labels, use_rdrop=False):
    """The loss the trainer takes on a document batch (`PTuningTrainer.compute_loss`), and the model."""
    trainer = object.__new__(PTuningTrainer)  # the loss alone: no model, data or output directory
    trainer.criterion = criterion
    trainer.args = types.SimpleNamespace(use_rdrop=use_rdrop, use_rgl=False, alpha_rdrop=5.0)
    trainer.spec = types.SimpleNamespace(decoder=types.SimpleNamespace(multi_label=multi_label,
                                                                        activation="sigmoid" if multi_label else "x"),
                                         long_text=types.SimpleNamespace(aggregation=aggregation))
    if use_rdrop:
        from paddlenlp.losses import RDropLoss
        trainer.rdrop_criterion = RDropLoss()
    model = FixedLogits(WINDOW_LOGITS)
    inputs = {"input_ids": paddle.zeros([len(WINDOW_LOGITS), 5], dtype="int64"), "labels": labels,
              WINDOW_COUNTS: paddle.to_tensor(COUNTS, dtype="int64")}
    return trainer.compute_loss(model, inputs), model


@pytest.mark.parametrize("aggregation", ["mean", "vote"])
def test_a_documents_loss_is_the_cross_entropy_of_its_windows_mean_probability(aggregation):
    """Multi-class, by hand: -log(mean over the document's windows of softmax)[gold], averaged over
    documents (vote has no gradient: it trains on the mean, the vote's tie-break); every window of
    the batch receives gradient, the windows without the gold label's evidence included."""
    loss, model = document_loss(paddle.nn.CrossEntropyLoss(), False, aggregation,
                                paddle.to_tensor(LABELS, dtype="int64"))
    probs = softmax(WINDOW_LOGITS.astype("float64"))
    expected = (-np.log(probs[:3].mean(0)[2]) - np.log(probs[3][0])) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    gradient = model.logits.grad.numpy()
    assert (np.abs(gradient).sum(-1) > 1e-4).all(), gradient
    # the gradient of the mean: window w of a 3-window document gets p_w(y) / sum_v p_v(y) of the push
    share = probs[:3, 2] / probs[:3, 2].sum()
    np.testing.assert_allclose(gradient[:3, 2], -share * (1 - probs[:3, 2]) / 2, rtol=1e-4)


def test_max_trains_the_window_that_decides_each_label():
    """Multi-class max: log of the per-label max probability, renormalised (inference's max); the
    gradient reaches the windows that hold a label's max."""
    loss, model = document_loss(paddle.nn.CrossEntropyLoss(), False, "max", paddle.to_tensor(LABELS, dtype="int64"))
    probs = softmax(WINDOW_LOGITS.astype("float64"))
    best = probs[:3].max(0)
    assert float(loss) == pytest.approx((-np.log(best[2] / best.sum()) - np.log(probs[3][0])) / 2, rel=1e-5)
    loss.backward()
    deciding = set(probs[:3].argmax(0)) | {3}
    assert {i for i, g in enumerate(model.logits.grad.numpy()) if np.abs(g).sum() > 1e-6} == deciding


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_a_label_sets_loss_is_the_bce_of_each_labels_aggregated_probability(aggregation):
    """Label sets: BCE on each label's mean (or max) of the windows' sigmoids, every label, every document."""
    targets = np.array([[1, 0, 1], [0, 1, 0]], dtype="float32")
    loss, model = document_loss(BCEWithLogits(), True, aggregation, paddle.to_tensor(targets))
    probs = sigmoid(WINDOW_LOGITS.astype("float64"))
    q = np.stack([probs[:3].mean(0) if aggregation == "mean" else probs[:3].max(0), probs[3]])
    expected = -(targets * np.log(q) + (1 - targets) * np.log(1 - q)).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    if aggregation == "mean":
        assert (np.abs(model.logits.grad.numpy()).sum(-1) > 1e-4).all()


def test_a_teachers_soft_targets_and_r_drop_take_the_documents_probabilities():
    """Distillation's soft targets: -sum(t * log q) per document; R-Drop's second pass is a document's too
    (with a deterministic model its KL is 0 and the loss is the cross-entropy)."""
    targets = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype="float32")
    probs = softmax(WINDOW_LOGITS.astype("float64"))
    q = np.stack([probs[:3].mean(0), probs[3]])
    loss, _ = document_loss(SoftTargetCrossEntropy(), False, "mean", paddle.to_tensor(targets))
    assert float(loss) == pytest.approx(-(targets * np.log(q)).sum(-1).mean(), rel=1e-5)
    loss, _ = document_loss(paddle.nn.CrossEntropyLoss(), False, "mean", paddle.to_tensor(LABELS, dtype="int64"),
                            use_rdrop=True)
    assert float(loss) == pytest.approx(-np.log(q[[0, 1], LABELS]).mean(), rel=1e-5)


@pytest.mark.parametrize("multi_label, aggregation", [(False, "mean"), (False, "max"), (False, "vote"),
                                                      (True, "mean"), (True, "max")])
def test_the_trained_document_logits_decode_as_inference_aggregates(multi_label, aggregation):
    """What training optimises is what infer.py reads: the same probabilities (vote: its mean part)."""
    rows = document_logits(paddle.to_tensor(WINDOW_LOGITS), COUNTS, multi_label, aggregation).numpy()
    reference = aggregate(WINDOW_LOGITS, COUNTS, multi_label, "mean" if aggregation == "vote" else aggregation)
    decode = sigmoid if multi_label else softmax
    np.testing.assert_allclose(decode(rows.astype("float64")), decode(reference.astype("float64")), atol=1e-6)


def test_a_batch_holds_whole_documents_and_one_label_row_each():
    """Over two epochs of the seeded sampler, every batch is whole documents: all of a document's
    windows, consecutive, in one batch, `window_counts` saying how many, and the document's labels once."""
    rng = np.random.default_rng(0)
    documents = [{WINDOWS_KEY: [{"input_ids": [doc, w], "labels": doc % 3} for w in range(int(rng.integers(1, 5)))]}
                 for doc in range(11)]

    def inner(features):  # as PromptDataCollatorWithPadding: one row per input, labels as a tensor
        return {"input_ids": paddle.to_tensor([f["input_ids"] for f in features]),
                "labels": paddle.to_tensor([f["labels"] for f in features], dtype="int64")}

    collator = DocumentCollator(inner)
    sampler = SeededBatchSampler(documents, batch_size=4, shuffle=True, seed=3)
    seen = []
    for _ in range(2):
        for indices in sampler:
            batch = collator([documents[i] for i in indices])
            counts = batch[WINDOW_COUNTS].tolist()
            assert counts == [len(documents[i][WINDOWS_KEY]) for i in indices]
            ids = batch["input_ids"].numpy()
            assert ids[:, 0].tolist() == [i for i, n in zip(indices, counts) for _ in range(n)]
            assert ids[:, 1].tolist() == [w for n in counts for w in range(n)]
            assert batch["labels"].tolist() == [i % 3 for i in indices]
            seen += list(indices)
    assert sorted(seen) == sorted(list(range(11)) * 2)
    # evaluation's batches of windows pass through unchanged
    assert collator([{"input_ids": [0, 0], "labels": 1}])["labels"].tolist() == [1]


@pytest.mark.slow
def test_document_training_trains_per_document_and_resumes_exactly_after_a_kill(tiny_model_dir, tmp_path):
    """Kill -9 a --window_training document run while it saves checkpoint-6; resumed from checkpoint-4
    it ends as the uninterrupted run (weights, losses, logs). Its epochs count documents (24 of
    them, 8 a batch: 3 steps an epoch), not windows."""
    data_dir = write_long_keyword_dataset(str(tmp_path / "data"), hidden=32, tail=12, train_per_class=8,
                                          dev_per_class=2, test_per_class=2)
    base = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--prompt", PROMPT, "--do_train",
            "--long_text", "window", "--window_training", "document", "--max_steps", "8", "--save_steps", "2",
            "--logging_steps", "1", "--device", "cpu", *FAST]
    killed, pause = tmp_path / "killed", tmp_path / "paused"
    killed_at("train.py", [*base, "--output_dir", str(killed)], "checkpoint-6 written", pause)
    assert not (killed / "checkpoint-6" / "checkpoint_complete.json").exists()
    uninterrupted = str(tmp_path / "uninterrupted")
    assert run_cli(train.main, base + ["--output_dir", uninterrupted]) == 0
    assert run_cli(train.main, base + ["--output_dir", str(killed), "--resume_from_checkpoint", str(killed)]) == 0
    assert_same_run(uninterrupted, str(killed))
    with open(f"{uninterrupted}/trainer_state.json", encoding="utf-8") as fp:
        state = json.load(fp)
    assert state["epoch"] == pytest.approx(8 / 3, abs=0.01)  # 24 documents; their ~60 windows would be ~8 steps
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 8 and all(np.isfinite(losses))
    # R-Drop works per document too
    assert run_cli(train.main, base + ["--output_dir", str(tmp_path / "rdrop"), "--max_steps", "2",
                                       "--use_rdrop"]) == 0
