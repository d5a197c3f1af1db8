"""Narrow fixes for paddlenlp 2.8.1 on Paddle 3.x, installed by `apply()` from the entry points.

train.py and export.py call `apply()` first (the test suite does too); nothing is patched at
import. `apply()` refuses any other paddlenlp version: the fixes replace method bodies written
for 2.8.1, and silently patching another version could change what it computes.

1. `SoftTemplate.process_batch` crashes for soft prompts with an encoder (`lstm`/`mlp`):
   Paddle 3's `paddle.where(cond)` returns a tuple of 1-D index tensors (Paddle 2.x returned
   [N, 1] tensors), so its `.squeeze(1)` raises. The replacement below is the upstream method
   with the flat index computed from `paddle.nonzero` (always [N, 2]); nothing else changes.
2. `SoftTemplate.named_parameters()` / `parameters()` take no arguments, but Paddle 3's
   `paddle.DataParallel` calls `named_parameters(include_sublayers=False)` on every sublayer, so
   multi-process training crashed. The replacements accept Paddle's arguments and keep upstream's
   answer (the prompt parameters, not the PLM's word embeddings the template also holds).

(paddlenlp's `Template.parse_template_string` runs `eval()` on prompt text, but this tool never
hands paddlenlp a prompt string: `utils.model.prompt` parses it without eval and templates are built
from the parsed parts. tests/model/test_compat.py checks that, so no patch is needed there.)
"""
from __future__ import annotations

from typing import Dict

import paddle
from paddlenlp.prompt import template as _template

from ..errors import UserError

SUPPORTED_PADDLENLP = ((2, 8, 1),)  # release numbers: 2.8.1 and its post releases (the wheel says 2.8.1.post)
_ORIGINAL = {
    "process_batch": _template.SoftTemplate.process_batch,
    "named_parameters": _template.SoftTemplate.named_parameters,
}
_applied = False


def soft_template_process_batch(self, input_dict: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
    """`SoftTemplate.process_batch` from paddlenlp 2.8.1, working on Paddle 2.x and 3.x."""
    word_embeds = self.word_embeddings(input_dict["input_ids"])
    if "attention_mask" not in input_dict or input_dict["attention_mask"] is None:
        pad_token_id = self.tokenizer.pad_token_id
        attention_mask = paddle.unsqueeze(
            (input_dict["input_ids"] == pad_token_id).astype("float32") * -1e4, axis=[1, 2]
        )
        input_dict["attention_mask"] = attention_mask
    input_dict["input_ids"] = None
    soft_embeds = self.soft_embeddings(input_dict["soft_token_ids"])
    soft_shape = soft_embeds.shape
    soft_embeds = soft_embeds.reshape([-1, soft_shape[-1]])
    for encoder_id in range(1, len(self.encoder_list)):
        # The fix: nonzero() is [N, 2] on every Paddle version; flatten (row, col) to row*len+col.
        to_encode = paddle.nonzero(input_dict["encoder_ids"] == encoder_id)
        to_encode = to_encode[:, 0] * soft_shape[1] + to_encode[:, 1]
        to_encode_embeds = soft_embeds[to_encode]
        to_encode_embeds = to_encode_embeds.reshape([soft_shape[0], -1, soft_shape[-1]])
        encoder = self.encoder_list[encoder_id]
        encoded = encoder(to_encode_embeds)
        encoded = encoded.reshape([-1, soft_shape[-1]])
        soft_embeds = paddle.scatter(soft_embeds, to_encode, encoded)
    soft_embeds = soft_embeds.reshape([soft_shape[0], -1, soft_shape[-1]])
    soft_token_ids = input_dict["soft_token_ids"].unsqueeze(2)
    input_dict["inputs_embeds"] = paddle.where(soft_token_ids > 0, soft_embeds, word_embeds)
    return input_dict


def soft_template_named_parameters(self, prefix: str = "", include_sublayers: bool = True, *args, **kwargs):
    """Upstream's list of prompt parameters; with `include_sublayers=False`, the layer's own (none)."""
    if not include_sublayers:
        return paddle.nn.Layer.named_parameters(self, prefix, include_sublayers=False)
    named = list(self.soft_embeddings.named_parameters())
    named.extend(self.encoder_list.named_parameters())
    return named


def soft_template_parameters(self, include_sublayers: bool = True):
    return [p for _, p in soft_template_named_parameters(self, include_sublayers=include_sublayers)]


def apply() -> None:
    """Install the fixes (idempotent); refuse a paddlenlp version they were not written for."""
    global _applied
    if _applied:
        return
    import paddlenlp
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(paddlenlp.__version__).release[:3]
    except InvalidVersion:
        release = None
    if release not in SUPPORTED_PADDLENLP:
        supported = ", ".join(".".join(map(str, v)) for v in SUPPORTED_PADDLENLP)
        raise UserError(f"this tool's fixes to paddlenlp are written for version {supported}, "
                        f"but {paddlenlp.__version__} is installed; install the pinned stack: "
                        "`pip install -r requirements.txt -c constraints.txt`", "paddlenlp")
    _template.SoftTemplate.process_batch = soft_template_process_batch
    _template.SoftTemplate.named_parameters = soft_template_named_parameters
    _template.SoftTemplate.parameters = soft_template_parameters
    _applied = True


def require() -> None:
    """For code that builds prompt models: the entry point must have called `apply()`."""
    if not _applied:
        raise RuntimeError("utils.model.compat.apply() was not called: call it at the entry point before building a "
                           "prompt model (train.py and export.py do)")


def original(name: str):
    """The unpatched paddlenlp function, for tests that show the fix is needed."""
    return _ORIGINAL[name]
