"""Turning texts into model inputs without Paddle: what the training template does, exactly.

The export writes `preprocess.json`: the template as a list of parts, each either fixed token
ids (soft tokens, hard prompt text, [MASK], [SEP]: tokenized once at export by paddlenlp) or a
text field filled in at run time. `PromptPreprocessor` then reproduces paddlenlp's
`MLMPromptTokenizer` + `PromptDataCollatorWithPadding` output (input_ids, token_type_ids,
position_ids, soft_token_ids) with the `tokenizers` library's BERT word-piece tokenizer, which
matches `ErnieTokenizer`. Truncation only ever shortens parts marked truncatable (the texts), by
paddlenlp's rule: the longest part first. tests/deploy/test_preprocess.py checks equality on thousands of texts.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..task.windows import LongText, Pieces, pieces_of
from .bundle import is_file_name, is_int, read_export_json
from .format import FORMAT_VERSION, INPUT_NAMES, PREPROCESS_FILE, VOCAB_FILE, view_suffix

# paddlenlp.transformers.tokenizer_utils._is_symbol
SYMBOL_PATTERN = "[\\p{S}\u00AD\u00B2\u00BA\u3007\u00B5\u00D8\u014B\u01B1]"


def describe_template(template, max_seq_length: int, long_text: Optional[LongText] = None) -> dict:
    """`preprocess.json` content for a built paddlenlp template (called at export, with paddle);
    `long_text`: how the model reads long texts (utils/task/windows.py), recorded when not truncate."""
    tokenizer = template.tokenizer
    parts = []
    for index, part in enumerate(template.prompt):
        soft = template.soft_tokens[index] if getattr(template, "soft_tokens", None) else None
        entry = {"truncate": bool(template.do_truncate[index]), "token_type": int(template.token_types[index]),
                 "position": int(template.positions[index])}
        if "text" in part:
            entry["text"] = part["text"]
            entry["add_space"] = "add_space" in part
        elif soft is not None and not (len(soft) == 1 and soft[0] == 0):
            entry.update(ids=[int(i) for i in soft], soft=True)
        else:
            text = template.build_inputs_with_prompt({k: "" for k in template.example_keys}, [dict(part)])[0]
            ids = tokenizer.encode(text, add_special_tokens=False, return_token_type_ids=False)["input_ids"]
            entry.update(ids=[int(i) for i in ids], soft=False)
        parts.append(entry)
    return {
        "format": FORMAT_VERSION,
        "max_seq_length": int(max_seq_length),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "special_ids": {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id,
                        "pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id,
                        "unk": tokenizer.unk_token_id},
        "tokenizer": {"vocab_file": VOCAB_FILE, "do_lower_case": bool(getattr(tokenizer, "do_lower_case", True)),
                      "unk_token": tokenizer.unk_token,
                      "special_tokens": list(tokenizer.all_special_tokens)},
        "pad_token_type_id": int(getattr(tokenizer, "pad_token_type_id", 0)),
        "parts": parts,
        **({"long_text": long_text.describe()} if long_text is not None and long_text.active else {}),
    }


def text_keys_of(config: dict) -> List[str]:
    """The text fields an export's templates read, each once (`text_a`; `text_b` too for a pair model),
    from its checked preprocess.json alone: no tokenizer, so callers can check inputs before a model loads."""
    views = config.get("views") or [{"parts": config["parts"]}]
    return list(dict.fromkeys(part["text"] for view in views for part in view["parts"] if "text" in part))


def read_config(export_dir: str) -> dict:
    """`preprocess.json` of an export, with every field `PromptPreprocessor` uses checked for type."""
    config, bad = read_export_json(export_dir, PREPROCESS_FILE, "corrupt or hand-edited?")
    check_parts_config(config.get("parts"), "parts", bad)
    views = config.get("views")
    if views is not None:
        if not isinstance(views, list) or not views:
            bad("`views` is not a non-empty list")
        for index, view in enumerate(views):
            if not isinstance(view, dict):
                bad(f"`views[{index}]` is not an object")
            check_parts_config(view.get("parts"), f"views[{index}].parts", bad)
            if not is_int(view.get("max_seq_length")) or view["max_seq_length"] <= 0:
                bad(f"`views[{index}].max_seq_length` is {view.get('max_seq_length')!r}, not a positive integer")
        if views[0]["parts"] != config["parts"]:
            bad("`views[0].parts` differ from `parts`")
    special = config.get("special_ids")
    if not isinstance(special, dict) or not all(is_int(special.get(k)) and special[k] >= 0
                                                for k in ("cls", "sep", "pad")):
        bad("`special_ids` lacks integer `cls`, `sep` and `pad` ids")
    if not is_int(config.get("max_seq_length")) or config["max_seq_length"] <= 0:
        bad(f"`max_seq_length` is {config.get('max_seq_length')!r}, not a positive integer")
    tokenizer = config.get("tokenizer")
    if not isinstance(tokenizer, dict) or not is_file_name(tokenizer.get("vocab_file")):
        bad("`tokenizer.vocab_file` is missing or not a file name in the export")
    if not (isinstance(tokenizer.get("do_lower_case", True), bool)
            and isinstance(tokenizer.get("unk_token", ""), str)
            and isinstance(tokenizer.get("special_tokens", []), list)
            and all(isinstance(t, str) for t in tokenizer.get("special_tokens", []))):
        bad("`tokenizer` has a `do_lower_case`, `unk_token` or `special_tokens` of the wrong type")
    if config.get("truncation_side", "right") not in ("left", "right"):
        bad(f"`truncation_side` is {config['truncation_side']!r}, not left or right")
    if not is_int(config.get("pad_token_type_id", 0)):
        bad("`pad_token_type_id` is not an integer")
    long_text = LongText.from_dict(config.get("long_text"), bad)
    if long_text.active and (views is not None or "text_b" in text_keys_of(config)):
        bad("`long_text` is set for a text pair or an ensemble's views; it reads one text (text_a)")
    return config


def check_parts_config(parts, where: str, bad) -> None:
    """One template's parts in preprocess.json: text fields or token ids, with their flags."""
    if not isinstance(parts, list) or not parts:
        bad(f"`{where}` is missing or not a non-empty list")
    for index, part in enumerate(parts):
        at = f"`{where}[{index}]`"
        if not isinstance(part, dict):
            bad(f"{at} is not an object")
        if "text" in part:
            if part["text"] not in ("text_a", "text_b"):
                bad(f"{at} fills text field {part['text']!r}; infer.py reads text_a and text_b only")
        elif not (isinstance(part.get("ids"), list) and all(is_int(i) and i >= 0 for i in part["ids"])):
            bad(f"{at} has neither `text` nor a list of token `ids`")
        if not (isinstance(part.get("truncate"), bool) and is_int(part.get("token_type"))
                and is_int(part.get("position"))):
            bad(f"{at} lacks `truncate` (bool), `token_type` or `position` (int)")


def load_wordpiece_tokenizer(vocab_file: str, do_lower_case: bool = True, unk_token: str = "[UNK]",
                             special_tokens: Sequence[str] = ()):
    """A `tokenizers` BERT word-piece tokenizer equivalent to paddlenlp's ErnieTokenizer."""
    with open(vocab_file, "rb") as fp:
        return wordpiece_tokenizer(fp.read(), do_lower_case, unk_token, special_tokens)


def wordpiece_tokenizer(vocab_bytes: bytes, do_lower_case: bool = True, unk_token: str = "[UNK]",
                        special_tokens: Sequence[str] = ()):
    """`load_wordpiece_tokenizer` of a vocab.txt's bytes."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    vocab: Dict[str, int] = {}
    # read as open(path, "r") reads: UTF-8, universal newlines
    with io.TextIOWrapper(io.BytesIO(vocab_bytes), encoding="utf-8") as fp:
        for index, line in enumerate(fp):
            vocab[line.rstrip("\n")] = index  # as paddlenlp's Vocab: the last duplicate wins
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=do_lower_case)
    # paddlenlp's BasicTokenizer also splits off symbols (Unicode category S and a few listed
    # code points), which the plain BERT pre-tokenizer keeps inside words.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.Split(Regex(SYMBOL_PATTERN), behavior="isolated"),
    ])
    if special_tokens:
        tokenizer.add_special_tokens(list(special_tokens))
    return tokenizer


SHARED_TOKENIZERS = 8  # distinct vocabularies (and options) whose tokenizers a process keeps
_shared: "OrderedDict[tuple, object]" = OrderedDict()
_shared_lock = threading.Lock()


def shared_wordpiece_tokenizer(vocab_file: str, do_lower_case: bool = True, unk_token: str = "[UNK]",
                               special_tokens: Sequence[str] = ()):
    """`load_wordpiece_tokenizer`'s tokenizer, one per distinct vocabulary content and options in the
    process (the last SHARED_TOKENIZERS used): a service's models and each swap's new version of one
    (a retrained model keeps its vocabulary) share it. Why: building it holds the GIL for ~20-30 ms
    (a 40k-word dict handed to Rust) beside the serving threads, and each copy costs memory. Sharing
    is safe: once built, a tokenizer is only read (`encode_batch`)."""
    with open(vocab_file, "rb") as fp:
        data = fp.read()
    key = (hashlib.sha256(data).hexdigest(), bool(do_lower_case), str(unk_token), tuple(special_tokens))
    with _shared_lock:
        if key in _shared:
            _shared.move_to_end(key)
            return _shared[key]
    tokenizer = wordpiece_tokenizer(data, do_lower_case, unk_token, special_tokens)
    with _shared_lock:
        tokenizer = _shared.setdefault(key, tokenizer)  # two threads built it at once: both keep the first
        while len(_shared) > SHARED_TOKENIZERS:
            _shared.popitem(last=False)
    return tokenizer


def window_tokens(parts: List[dict], max_seq_length: int) -> int:
    """Text tokens one input holds beside the template's fixed tokens and [CLS]/[SEP]: a window's length."""
    return max_seq_length - 2 - sum(len(p["ids"]) for p in parts if "ids" in p)


class DocumentWindows:
    """Documents -> the texts the model reads (utils/task/windows.py `pieces_of`), tokenized with
    the export's word-piece tokenizer; training builds one from its tokenizer's vocabulary, so
    train.py and every inference path cut the same windows."""

    def __init__(self, tokenizer, window: int, long_text: LongText):
        self.tokenizer, self.window, self.long_text = tokenizer, int(window), long_text

    @classmethod
    def of_tokenizer(cls, tokenizer, window: int, long_text: LongText) -> "DocumentWindows":
        """Windows cut by the word-piece tokenizer an export of a paddlenlp `tokenizer` will use (built
        from its saved files: training and ensembles cut what the export cuts)."""
        with tempfile.TemporaryDirectory() as directory:
            tokenizer.save_pretrained(directory)
            wordpiece = load_wordpiece_tokenizer(os.path.join(directory, VOCAB_FILE),
                                                 bool(getattr(tokenizer, "do_lower_case", True)),
                                                 tokenizer.unk_token, list(tokenizer.all_special_tokens))
        return cls(wordpiece, window, long_text)

    def split(self, examples: List[dict]) -> tuple:
        """`(inputs, pieces)`: one example per piece (the document's other fields and labels kept),
        and each document's `Pieces` (its count of inputs: `len(pieces[i].texts)`)."""
        if not self.long_text.active:
            return list(examples), [Pieces([str(e["text_a"])], False, False) for e in examples]
        texts = [str(example["text_a"]) for example in examples]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        inputs, pieces = [], []
        for example, text, encoding in zip(examples, texts, encodings):
            piece = pieces_of(text, encoding.offsets, encoding.word_ids, self.window, self.long_text)
            pieces.append(piece)
            inputs += [example] if len(piece.texts) == 1 and piece.texts[0] == text else [
                dict(example, text_a=t) for t in piece.texts]
        return inputs, pieces


def max_lengths_for_truncation(part_ids: List[List[int]], do_truncate: List[bool], max_length: int):
    """paddlenlp's `MLMPromptTokenizer._create_max_lengths_from_do_truncate`, verbatim in effect.

    `max_length` excludes [CLS]/[SEP]. Returns per-part limits (None: keep whole).
    """
    if sum(len(x) for x in part_ids) <= max_length:
        return [None] * len(part_ids)
    max_lengths: List[Optional[int]] = [None] * len(part_ids)
    flags = [int(x) for x in do_truncate]
    for index, ids in enumerate(part_ids):
        if not do_truncate[index]:
            max_length -= len(ids)
        else:
            max_lengths[index] = len(ids)
    if sum(flags) == 0:
        return max_lengths
    has_short = True
    while has_short:
        has_short = False
        avg = max_length // sum(flags)
        for index, ids in enumerate(part_ids):
            if flags[index] == 1 and len(ids) <= avg:
                flags[index] = 0
                max_lengths[index] = len(ids)
                max_length -= len(ids)
                has_short = True
    if max_length < 0:
        raise ValueError("the prompt leaves no room for the text")
    avg = max_length // sum(flags)
    for index in range(len(part_ids)):
        if flags[index] == 1:
            max_lengths[index] = min(avg, max_length)
            max_length -= max_lengths[index]
    return max_lengths


class PromptPreprocessor:
    """Texts -> padded int64 arrays, as the training template and collator make them.

    An ensemble export may hold several templates (`views` in preprocess.json, one per distinct
    template and length among its members); each text is then encoded once per view, the view's
    arrays named with its suffix (utils/deploy/format.py `view_input_names`).
    """

    def __init__(self, config: dict, export_dir: str, max_seq_length: Optional[int] = None):
        self.config = config
        self.parts = config["parts"]
        self.ids = config["special_ids"]
        self.max_seq_length = int(max_seq_length or config["max_seq_length"])
        self.truncate_left = config.get("truncation_side", "right") == "left"
        views = config.get("views") or [{"parts": config["parts"], "max_seq_length": config["max_seq_length"]}]
        # (input-name suffix, parts, length): a shorter --max_seq_length shortens every view it exceeds
        self.views = [(view_suffix(index), view["parts"], min(self.max_seq_length, int(view["max_seq_length"])))
                      for index, view in enumerate(views)]
        self.text_keys = text_keys_of(config)
        for _, parts, length in self.views:
            fixed = sum(len(p["ids"]) for p in parts if "ids" in p and not p["truncate"]) + 2
            if fixed + sum(1 for p in parts if "text" in p) > length:
                raise UserError(f"is {length}, but the prompt alone takes {fixed} tokens; raise it",
                                "--max_seq_length")
        tok = config["tokenizer"]
        vocab_file = os.path.join(export_dir, tok["vocab_file"])
        if not os.path.isfile(vocab_file):
            raise UserError(f"{tok['vocab_file']} is missing from the export", export_dir)
        self.tokenizer = shared_wordpiece_tokenizer(vocab_file, tok.get("do_lower_case", True),
                                                  tok.get("unk_token", "[UNK]"), tok.get("special_tokens", ()))
        # windows are cut for the exported length; a shorter --max_seq_length then truncates each one
        self.long_text = LongText.from_dict(config.get("long_text"), ValueError)
        self.windows = DocumentWindows(self.tokenizer, window_tokens(self.parts, int(config["max_seq_length"])),
                                       self.long_text)

    def split(self, examples: List[dict]) -> tuple:
        """`(inputs, pieces)`: the texts the model reads for `examples` (DocumentWindows.split)."""
        return self.windows.split(examples)

    @property
    def input_names(self) -> List[str]:
        """Every array `pad` returns: the four inputs of each view."""
        return [name + suffix for suffix, _, _ in self.views for name in INPUT_NAMES]

    @classmethod
    def from_export(cls, export_dir: str, max_seq_length: Optional[int] = None) -> "PromptPreprocessor":
        return cls(read_config(export_dir), export_dir, max_seq_length)

    def tokenize(self, examples: List[dict]) -> Dict[str, List[List[int]]]:
        """Token ids of every text field, batched through the Rust tokenizer."""
        out = {}
        for key in self.text_keys:
            texts = [str(example[key]) for example in examples]
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            out[key] = [e.ids for e in encodings]
        return out

    def encode_one(self, text_ids: Dict[str, List[int]]) -> Dict[str, List[int]]:
        """One example (its text fields already tokenized) -> unpadded feature lists (every view's)."""
        if len(self.views) == 1:
            return self._encode_view(self.parts, self.views[0][2], text_ids)
        features = {}
        for suffix, parts, length in self.views:
            features.update({name + suffix: value
                             for name, value in self._encode_view(parts, length, text_ids).items()})
        return features

    def _encode_view(self, parts: List[dict], max_seq_length: int,
                     text_ids: Dict[str, List[int]]) -> Dict[str, List[int]]:
        part_ids = [text_ids[p["text"]] if "text" in p else p["ids"] for p in parts]
        limits = max_lengths_for_truncation(part_ids, [p["truncate"] for p in parts], max_seq_length - 2)
        input_ids, token_types, positions, soft = [self.ids["cls"]], [0], [0], [0]
        last_position = 1
        for part, ids, limit in zip(parts, part_ids, limits):
            if part.get("soft"):
                soft_ids = ids
            else:
                if limit is not None:
                    ids = ids[-limit:] if (self.truncate_left and limit) else ids[:limit]
                soft_ids = [0] * len(ids)
            if part["position"] >= 0:
                last_position = part["position"]
            input_ids += ids
            soft += soft_ids
            positions += range(last_position, last_position + len(ids))
            last_position += len(ids)
            token_types += [part["token_type"]] * len(ids)
        input_ids.append(self.ids["sep"])
        token_types.append(0)
        positions.append(0)
        soft.append(0)
        return {"input_ids": input_ids, "token_type_ids": token_types, "position_ids": positions,
                "soft_token_ids": soft}

    def encode(self, examples: List[dict]) -> List[Dict[str, List[int]]]:
        tokens = self.tokenize(examples)
        return [self.encode_one({k: v[i] for k, v in tokens.items()}) for i in range(len(examples))]

    def pad(self, features: List[Dict[str, List[int]]]) -> Dict[str, np.ndarray]:
        """Right-pad to the longest in the batch (per view): pad id for input_ids, 0 elsewhere (as the collator)."""
        batch = {}
        for suffix, _, _ in self.views:
            length = max(len(f["input_ids" + suffix]) for f in features)
            for base in INPUT_NAMES:
                name = base + suffix
                fill = self.ids["pad"] if base == "input_ids" else (
                    self.config.get("pad_token_type_id", 0) if base == "token_type_ids" else 0)
                array = np.full((len(features), length), fill, dtype=np.int64)
                for row, feature in enumerate(features):
                    array[row, :len(feature[name])] = feature[name]
                batch[name] = array
        return batch
