"""The zero-shot baseline's model check: the PLM's own masked-LM head reads the label words at the prompt's masks.

`train.py --zero_shot --do_eval/--do_predict/--do_export` classifies with no training at all
(PET / LM-BFF's zero-shot row): the template is the text followed by the prompt as hard tokens
and as many [MASK]s as the label words have tokens, `text_a 这句话说的水果是 [MASK][MASK]`, and a
label's score is the sum over masks of the MLM head's logit for its word's token there (the
`manual` head, utils/model/heads.py). Nothing is random: no soft tokens, no new head. The model is
saved as a checkpoint (`zero_shot: true` in its spec) so export.py, infer.py and the service
take it like any other. Its template is `utils.model.prompt.zero_shot_template`; this module refuses
a PLM whose weights lack the masked-LM head.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from ..errors import UserError


def checkpoint_keys(model_dir: str) -> Optional[List[str]]:
    """The parameter names in a model directory's weights (read from safetensors headers and
    sharded indexes without loading the tensors), or None when it holds no weight file we know."""
    import json

    from .plm import WEIGHT_FILES

    for name in WEIGHT_FILES:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            with open(path, encoding="utf-8") as fp:
                return list(json.load(fp).get("weight_map", {}))
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="np") as fp:
                return list(fp.keys())
        import paddle

        return list(paddle.load(path, return_numpy=True))
    return None


def missing_head_weights(plm, keys: Sequence[str]) -> List[str]:
    """The parameters of `plm`'s head (outside its base model) that `keys` does not hold under any
    of their names: paddlenlp initialises them at random. Parameters shared with the base model
    (a decoder tied to the word embeddings) load with it, and aliases (`decoder_bias` is
    `decoder.bias`) count once."""
    prefix = plm.base_model_prefix + "."
    state = plm.state_dict()
    in_base = {id(value) for name, value in state.items() if name.startswith(prefix)}
    names_of: Dict[int, List[str]] = {}
    for name, value in state.items():
        if not name.startswith(prefix) and id(value) not in in_base:
            names_of.setdefault(id(value), []).append(name)
    present = set(keys)
    return sorted(names[0] for names in names_of.values() if not any(name in present for name in names))


def check_mlm_head(plm, name_or_path: str) -> None:
    """--zero_shot reads the label words through the PLM's own masked-LM head: a model whose
    weights lack it (saved without its head, e.g. from ErnieModel or a sequence classifier) would
    score them through a randomly initialised one, so it is refused, decided from the weight
    file's parameter names (paddlenlp only warns "newly initialized")."""
    from .plm import _cached_dir

    model_dir = name_or_path if os.path.isdir(name_or_path) else _cached_dir(name_or_path)
    keys = checkpoint_keys(model_dir)
    if keys is None:
        return  # (no weight file of a known name: paddlenlp found its weights elsewhere; nothing to compare)
    missing = missing_head_weights(plm, keys)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UserError(f"has no masked-LM head in its weights ({shown} missing): --zero_shot would read the label "
                        "words through a randomly initialised head. Use a model saved with its masked-LM head (a "
                        "PaddleNLP built-in name such as ernie-3.0-base-zh, or pretrain.py's output), or train: "
                        "--do_train without --zero_shot", name_or_path)
