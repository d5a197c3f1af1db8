"""Prompts: parse template strings without `eval`, and turn `--prompt` into a template.

`--prompt` takes either

* plain text, e.g. `这条新闻标题的主题是`: real P-tuning. The text initialises soft tokens
  (one per token of the text, from the PLM's word embeddings), encoded by `--soft_encoder`
  (bidirectional 2-layer LSTM + MLP, an MLP, or none) with `--encoder_hidden_size`, then the
  input text, then one `[MASK]`:
  `{'soft': '这条新闻标题的主题是', 'encoder': 'lstm', 'hidden_size': 200}{'text': 'text_a'}{'mask'}`
  For sentence pairs `{'sep'}{'text': 'text_b'}` follows `text_a`.
* a full paddlenlp template string, e.g.
  `{'soft': None, 'length': 8, 'encoder': 'mlp'}{'text': 'text_a'}{'mask'}`, used as written.

Each `{...}` block must be a Python literal dict or set (`{'mask'}`): it is read with
`ast.literal_eval`, so a prompt can never run code. Nothing here imports paddle.
"""
from __future__ import annotations

import ast
import copy
from typing import Any, Dict, List, Optional

from ..errors import UserError

PROMPT_SOURCE = "--prompt"
TEXT_KEYS = ("text_a", "text_b")
ENCODERS = ("lstm", "mlp")
# Keys a block may use, and a check for each value.
_KEY_CHECKS = {
    "text": lambda v: v in TEXT_KEYS,
    "hard": lambda v: isinstance(v, str),
    "soft": lambda v: v is None or isinstance(v, str),
    "soft_id": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "sep": lambda v: v is None,
    "mask": lambda v: v is None,
    "length": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "encoder": lambda v: v is None or v in ENCODERS,
    "hidden_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "position": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "token_type": lambda v: v in (0, 1) and not isinstance(v, bool),
    "truncate": lambda v: isinstance(v, bool),
    "add_space": lambda v: v == " ",
}
_KEY_HINTS = {
    "text": "'text_a' or 'text_b'", "hard": "a string", "soft": "a string or None", "soft_id": "an int",
    "sep": "None", "mask": "None", "length": "a positive int", "encoder": "'lstm', 'mlp' or None",
    "hidden_size": "a positive int", "position": "an int >= 0", "token_type": "0 or 1",
    "truncate": "True or False", "add_space": "' '",
}
_UNSUPPORTED = {
    "options": "`options` belongs to UTC templates, which this tool does not train",
    "prefix": "`prefix` (prefix tuning) is not supported; use `soft`",
}
_KINDS = ("text", "hard", "soft", "soft_id", "sep", "mask")


def _error(message: str, column: Optional[int] = None) -> UserError:
    where = f" (at column {column + 1})" if column is not None else ""
    return UserError(message + where, PROMPT_SOURCE)


def _find_block_end(prompt: str, start: int) -> int:
    """Index of the `}` closing the block opened at `start`, aware of quoted strings."""
    depth, quote, index = 0, None, start
    while index < len(prompt):
        char = prompt[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise _error("`{` has no matching `}`", start)


def _check_block(block: Dict[str, Any], text: str, column: int) -> None:
    for key, value in block.items():
        if key in _UNSUPPORTED:
            raise _error(f"{_UNSUPPORTED[key]}: {text}", column)
        if key not in _KEY_CHECKS:
            allowed = ", ".join(sorted(_KEY_CHECKS))
            raise _error(f"unknown key {key!r} in {text}; allowed keys: {allowed}", column)
        if not _KEY_CHECKS[key](value):
            raise _error(f"{key!r} must be {_KEY_HINTS[key]}, got {value!r} in {text}", column)
    kinds = [k for k in _KINDS if k in block]
    if "soft_id" in kinds and "soft" in kinds:
        kinds.remove("soft_id")
    if len(kinds) != 1:
        raise _error(f"each block needs exactly one of {', '.join(_KINDS)}; found {kinds or 'none'} in {text}",
                     column)


def parse_template_string(prompt: str, left_token: str = "{", right_token: str = "}") -> List[Dict[str, Any]]:
    """Parse a template string into paddlenlp's list-of-dicts form, without `eval`.

    Same result as `paddlenlp.prompt.Template.parse_template_string` for valid templates:
    `"{'text': 'text_a'}是{'mask'}"` -> `[{'text': 'text_a'}, {'hard': '是'}, {'mask': None}]`.
    """
    if left_token != "{" or right_token != "}":
        raise ValueError("only `{`/`}` delimited templates are supported")
    if not isinstance(prompt, str):
        raise _error(f"must be a string, got {type(prompt).__name__}")
    parsed: List[Dict[str, Any]] = []
    index = 0
    while index < len(prompt):
        part: Dict[str, Any] = {"add_space": " "} if prompt[index] == " " else {}
        while index < len(prompt) and prompt[index] == " ":
            index += 1
        if index == len(prompt):
            break
        if prompt[index] == "}":
            raise _error("`}` without a matching `{`", index)
        if prompt[index] == "{":
            end = _find_block_end(prompt, index)
            text = prompt[index:end + 1]
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise _error(f"cannot read {text}: each block must be a literal like {{'text': 'text_a'}}, "
                             "{'mask'} or {'soft': '...', 'encoder': 'lstm'} (no expressions or calls)",
                             index) from None
            if isinstance(value, set):
                if not all(isinstance(k, str) for k in value):
                    raise _error(f"set blocks may only hold key names: {text}", index)
                value = {key: None for key in sorted(value)}
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise _error(f"{text} is not a dict of named keys", index)
            _check_block(value, text, index)
            part.update(value)
            index = end + 1
        else:
            start = index
            while index < len(prompt) and prompt[index] != "{":
                if prompt[index] == "}":
                    raise _error("`}` without a matching `{`", index)
                index += 1
            part["hard"] = prompt[start:index].rstrip(" ")
        parsed.append(part)
    if not parsed:
        raise _error("is empty")
    return parsed


def is_template_string(prompt: Optional[str]) -> bool:
    return prompt is not None and ("{" in prompt or "}" in prompt)


def build_template(prompt: Optional[str], soft_encoder: Optional[str] = "lstm", encoder_hidden_size: Optional[int] = 200,
                   num_virtual_tokens: Optional[int] = None, is_pair: bool = False, mask_length: int = 1,
                   ) -> List[Dict[str, Any]]:
    """Template parts for `--prompt`: a P-tuning template for plain text, else the parsed template.

    With no prompt text at all, `num_virtual_tokens` (default 1) randomly initialised soft
    tokens are used.
    """
    if is_template_string(prompt):
        return parse_template_string(prompt)
    if soft_encoder not in (None, "none", *ENCODERS):
        raise UserError(f"must be one of lstm, mlp, none; got {soft_encoder!r}", "--soft_encoder")
    text = (prompt or "").strip()
    soft: Dict[str, Any] = {"soft": text or None}
    if num_virtual_tokens is not None:
        if num_virtual_tokens <= 0:
            raise UserError(f"must be positive, got {num_virtual_tokens}", "--num_virtual_tokens")
        soft["length"] = num_virtual_tokens
    elif not text:
        soft["length"] = 1
    if soft_encoder not in (None, "none"):
        soft["encoder"] = soft_encoder
        if encoder_hidden_size is not None:
            soft["hidden_size"] = encoder_hidden_size
    parts: List[Dict[str, Any]] = [soft, {"text": "text_a"}]
    if is_pair:
        parts += [{"sep": None}, {"text": "text_b"}]
    mask: Dict[str, Any] = {"mask": None}
    if mask_length > 1:
        mask["length"] = mask_length
    parts.append(mask)
    return parts


def zero_shot_template(prompt: Optional[str], is_pair: bool, mask_length: int) -> List[Dict[str, Any]]:
    """Template parts: `text_a [SEP text_b] prompt [MASK]*n` for plain text, else the template
    string as given, which must hold no soft tokens (they would be random: nothing trains them)."""
    if is_template_string(prompt):
        parts = parse_template_string(prompt)
        if any("soft" in part or "soft_id" in part for part in parts):
            raise UserError("--zero_shot uses the pretrained model as it is; soft tokens would be random vectors "
                            "(nothing trains them): write the prompt as hard text", "--prompt")
        return parts
    parts: List[Dict[str, Any]] = [{"text": "text_a"}]
    if is_pair:
        parts += [{"sep": None}, {"text": "text_b"}]
    text = (prompt or "").strip()
    if text:
        parts.append({"hard": text})
    mask: Dict[str, Any] = {"mask": None}
    if mask_length > 1:
        mask["length"] = mask_length
    parts.append(mask)
    return parts


def classifier_template(is_pair: bool = False) -> List[Dict[str, Any]]:
    """The fine-tuning baseline's input: `[CLS] text_a [SEP]` (`[CLS] text_a [SEP] text_b [SEP]`)."""
    parts: List[Dict[str, Any]] = [{"text": "text_a"}]
    if is_pair:
        parts += [{"sep": None}, {"text": "text_b", "token_type": 1}]
    return parts


def check_parts(parts, source: str = PROMPT_SOURCE) -> None:
    """Validate template parts read from a file (a saved checkpoint config), as the parser would."""
    if not isinstance(parts, list) or not parts:
        raise UserError("must be a non-empty list of template parts", source)
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
            raise UserError(f"part {index + 1} must be an object of named keys, got {part!r}", source)
        try:
            _check_block(part, repr(part), 0)
        except UserError as exc:
            raise UserError(f"part {index + 1}: {exc.message.replace(' (at column 1)', '')}", source) from None
    if not any(part.get("text") == "text_a" for part in parts):
        raise UserError("never uses the input text {'text': 'text_a'}", source)


def fixed_token_count(parts: List[Dict[str, Any]], tokenize) -> int:
    """Tokens the template adds around the texts ([CLS], [SEP], soft, hard, mask, sep), from the
    parts and a `tokenize(text) -> ids` function: checkable before the model is loaded."""
    count = 2
    for part in parts:
        if "soft" in part or "soft_id" in part:
            words = len(tokenize(part["soft"])) if isinstance(part.get("soft"), str) else 0
            count += max(words, part.get("length", 0 if words else 1))
        elif "hard" in part:
            count += len(tokenize(part["hard"]))
        elif "mask" in part:
            count += part.get("length", 1)
        elif "sep" in part:
            count += 1
    return count


def count_masks(parts: List[Dict[str, Any]]) -> int:
    return sum(part.get("length", 1) for part in parts if "mask" in part)


def validate_template(parts: List[Dict[str, Any]], is_pair: bool, required_masks: Optional[int] = 1,
                      verbalizer_name: str = "SoftVerbalizer") -> None:
    """Check a template against the data and the verbalizer before any model is built."""
    texts = [part["text"] for part in parts if "text" in part]
    if "text_a" not in texts:
        raise _error("the template never uses the input text: add {'text': 'text_a'}")
    if "text_b" in texts and not is_pair:
        raise _error("the template uses {'text': 'text_b'} but the data has one text per line "
                     "(text_b needs `text_a<TAB>text_b<TAB>label` lines)")
    masks = count_masks(parts)
    if required_masks is not None and masks != required_masks:
        raise _error(f"{verbalizer_name} needs exactly {required_masks} mask token(s) in the template, "
                     f"found {masks}; write one {{'mask'}}" if required_masks == 1 else
                     f"{verbalizer_name} needs exactly {required_masks} mask token(s) (the label word length), "
                     f"found {masks}; write {{'mask': None, 'length': {required_masks}}}")


def template_kind(parts: List[Dict[str, Any]]) -> str:
    """`soft` when the template has continuous tokens (P-tuning), else `manual`."""
    return "soft" if any("soft" in part or "soft_id" in part for part in parts) else "manual"


def template_string(parts: List[Dict[str, Any]]) -> str:
    """The parts as a template string (what upstream logs as "Using template")."""
    pieces = []
    for part in parts:
        if set(part) <= {"hard", "add_space"}:
            pieces.append(part.get("add_space", "") + part["hard"])
        else:
            items = [f"{key!r}: {value!r}" for key, value in part.items()]
            pieces.append("{" + ", ".join(items) + "}")
    return "".join(pieces)


def copy_parts(parts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """paddlenlp mutates template parts while building; always hand it a copy."""
    return copy.deepcopy(parts)
