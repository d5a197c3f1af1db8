"""Request checks and response bodies: each bad field a 4xx `RequestError` naming it, never a 500."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..deploy.predictions import ranked_labels
from ..errors import UserError, check_text
from .config import ServiceConfig


class RequestError(Exception):
    """A request the service refuses: HTTP `status`, the `field` at fault, a message."""

    def __init__(self, status: int, field: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


def overloaded(message: str) -> RequestError:
    return RequestError(503, "service", message, {"Retry-After": "1"})


def check_texts(texts: Any, field: str, pair: bool, config: ServiceConfig, pairs: Any = None) -> List[dict]:
    """Request texts -> example dicts, or a 4xx `RequestError` naming the offending field."""
    if not isinstance(texts, list):
        raise RequestError(422, field, f"must be a list of texts, got {type(texts).__name__}")
    if not texts:
        raise RequestError(422, field, "is empty: give at least one text")
    if len(texts) > config.max_texts_per_request:
        raise RequestError(413, field, f"has {len(texts)} texts; at most {config.max_texts_per_request} per request "
                                       "(--max_texts_per_request): split the request")
    if pairs is not None:
        if not isinstance(pairs, list) or len(pairs) != len(texts):
            raise RequestError(422, "data.text_pair", f"must be a list as long as data.text ({len(texts)})")
        texts = [[a, b] for a, b in zip(texts, pairs)]
    examples = []
    for index, text in enumerate(texts):
        where = f"{field}[{index}]"
        if pair:
            if not (isinstance(text, list) and len(text) == 2):
                raise RequestError(422, where, "this model classifies text pairs: give [text_a, text_b] "
                                               "(or data.text_pair)")
            fields = {"text_a": text[0], "text_b": text[1]}
        else:
            if not isinstance(text, str):
                raise RequestError(422, where, f"must be a string, got {type(text).__name__}"
                                   + (" (this model classifies single texts, not pairs)" if isinstance(text, list)
                                      else ""))
            fields = {"text_a": text}
        example = {}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise RequestError(422, where, f"{key} must be a string, got {type(value).__name__}")
            example[key] = clean_text(value, where, config, text_field(field, index, key, pair, pairs is not None))
        examples.append(example)
    return examples


def clean_text(value: Any, where: str, config: ServiceConfig, unicode_field: Optional[str] = None) -> str:
    """One text of a request, stripped, or a 4xx naming `where` (`unicode_field`, when given, for a
    text that is not valid Unicode): not a string, a lone surrogate, empty, over --max_chars_per_text."""
    if not isinstance(value, str):
        raise RequestError(422, where, f"must be a string, got {type(value).__name__}")
    try:
        check_text(value, unicode_field or where)
    except UserError as exc:  # a lone surrogate ("\ud800" in the JSON): no tokenizer takes it
        raise RequestError(400, exc.path, exc.message) from None
    value = value.strip()
    if not value:
        raise RequestError(422, where, "is empty")
    if len(value) > config.max_chars_per_text:
        raise RequestError(413, where, f"has {len(value)} characters; at most {config.max_chars_per_text} "
                                       "(--max_chars_per_text)")
    return value


def text_field(field: str, index: int, key: str, pair: bool, separate_pairs: bool) -> str:
    """Where one text of a request is: `texts[3]`, a pair's `texts[3][1]`, or SimpleServing's
    `data.text_pair[3]`."""
    if not pair:
        return f"{field}[{index}]"
    if separate_pairs:
        return f"{field}[{index}]" if key == "text_a" else f"data.text_pair[{index}]"
    return f"{field}[{index}][{0 if key == 'text_a' else 1}]"


def check_positive(value: Any, field: str) -> Optional[int]:
    """`value`: None (not given) or a positive integer (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise RequestError(422, field, f"must be a positive integer, got {value!r}")
    return value


def check_top_k(value: Any, field: str, labels: int, default: int) -> int:
    if check_positive(value, field) is None:
        return default
    return min(value, labels)


def check_threshold(value: Any, field: str) -> Optional[float]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise RequestError(422, field, f"must be a number in [0, 1], got {value!r}")
    return value


def check_max_seq_len(value: Any, model) -> Optional[int]:
    """SimpleServing's `parameters.max_seq_len` for `model` (an `ExportedClassifier`): longer than
    exported is the exported length; shorter than the prompt needs is refused."""
    field = "parameters.max_seq_len"
    if check_positive(value, field) is None:
        return None
    value = min(value, model.manifest["max_seq_length"])
    try:
        model.encoder(value)
    except UserError as exc:  # e.g. shorter than the prompt itself
        raise RequestError(422, field, exc.message) from None
    return value


def body_dict(body: Any, field: str = "body") -> dict:
    """`body` (or its part `field`) as a JSON object; a body sent without a JSON content type
    arrives as bytes or text and is parsed here."""
    if isinstance(body, (bytes, str)) and field == "body":
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:  # (also: not UTF-8, nested too deep)
            raise RequestError(400, "body", f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(422, field, f"must be a JSON object, got {type(body).__name__}")
    return body


def check_fields(body: dict, allowed: Tuple[str, ...]) -> None:
    """A field of `body` not in `allowed` is refused by name (a typo would silently be a default)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        try:
            check_text(unknown[0], "body")  # (the error names the field: it must be writable as JSON)
        except UserError as exc:
            raise RequestError(400, "body", f"a field name is {exc.message}") from None
        raise RequestError(422, unknown[0], f"unknown field (allowed: {', '.join(allowed)})")


def format_predictions(probs: np.ndarray, labels: List[str], top_k: int, decoder=None,
                       threshold: Optional[float] = None) -> List[dict]:
    """Per text: the best label's name and probability, and the `top_k` best (as infer.py ranks
    them); for a multi-label `decoder`, every label above its threshold (or `threshold`)."""
    out = []
    if decoder is not None and decoder.multi_label:
        decided = decoder.decide(probs, thresholds=threshold)
        for row, order, chosen in zip(probs, ranked_labels(probs, len(labels)), decided):
            picked = [j for j in order if chosen[j]]
            out.append({"label": [labels[j] for j in picked], "confidence": [round(float(row[j]), 6) for j in picked],
                        "top_k": [{"label": labels[j], "confidence": round(float(row[j]), 6)} for j in order[:top_k]]})
        return out
    names = decoder.names(probs) if decoder is not None else [labels[j] for j in probs.argmax(axis=1)]
    for name, row, best in zip(names, probs, ranked_labels(probs, top_k)):
        item = {"label": name, "confidence": round(float(row[best[0]]), 6)}
        item["top_k"] = [{"label": labels[j], "confidence": round(float(row[j]), 6)} for j in best]
        out.append(item)
    return out
