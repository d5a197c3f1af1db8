"""Assembling the prompt model: PLM + template + verbalizer, and rebuilding it from a checkpoint.

Every checkpoint and output directory gets `ptuning_config.json` (the PLM's config, the template
parts, the labels, max_seq_length), so export.py can rebuild the exact architecture from the
checkpoint alone, without the pretrained weights.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from . import compat
from .errors import UserError
from .files import read_json, write_json_atomic
from .labels import LabelSet
from .prompt import copy_parts

compat.apply()

import paddle.nn.functional as F  # noqa: E402
from paddlenlp.prompt import (  # noqa: E402  (after the compat fixes)
    AutoTemplate,
    MaskedLMVerbalizer,
    PromptModelForSequenceClassification,
    SoftVerbalizer,
)
from paddlenlp.transformers.ernie.modeling import ErnieLMPredictionHead  # noqa: E402
from paddlenlp.transformers.model_outputs import SequenceClassifierOutput  # noqa: E402

RUN_CONFIG_FILE = "ptuning_config.json"
MODEL_STATE_FILE = "model_state.pdparams"
VERBALIZERS = ("soft", "manual")


class PromptModel(PromptModelForSequenceClassification):
    """paddlenlp's prompt classifier, with `--freeze_dropout` that survives `model.train()`, and the
    manual verbalizer scoring the [MASK] positions only.

    Upstream puts the PLM in eval mode once, but the Trainer calls `model.train()` every step,
    which turns the PLM's dropout back on. Upstream's `forward` also withholds `masked_positions`
    from the PLM, so its MLM head projects every position onto the vocabulary before the
    verbalizer keeps the masks; with `MultiMaskVerbalizer` the verbalizer runs the PLM itself
    (`label_scores`) and projects only the masks. Other verbalizers take upstream's path.
    """

    def train(self):
        super().train()
        if self.freeze_dropout:
            self.plm.eval()
        return self

    def forward(self, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, masked_positions=None,
                soft_token_ids=None, encoder_ids=None, labels=None, return_dict=None, **kwargs):
        inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids,
                  "attention_mask": attention_mask, "masked_positions": masked_positions,
                  "soft_token_ids": soft_token_ids, "encoder_ids": encoder_ids}
        if not isinstance(self.verbalizer, MultiMaskVerbalizer):
            return super().forward(**inputs, labels=labels, return_dict=return_dict, **kwargs)
        inputs = {**self.template.process_batch(inputs), **kwargs}
        plm_inputs = {k: v for k, v in inputs.items() if k in self.forward_keys and k != "masked_positions"}
        logits, mask_states = self.verbalizer.label_scores(self.plm, plm_inputs, inputs["masked_positions"])
        # Loss and outputs as upstream's; the "hidden states" (RGL's sentence embeddings) are the
        # MLM head's states at the masks, [batch, n_masks, hidden].
        loss = None if labels is None else F.cross_entropy(logits, labels.reshape([-1]))
        if return_dict:
            return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=mask_states)
        output = (logits, mask_states) if kwargs.get("return_hidden_states", False) else (logits,)
        if loss is not None:
            return (loss,) + output
        return output[0] if len(output) == 1 else output


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

    def label_scores(self, plm, plm_inputs: Dict[str, Any], masked_positions):
        """`(scores [batch, num_labels], head states at the masks [batch, n_masks, hidden])`.

        `plm` is an ErnieForMaskedLM, `plm_inputs` its encoder's inputs, `masked_positions` flat
        indices into batch*sequence, every example's masks in order (as the prompt collator and
        the exported graph make them). The head (transform, activation, layer norm, decoder)
        works per position, so gathering the masks first changes no value.
        """
        head = plm.cls.predictions
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
    vocabulary; `criterion_for` sets it) this is the mean over masks of the token-level cross-entropy.
    """

    def __init__(self, num_masks: int):
        super().__init__()
        self.num_masks = num_masks

    def forward(self, scores, labels):
        gold = paddle.take_along_axis(scores, labels.reshape([-1, 1]).astype("int64"), axis=1)
        return -gold.mean() / self.num_masks


def label_word_token_count(label_set: LabelSet, tokenizer) -> int:
    """Tokens per label word; a manual verbalizer needs the same count for every label."""
    counts = {label: len(tokenizer(word, add_special_tokens=False)["input_ids"])
              for label, word in label_set.label_words.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{label}=={label_set.label_words[label]}: {n} (line {label_set.lines.get(label, '?')})"
                           for label, n in counts.items())
        raise UserError(f"--verbalizer manual predicts one token per [MASK], so every label word needs the same "
                        f"number of tokens; found {detail}", label_set.path or "label.txt")
    count = next(iter(counts.values()))
    if count == 0:
        raise UserError("a label word tokenizes to nothing", label_set.path or "label.txt")
    return count


def create_template(parts: List[Dict[str, Any]], tokenizer, max_seq_length: int, plm):
    return AutoTemplate.create_from(copy_parts(parts), tokenizer, max_seq_length, model=plm)


def prompt_token_count(template) -> int:
    """Tokens the template adds around the texts (soft, hard, mask, sep, [CLS]/[SEP])."""
    prompt_tokenizer = template.prompt_tokenizer
    limit = prompt_tokenizer.max_length
    prompt_tokenizer.max_length = 1 << 30  # measure without truncation (it asserts when too short)
    try:
        encoded = template({key: "" for key in template.example_keys})
    finally:
        prompt_tokenizer.max_length = limit
    return len(encoded["input_ids"])


def check_max_seq_length(template, max_seq_length: int) -> None:
    fixed = prompt_token_count(template)
    n_texts = len(template.example_keys)
    if fixed + n_texts > max_seq_length:
        raise UserError(
            f"is {max_seq_length}, but the prompt alone takes {fixed} tokens (with [CLS], [SEP] and the mask), "
            f"leaving no room for the text; raise --max_seq_length or shorten the prompt", "--max_seq_length")


def create_verbalizer(kind: Optional[str], label_set: LabelSet, tokenizer, plm):
    """`soft`: SoftVerbalizer (takes over the MLM head); `manual`: MultiMaskVerbalizer; None: fine-tuning."""
    if kind is None:
        return None
    if kind == "soft":
        return SoftVerbalizer(label_set.verbalizer_words(), tokenizer, plm)
    if kind == "manual":
        label_word_token_count(label_set, tokenizer)
        if not isinstance(getattr(getattr(plm, "cls", None), "predictions", None), ErnieLMPredictionHead):
            raise UserError(f"--verbalizer manual reads ERNIE's masked-LM head (ErnieForMaskedLM); the model is a "
                            f"{type(plm).__name__}: use --verbalizer soft", "--verbalizer")
        return MultiMaskVerbalizer(label_set.verbalizer_words(), tokenizer)
    raise UserError(f"must be one of {', '.join(VERBALIZERS)}, got {kind!r}", "--verbalizer")


def build_prompt_model(plm, tokenizer, parts: List[Dict[str, Any]], label_set: LabelSet, max_seq_length: int,
                       freeze_plm: bool = False, freeze_dropout: bool = False,
                       verbalizer: Optional[str] = "soft") -> PromptModel:
    """Template from `parts` and a verbalizer for `label_set` around `plm`.

    `verbalizer=None` is the fine-tuning baseline: `plm` is a sequence classifier over [CLS].
    """
    template = create_template(parts, tokenizer, max_seq_length, plm)
    check_max_seq_length(template, max_seq_length)
    return PromptModel(plm, template, create_verbalizer(verbalizer, label_set, tokenizer, plm),
                       freeze_plm=freeze_plm or freeze_dropout, freeze_dropout=freeze_dropout)


def criterion_for(model: PromptModel, manual_loss: str = "ce") -> paddle.nn.Layer:
    """Cross-entropy over the label scores; `manual_loss="mlm"`: the label word's MLM loss instead.

    The MLM loss needs the manual verbalizer's scores normalised over the vocabulary, so this also
    sets `MultiMaskVerbalizer.normalize` (predictions are the same either way).
    """
    if isinstance(model.verbalizer, MultiMaskVerbalizer):
        model.verbalizer.normalize = manual_loss == "mlm"
        if manual_loss == "mlm":
            return LabelWordNLLLoss(int(model.verbalizer.token_ids.shape[-1]))
    return paddle.nn.CrossEntropyLoss()


def run_config(plm, parts, label_set: LabelSet, max_seq_length: int, model_name_or_path: str,
               method: str = "ptuning", verbalizer: Optional[str] = "soft") -> dict:
    return {
        "format": 1,
        "method": str(method),
        "verbalizer": None if verbalizer is None else str(verbalizer),
        "model_name_or_path": model_name_or_path,
        "model_class": type(plm).__name__,
        "plm_config": plm.config.to_dict(),
        "template": parts,
        "labels": label_set.labels,
        "label_words": label_set.words_in_order(),
        "max_seq_length": max_seq_length,
    }


def save_run_config(output_dir: str, config: dict) -> None:
    write_json_atomic(os.path.join(output_dir, RUN_CONFIG_FILE), config)


RUN_CONFIG_KEYS = ("format", "method", "verbalizer", "model_name_or_path", "model_class", "plm_config", "template",
                   "labels", "label_words", "max_seq_length")
MODEL_CLASS_SUFFIXES = ("ForMaskedLM", "ForSequenceClassification")


def check_run_config(config, path: str) -> dict:
    """Validate a loaded `ptuning_config.json` (hand edits included): every key known and well typed."""
    from .args import Method, VerbalizerKind
    from .prompt import check_parts, count_masks

    def bad(key: str, message: str) -> UserError:
        return UserError(f"{key}: {message} (edited or damaged? re-run training to recreate it)", path)

    if not isinstance(config, dict):
        raise UserError(f"must be a JSON object, found {type(config).__name__}", path)
    unknown = sorted(set(config) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise bad(unknown[0], f"unknown key (known: {', '.join(RUN_CONFIG_KEYS)})")
    for key in ("plm_config", "template", "labels", "label_words", "max_seq_length", "model_class"):
        if key not in config:
            raise bad(key, "missing")
    if config.get("format", 1) != 1:
        raise bad("format", f"{config.get('format')!r} is not a format this version reads (1)")
    try:
        method = Method.parse(config.get("method", "ptuning"))
        verbalizer = None if config.get("verbalizer") is None else VerbalizerKind.parse(config["verbalizer"])
    except ValueError as exc:
        raise bad("method/verbalizer", str(exc)) from None
    if (method == Method.FINETUNE) != (verbalizer is None):
        raise bad("verbalizer", f"{verbalizer!r} does not fit method {method.value!r}")
    labels, words = config["labels"], config["label_words"]
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise bad("labels", "must be a list of at least two non-empty label names")
    if len(set(labels)) != len(labels):
        raise bad("labels", "has duplicates")
    if labels != sorted(labels):
        raise bad("labels", "must be in output order (sorted by name)")
    if not (isinstance(words, list) and len(words) == len(labels) and all(isinstance(x, str) and x for x in words)):
        raise bad("label_words", "must be a list of non-empty strings, one per label")
    length = config["max_seq_length"]
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 4):
        raise bad("max_seq_length", f"must be an integer of at least 4, got {length!r}")
    plm_config = config["plm_config"]
    if not isinstance(plm_config, dict):
        raise bad("plm_config", "must be an object")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
        value = plm_config.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise bad(f"plm_config.{key}", f"must be a positive integer, got {value!r}")
    if plm_config["hidden_size"] % plm_config["num_attention_heads"]:
        raise bad("plm_config.hidden_size", "must be a multiple of num_attention_heads")
    if length > plm_config["max_position_embeddings"]:
        raise bad("max_seq_length", f"{length} exceeds the model's {plm_config['max_position_embeddings']} positions")
    model_class = config["model_class"]
    if not (isinstance(model_class, str) and model_class.endswith(MODEL_CLASS_SUFFIXES)):
        raise bad("model_class", f"must name a paddlenlp *ForMaskedLM or *ForSequenceClassification, got {model_class!r}")
    if (method == Method.FINETUNE) != model_class.endswith("ForSequenceClassification"):
        raise bad("model_class", f"{model_class} does not fit method {method.value!r}")
    template = config["template"]
    check_parts(template, f"{path}: template")
    if method == Method.PTUNING and verbalizer == VerbalizerKind.SOFT and count_masks(template) != 1:
        raise bad("template", f"the SoftVerbalizer needs exactly one mask, found {count_masks(template)}")
    return config


def load_run_config(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, RUN_CONFIG_FILE)
    if not os.path.isdir(checkpoint_dir):
        raise UserError("checkpoint directory not found", checkpoint_dir)
    if not os.path.isfile(path):
        raise UserError(f"is not a checkpoint of this tool: {RUN_CONFIG_FILE} is missing", checkpoint_dir)
    return check_run_config(read_json(path, what="checkpoint config"), path)


def tensor_aliases(model: paddle.nn.Layer) -> Dict[str, str]:
    """`{alias: name}` for state-dict entries that are the same tensor as an earlier entry.

    The template holds the PLM's word embeddings, and paddle's LSTM lists its weights twice; saving
    each once makes an ERNIE-base checkpoint ~140 MB (model) + ~140 MB (template) smaller.
    """
    first: Dict[int, str] = {}
    aliases: Dict[str, str] = {}
    for name, tensor in model.state_dict().items():
        key = id(tensor)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def unique_state_dict(model: paddle.nn.Layer) -> Dict[str, paddle.Tensor]:
    """The state dict with every tensor once (aliases dropped; `load_state` restores them)."""
    aliases = tensor_aliases(model)
    return {name: tensor for name, tensor in model.state_dict().items() if name not in aliases}


def read_state_file(path: str) -> Dict[str, Any]:
    try:
        return paddle.load(path, return_numpy=True)
    except Exception as exc:  # paddle raises many types for truncated/corrupt files
        raise UserError(f"cannot read the weights (corrupt or truncated?): {type(exc).__name__}: {exc}",
                        path) from None


def set_state_strictly(model: paddle.nn.Layer, state: Dict[str, Any], path: str) -> None:
    """Load `state` into `model`: every tensor present (directly or as an alias) with the right shape."""
    aliases = tensor_aliases(model)
    expected = model.state_dict()
    state = dict(state)
    for alias, name in aliases.items():
        if alias not in state and name in state:
            state[alias] = state[name]
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and list(np.shape(state[k])) != list(expected[k].shape)]
    unexpected = [k for k in state if k not in expected]
    if missing or wrong or unexpected:
        raise UserError(f"weights do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
                        f"{len(wrong)} of another shape (e.g. {wrong[:3]}), {len(unexpected)} unknown "
                        f"(e.g. {unexpected[:3]})", path)
    model.set_state_dict(state)


def load_state(model: paddle.nn.Layer, checkpoint_dir: str) -> None:
    """Load `model_state.pdparams` strictly (see `set_state_strictly`)."""
    path = os.path.join(checkpoint_dir, MODEL_STATE_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{MODEL_STATE_FILE} is missing", checkpoint_dir)
    set_state_strictly(model, read_state_file(path), path)


WEIGHT_SUFFIXES = (".pdparams", ".pdopt", ".pth", ".bin", ".safetensors", ".pdiparams")


def private_tokenizer_copy(checkpoint_dir: str) -> str:
    """A process-private copy of the checkpoint's tokenizer files to load from.

    paddlenlp tokenizers re-copy their vocab from the directory they were loaded from at every
    save; a resumed run rotates that very checkpoint away, so its next save would fail.
    """
    import atexit
    import shutil
    import tempfile

    copy = tempfile.mkdtemp(prefix="ptuning-tokenizer-")
    atexit.register(shutil.rmtree, copy, True)
    for name in os.listdir(checkpoint_dir):
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name != "checkpoint_complete.json":
            shutil.copyfile(path, os.path.join(copy, name))
    return copy


def rebuild_from_checkpoint(checkpoint_dir: str, tokenizer=None, verify: bool = True) -> tuple:
    """Rebuild `(prompt_model, tokenizer, run_config)` from a checkpoint alone (no pretrained weights).

    The checkpoint's files are verified against its marker first (`verify=False` when the caller
    already did, e.g. for a resume).
    """
    import paddlenlp.transformers as transformers

    from .checkpoints import verify as verify_checkpoint

    if verify:
        verify_checkpoint(checkpoint_dir, purpose="model")
    config = load_run_config(checkpoint_dir)
    if tokenizer is None:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(private_tokenizer_copy(checkpoint_dir))
        except Exception as exc:  # a damaged vocab or tokenizer config fails in many ways
            raise UserError(f"cannot load the tokenizer saved in the checkpoint: {type(exc).__name__}: {exc}",
                            checkpoint_dir) from None
        if len(tokenizer) > int(config["plm_config"]["vocab_size"]) or len(tokenizer) < 5:
            raise UserError(f"the saved tokenizer has {len(tokenizer)} tokens but the model "
                            f"{config['plm_config']['vocab_size']}: vocab.txt is damaged or from another model",
                            os.path.join(checkpoint_dir, "vocab.txt"))
    config_path = os.path.join(checkpoint_dir, RUN_CONFIG_FILE)
    model_class = getattr(transformers, config["model_class"], None)
    if model_class is None:
        raise UserError(f"model_class: unknown model class {config['model_class']!r}", config_path)
    try:
        plm = model_class(model_class.config_class(**config["plm_config"]))
    except Exception as exc:  # any bad value in a hand-edited config ends here
        raise UserError(f"plm_config: cannot build {config['model_class']} from it: {type(exc).__name__}: {exc}",
                        config_path) from None
    label_set = LabelSet(label_words=dict(zip(config["labels"], config["label_words"])),
                         path=os.path.join(checkpoint_dir, RUN_CONFIG_FILE))
    model = build_prompt_model(plm, tokenizer, config["template"], label_set, config["max_seq_length"],
                               verbalizer=config.get("verbalizer", "soft"))
    load_state(model, checkpoint_dir)
    model.eval()
    return model, tokenizer, config
