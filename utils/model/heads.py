"""The Paddle implementation of each kind of head (utils/model/head_kinds.py): its verbalizer, loss
and scores, both in training (`forward`) and in the exported graph (`export_scores`).

Each class is registered against the kind it implements with one line, `@implements(KIND)`;
assembly (utils/model/assembly.py) asks `get_head(name)`. Adding a kind of head is a `HeadKind`
plus a class here and its tests; template, flags and files do not change. (OpenPrompt's
`VERBALIZER_CLASS` plays the same role.)
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddlenlp.prompt import MaskedLMVerbalizer

from ..errors import UserError
from .head_kinds import (CLASSIFIER, CLASSIFIER_MULTI_LABEL, MANUAL, SOFT, SOFT_MULTI_LABEL, HeadKind, get_kind,
                         label_word_token_count)

HEADS: Dict[str, "Head"] = {}


def implements(kind: HeadKind):
    """Class decorator: register the class as the Paddle implementation of `kind`."""
    def register(cls):
        HEADS[kind.name] = cls(kind)
        return cls
    return register


def get_head(name: Optional[str]) -> "Head":
    return HEADS[get_kind(name).name]


class Head:
    """What one kind of head builds and computes; subclasses override what differs."""

    def __init__(self, kind: HeadKind):
        self.kind = kind

    def create(self, label_set, tokenizer, plm, options: Dict[str, Any]):
        """The verbalizer (None: the PLM's own head scores)."""
        raise NotImplementedError

    def loss(self, model, options: Dict[str, Any]) -> paddle.nn.Layer:
        return paddle.nn.CrossEntropyLoss()

    def soft_loss(self, model, options: Dict[str, Any]) -> paddle.nn.Layer:
        """The loss when training targets are probability vectors (a teacher's soft labels, gold as
        one-hot: utils/training/distill.py); equal to `loss` on one-hot targets and on class ids (dev)."""
        return SoftTargetCrossEntropy()

    def forward(self, model, inputs: Dict[str, Any], labels, return_dict, kwargs):
        """Training/evaluation forward: paddlenlp's `PromptModelForSequenceClassification.forward`."""
        from paddlenlp.prompt import PromptModelForSequenceClassification

        return PromptModelForSequenceClassification.forward(model, **inputs, labels=labels, return_dict=return_dict,
                                                            **kwargs)

    def export_scores(self, model, plm_inputs: Dict[str, Any], mask_positions):
        """`[batch, num_labels]` scores in the exported graph; `mask_positions()` gives the masks' flat
        batch*sequence indices (computed in the graph only when a head asks)."""
        return model.verbalizer.process_outputs(model.plm(**plm_inputs, return_dict=True).logits, mask_positions())

    def export_outputs(self, model, plm_inputs: Dict[str, Any], mask_positions):
        """`(scores, representation)` in one pass: `export_scores`' scores and the text's vector
        `[batch, hidden]` (the export's `mask_embedding`, read by utils/selection): the PLM's last hidden
        state at the [MASK] positions, averaged over the masks. Here (soft heads) the SoftVerbalizer made
        the MLM head an identity, so the PLM's output already is the hidden states."""
        sequence = model.plm(**plm_inputs, return_dict=True).logits
        positions = mask_positions()
        return model.verbalizer.process_outputs(sequence, positions), mask_mean(sequence, positions)


@implements(SOFT)
class SoftHead(Head):
    def create(self, label_set, tokenizer, plm, options):
        from paddlenlp.prompt import SoftVerbalizer

        return SoftVerbalizer(label_set.verbalizer_words(), tokenizer, plm)


@implements(CLASSIFIER)
class ClassifierHead(Head):
    def create(self, label_set, tokenizer, plm, options):
        return None

    def export_scores(self, model, plm_inputs, mask_positions):
        return model.plm(**plm_inputs, return_dict=True).logits

    def export_outputs(self, model, plm_inputs, mask_positions):
        """No [MASK]: the representation is the pooled [CLS] vector the classifier reads (the same
        computation as the PLM's forward: base model, dropout (identity in eval), classifier)."""
        plm = model.plm
        pooled = getattr(plm, plm.base_model_prefix)(**plm_inputs, return_dict=True)[1]
        return plm.classifier(plm.dropout(pooled)), pooled


@implements(MANUAL)
class ManualHead(Head):
    def create(self, label_set, tokenizer, plm, options):
        from paddlenlp.transformers.ernie.modeling import ErnieLMPredictionHead

        label_word_token_count(label_set, tokenizer)
        if not isinstance(getattr(getattr(plm, "cls", None), "predictions", None), ErnieLMPredictionHead):
            raise UserError(f"--verbalizer manual reads ERNIE's masked-LM head (ErnieForMaskedLM); the model is a "
                            f"{type(plm).__name__}: use --verbalizer soft", "--verbalizer")
        verbalizer = MultiMaskVerbalizer(label_set.verbalizer_words(), tokenizer)
        # The MLM loss needs the scores normalised over the vocabulary; predictions are the same either way.
        verbalizer.normalize = options.get("loss", "ce") == "mlm"
        return verbalizer

    def loss(self, model, options):
        if options.get("loss", "ce") == "mlm":
            return LabelWordNLLLoss(int(model.verbalizer.token_ids.shape[-1]))
        return paddle.nn.CrossEntropyLoss()

    def soft_loss(self, model, options):
        if options.get("loss", "ce") == "mlm":
            return LabelWordNLLLoss(int(model.verbalizer.token_ids.shape[-1]))  # takes soft targets too
        return SoftTargetCrossEntropy()

    def forward(self, model, inputs, labels, return_dict, kwargs):
        # Upstream's forward withholds `masked_positions` from the PLM, so the MLM head would project
        # every position onto the vocabulary; here the verbalizer runs the PLM on the masks only.
        from paddlenlp.transformers.model_outputs import SequenceClassifierOutput

        inputs = {**model.template.process_batch(inputs), **kwargs}
        plm_inputs = {k: v for k, v in inputs.items() if k in model.forward_keys and k != "masked_positions"}
        logits, mask_states = model.verbalizer.label_scores(model.plm, plm_inputs, inputs["masked_positions"])
        # Loss and outputs as upstream's; the "hidden states" (RGL's sentence embeddings) are the
        # MLM head's states at the masks, [batch, n_masks, hidden].
        loss = None if labels is None else F.cross_entropy(logits, labels.reshape([-1]))
        if return_dict:
            return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=mask_states)
        output = (logits, mask_states) if kwargs.get("return_hidden_states", False) else (logits,)
        if loss is not None:
            return (loss,) + output
        return output[0] if len(output) == 1 else output

    def export_scores(self, model, plm_inputs, mask_positions):
        return model.verbalizer.label_scores(model.plm, plm_inputs, mask_positions())[0]  # as in training

    def export_outputs(self, model, plm_inputs, mask_positions):
        sequence = model.plm.ernie(**plm_inputs, return_dict=True)[0]
        positions = mask_positions()
        scores = model.verbalizer.label_scores(model.plm, plm_inputs, positions, sequence=sequence)[0]
        return scores, mask_mean(sequence, positions)


def mask_mean(sequence, positions):
    """`[batch, hidden]`: the mean of `sequence` (`[batch, seq, hidden]`) over each example's masks,
    `positions` their flat batch*sequence indices (every example has the same number of masks)."""
    hidden = sequence.shape[-1]
    states = paddle.gather(sequence.reshape([-1, hidden]), positions)
    return states.reshape([paddle.shape(sequence)[0], -1, hidden]).mean(axis=1)


def is_soft(labels) -> bool:
    """Probability vectors `[batch, labels]` (floats), not class ids."""
    return labels.dtype in (paddle.float32, paddle.float64, paddle.float16, paddle.bfloat16) and \
        len(labels.shape) == 2 and labels.shape[-1] > 1


class SoftTargetCrossEntropy(paddle.nn.Layer):
    """Cross-entropy against a target distribution: -sum(p * log_softmax(logits)), batch mean (PET's
    distillation loss at temperature 1). Class ids (dev, gold) give the usual cross-entropy."""

    def forward(self, logits, labels):
        if not is_soft(labels):
            return F.cross_entropy(logits, labels.reshape([-1]).astype("int64"))
        return -(labels.astype(logits.dtype) * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


class BCEWithLogits(paddle.nn.Layer):
    """Mean binary cross-entropy over every (example, label) with float multi-hot targets."""

    def forward(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels.astype(logits.dtype))


@implements(SOFT_MULTI_LABEL)
class MultiLabelSoftHead(SoftHead):
    """The SoftVerbalizer's label-word-initialised head, read as one sigmoid per label (upstream's
    multi_label few-shot app: SoftVerbalizer + BCEWithLogitsLoss). Scores and export as `soft`."""

    def loss(self, model, options):
        return BCEWithLogits()

    def soft_loss(self, model, options):
        return BCEWithLogits()  # BCE takes probabilities as targets


@implements(CLASSIFIER_MULTI_LABEL)
class MultiLabelClassifierHead(ClassifierHead):
    """The [CLS] baseline with one sigmoid per label (upstream's multi-label fine-tuning)."""

    def loss(self, model, options):
        return BCEWithLogits()

    def soft_loss(self, model, options):
        return BCEWithLogits()


class MultiMaskVerbalizer(MaskedLMVerbalizer):
    """paddlenlp's MaskedLMVerbalizer giving one score per label from ERNIE's MLM head at the masks.

    The label word's k-th token is read at the k-th `[MASK]`. Scores are `[batch, num_labels]`
    like SoftVerbalizer's, so metrics, export and infer.py are shared; training, evaluation and
    the exported graph all compute them with `label_scores`:

    * default: score = sum over masks of the head's logit for the label word's token (PET's
      unnormalised label score). Only the label tokens' decoder rows are computed, a
      `[hidden, num_labels]` product per mask instead of `[hidden, vocab]`.
    * `normalize = True` (`--manual_loss mlm`, whose loss is the label word's MLM loss): score =
      sum over masks of log P(token) under the softmax over the whole vocabulary.

    The two differ by sum over masks of logsumexp(mask logits), the same for every label, so
    softmax over labels, cross-entropy (value and gradient), argmax and confidences are identical.
    """

    normalize = False

    def create_parameters(self):
        # [n_masks, num_labels]: the label words' k-th token ids, a constant of the graph.
        index = np.ascontiguousarray(self.token_ids.numpy()[:, 0, :].T)
        self.register_buffer("mask_token_index", paddle.to_tensor(index, dtype="int64"), persistable=False)

    def process_outputs(self, outputs, masked_positions=None):
        """Normalised scores from vocabulary logits `[batch, n_masks, vocab]` (or `[batch, seq, vocab]`
        with flat `masked_positions`)."""
        outputs = super().process_outputs(outputs, masked_positions)  # [batch, n_masks, vocab]
        # log_softmax, written out: Paddle 3.3's CPU log_softmax kernel is quadratic in the last
        # axis (14 s for [32, 2, 40k] against 0.03 s this way; same values and gradient).
        log_probs = outputs - paddle.logsumexp(outputs, axis=-1, keepdim=True)
        # aggregate_multiple_mask(..., "sum") as one gather: its Python loop over a dynamic mask
        # count would become a Loop op in the exported graph.
        index = paddle.expand(self.mask_token_index.unsqueeze(0),
                              [paddle.shape(log_probs)[0], *self.mask_token_index.shape])
        return paddle.take_along_axis(log_probs, index, axis=2).sum(axis=1)

    def label_scores(self, plm, plm_inputs: Dict[str, Any], masked_positions, sequence=None):
        """`(scores [batch, num_labels], head states at the masks [batch, n_masks, hidden])`.

        `plm` is an ErnieForMaskedLM, `plm_inputs` its encoder's inputs, `masked_positions` flat
        indices into batch*sequence, every example's masks in order (as the prompt collator and
        the exported graph make them). The head (transform, activation, layer norm, decoder)
        works per position, so gathering the masks first changes no value. `sequence`: the
        encoder's output when the caller already has it.
        """
        head = plm.cls.predictions
        if sequence is None:
            sequence = plm.ernie(**plm_inputs, return_dict=True)[0]
        hidden = sequence.shape[-1]
        states = paddle.gather(sequence.reshape([-1, hidden]), masked_positions)
        states = head.layer_norm(head.activation(head.transform(states)))
        n_masks, num_labels = self.mask_token_index.shape
        if self.normalize:
            scores = self.process_outputs(head.decoder(states).reshape([-1, n_masks, head.decoder.weight.shape[0]]))
        else:
            ids = self.mask_token_index.reshape([-1])
            weight = paddle.gather(head.decoder.weight, ids).reshape([n_masks, num_labels, hidden])
            bias = paddle.gather(head.decoder.bias, ids).reshape([n_masks, 1, num_labels])
            per_mask = states.reshape([-1, n_masks, hidden]).transpose([1, 0, 2])  # [n_masks, batch, hidden]
            scores = (paddle.matmul(per_mask, weight, transpose_y=True) + bias).sum(axis=0)
        return scores, states.reshape([-1, n_masks, hidden])


class LabelWordNLLLoss(paddle.nn.Layer):
    """The MLM loss of the gold label word at the mask positions (transformers_tasks' p-tuning).

    With `MultiMaskVerbalizer.normalize` scores (sum of per-mask log-probabilities over the whole
    vocabulary) this is the mean over masks of the token-level cross-entropy.
    """

    def __init__(self, num_masks: int):
        super().__init__()
        self.num_masks = num_masks

    def forward(self, scores, labels):
        if is_soft(labels):  # a teacher's distribution over the label words
            return -(labels.astype(scores.dtype) * scores).sum(axis=-1).mean() / self.num_masks
        gold = paddle.take_along_axis(scores, labels.reshape([-1, 1]).astype("int64"), axis=1)
        return -gold.mean() / self.num_masks
