"""Assembling the prompt model (PLM + template + head) and its weights on disk.

`build_from_spec` is the one assembly path from a `ModelSpec` (utils/model/spec.py), for training,
for a resumed or evaluated checkpoint and for export; `build_prompt_model` puts the parts together.
What differs between kinds of head is in the registry (utils/model/heads.py); here only the template
and the state-dict handling.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import paddle
from paddlenlp.prompt import AutoTemplate, PromptModelForSequenceClassification

from ..model import compat
from ..errors import UserError
from .heads import get_head
from ..dataset.labels import LabelSet
from .prompt import copy_parts
from ..rundir.names import COMPLETE_MARKER, MODEL_STATE_FILE, SPEC_FILE, VOCAB_FILE
from .spec import ModelSpec


class PromptModel(PromptModelForSequenceClassification):
    """paddlenlp's prompt classifier whose forward is its head's (utils/model/heads.py), with
    `--freeze_dropout` that survives `model.train()` (upstream puts the PLM in eval mode once, but
    the Trainer calls `model.train()` every step, which turns the PLM's dropout back on)."""

    def __init__(self, plm, template, verbalizer, head, freeze_plm: bool = False, freeze_dropout: bool = False):
        super().__init__(plm, template, verbalizer, freeze_plm=freeze_plm, freeze_dropout=freeze_dropout)
        self.head = head  # a registry entry (plain object, not a layer)

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
        return self.head.forward(self, inputs, labels, return_dict, kwargs)


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


def build_prompt_model(plm, tokenizer, parts: List[Dict[str, Any]], label_set: LabelSet, max_seq_length: int,
                       freeze_plm: bool = False, freeze_dropout: bool = False, head: str = "soft",
                       head_options: Optional[Dict[str, Any]] = None) -> PromptModel:
    """Template from `parts` and the `head` (registry name) for `label_set` around `plm`."""
    compat.require()
    kind = get_head(head)
    template = create_template(parts, tokenizer, max_seq_length, plm)
    check_max_seq_length(template, max_seq_length)
    return PromptModel(plm, template, kind.create(label_set, tokenizer, plm, dict(head_options or {})), kind,
                       freeze_plm=freeze_plm or freeze_dropout, freeze_dropout=freeze_dropout)


def build_from_spec(spec: ModelSpec, tokenizer, plm=None, freeze_plm: bool = False,
                    freeze_dropout: bool = False) -> PromptModel:
    """The prompt model `spec` describes: around `plm`, or a PLM built (randomly initialised) from
    the spec's `plm_config` to receive a checkpoint's weights."""
    if plm is None:
        plm = plm_from_config(spec.model_class, spec.plm_config)
    return build_prompt_model(plm, tokenizer, spec.template, spec.label_set, spec.max_seq_length,
                              freeze_plm=freeze_plm, freeze_dropout=freeze_dropout, head=spec.head,
                              head_options=spec.head_options)


def criterion_for(model: PromptModel, head_options: Optional[Dict[str, Any]] = None,
                  soft_targets: bool = False) -> paddle.nn.Layer:
    """The training loss of the model's head (`soft_targets`: trained on a teacher's probabilities)."""
    options = dict(head_options or {})
    return model.head.soft_loss(model, options) if soft_targets else model.head.loss(model, options)


def plm_from_config(model_class: str, plm_config: Dict[str, Any]):
    """A randomly initialised PLM of the saved architecture, to receive a checkpoint's weights."""
    import paddlenlp.transformers as transformers

    cls = getattr(transformers, model_class or "", None)
    if cls is None:
        raise UserError(f"model_class: unknown model class {model_class!r}", SPEC_FILE)
    try:
        return cls(cls.config_class(**plm_config))
    except Exception as exc:  # any bad value in a hand-edited config ends here
        raise UserError(f"plm_config: cannot build {model_class} from it: {type(exc).__name__}: {exc}",
                        SPEC_FILE) from None


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
        if os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name != COMPLETE_MARKER:
            shutil.copyfile(path, os.path.join(copy, name))
    return copy


def rebuild_from_checkpoint(checkpoint_dir: str, tokenizer=None, verify: bool = True) -> tuple:
    """`(prompt_model, tokenizer, spec)` from a checkpoint alone (no pretrained weights).

    The checkpoint's files are verified against its marker first (`verify=False` when the caller
    already did, e.g. for a resume).
    """
    import paddlenlp.transformers as transformers

    from ..rundir.checkpoints import verify as verify_checkpoint

    if verify:
        verify_checkpoint(checkpoint_dir, purpose="model")
    spec = ModelSpec.load(checkpoint_dir)
    if tokenizer is None:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(private_tokenizer_copy(checkpoint_dir))
        except Exception as exc:  # a damaged vocab or tokenizer config fails in many ways
            raise UserError(f"cannot load the tokenizer saved in the checkpoint: {type(exc).__name__}: {exc}",
                            checkpoint_dir) from None
        if len(tokenizer) > int(spec.plm_config["vocab_size"]) or len(tokenizer) < 5:
            raise UserError(f"the saved tokenizer has {len(tokenizer)} tokens but the model "
                            f"{spec.plm_config['vocab_size']}: vocab.txt is damaged or from another model",
                            os.path.join(checkpoint_dir, VOCAB_FILE))
    try:
        model = build_from_spec(spec, tokenizer)
    except UserError as exc:
        if exc.path == SPEC_FILE:  # name the file that holds the bad value
            exc = UserError(exc.message, os.path.join(checkpoint_dir, SPEC_FILE), exc.line)
        raise exc from None
    load_state(model, checkpoint_dir)
    model.eval()
    return model, tokenizer, spec


def model_logits(model, examples: List[dict], batch_size: int = 32) -> np.ndarray:
    """`[len(examples), num_labels]` logits of a prompt model in dynamic graph, batch by batch, with
    its training template and collator (what evaluation during training computes)."""
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    collate = PromptDataCollatorWithPadding(model.template.tokenizer, padding=True, return_tensors="pd")
    model.eval()
    out = []
    with paddle.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate([model.template({k: v for k, v in e.items() if k in ("text_a", "text_b")})
                             for e in examples[start:start + batch_size]])
            batch.pop("labels", None)
            out.append(model(**batch).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
