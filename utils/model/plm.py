"""Loading the pretrained language model (PLM) and its tokenizer, failing fast offline.

`--model_name_or_path` is a local directory (config.json + weights + vocab) or a PaddleNLP
built-in name such as `ernie-3.0-base-zh`. A name is served from PaddleNLP's cache when it is
there; otherwise the download host is probed for a few seconds first, so an offline machine
gets a clear message instead of a hang or a traceback.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Optional, Tuple

from ..errors import UserError
from ..rundir.names import MODEL_STATE_FILE, PLM_CONFIG_FILE, PRETRAINING_FILE, VOCAB_FILE

logger = logging.getLogger(__name__)

DOWNLOAD_HOST = ("bj.bcebos.com", 443)
PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = (MODEL_STATE_FILE, "model.safetensors", "model_state.safetensors",
                "model_state.pdparams.index.json", "model.safetensors.index.json")
# Written by `python -m utils.tiny_ernie` into the random ERNIE it builds: loading such a model warns.
NOT_PRETRAINED_MARKER = "NOT_PRETRAINED.json"
TINY_HINT = ("For an offline dry run build a small randomly initialised ERNIE and pass its folder: "
             "`python -m utils.tiny_ernie --output_dir checkpoints/tiny-ernie --data_dir DATA_DIR` then "
             "`--model_name_or_path checkpoints/tiny-ernie`.")


def _network_reachable() -> bool:
    if os.environ.get("PTUNING_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection(DOWNLOAD_HOST, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_dir(name: str) -> str:
    from paddlenlp.utils.env import MODEL_HOME

    return os.path.join(MODEL_HOME, name)


def check_model_dir(path: str) -> None:
    missing = []
    if not os.path.isfile(os.path.join(path, PLM_CONFIG_FILE)) and not os.path.isfile(
            os.path.join(path, "model_config.json")):
        missing.append(PLM_CONFIG_FILE)
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        missing.append(f"{MODEL_STATE_FILE} (or model.safetensors)")
    if not os.path.isfile(os.path.join(path, VOCAB_FILE)) and not os.path.isfile(
            os.path.join(path, "tokenizer_config.json")):
        missing.append(VOCAB_FILE)
    if missing:
        raise UserError(f"is not a PaddleNLP model directory: missing {', '.join(missing)}. " + TINY_HINT, path)


def resolve_model(name_or_path: str) -> str:
    """Return what to hand `from_pretrained`, or raise a `UserError` saying why it cannot load."""
    if os.path.isdir(name_or_path):
        check_model_dir(name_or_path)
        return name_or_path
    if os.sep in name_or_path.rstrip(os.sep) and name_or_path.startswith((".", os.sep, "~")):
        raise UserError("model directory not found. " + TINY_HINT, name_or_path)
    cached = _cached_dir(name_or_path)
    if os.path.isdir(cached) and any(os.path.isfile(os.path.join(cached, f)) for f in WEIGHT_FILES):
        return name_or_path
    if not _network_reachable():
        raise UserError(
            f"cannot load the built-in model {name_or_path!r}: it is not a local directory, not in PaddleNLP's "
            f"cache ({cached}), and the download host {DOWNLOAD_HOST[0]} is unreachable (offline?). On a machine "
            "with network access run this once to cache it, or download it there and pass its folder with "
            "--model_name_or_path. " + TINY_HINT, "--model_name_or_path")
    return name_or_path


def load_tokenizer(name_or_path: str):
    from paddlenlp.transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # a missing or damaged vocab/tokenizer config fails in many ways inside paddlenlp
        raise UserError(f"cannot load the tokenizer ({type(exc).__name__}: {exc}); its files (vocab.txt, "
                        "tokenizer_config.json) are missing or damaged", name_or_path) from None


def load_plm(name_or_path: str, head: str = "masked_lm", num_labels: int = None) -> Tuple[object, object]:
    """Return `(model, tokenizer)`: `AutoModelForMaskedLM` (P-tuning) or `...ForSequenceClassification`."""
    from paddlenlp.transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    source = resolve_model(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    try:
        if head == "masked_lm":
            model = AutoModelForMaskedLM.from_pretrained(source)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    except Exception as exc:  # truncated weights, bad config values: paddle raises many types
        raise UserError(f"cannot load the model ({type(exc).__name__}: {exc}); its config.json or weights are "
                        "damaged or do not match", name_or_path) from None
    pretraining = os.path.join(source, PRETRAINING_FILE) if os.path.isdir(source) else ""
    if pretraining and os.path.isfile(pretraining):
        from ..files import read_json

        info = read_json(pretraining, what="pretraining record")
        logger.info("%s: masked-LM pretrained by pretrain.py from %s on %d texts (%s steps)%s", source,
                    info.get("base_model"), sum(f.get("texts", 0) for f in info.get("input_files", [])),
                    info.get("global_step"), "" if info.get("base_was_pretrained", True) else
                    ", starting from a random initialisation: it knows only what that corpus taught it")
    if os.path.isdir(source) and is_not_pretrained(source):
        logger.warning("%s is a RANDOMLY INITIALISED ERNIE built by utils.tiny_ernie, NOT pretrained: "
                       "results from it say nothing about ERNIE's accuracy.", source)
    return model, tokenizer


def is_not_pretrained(model_dir: str) -> bool:
    """A randomly initialised ERNIE built by utils.tiny_ernie (its marker file is there)."""
    return os.path.isfile(os.path.join(model_dir, NOT_PRETRAINED_MARKER))


def position_limit(name_or_path: str) -> Optional[int]:
    """`max_position_embeddings` of a local model directory or a built-in ERNIE, without loading it."""
    config_path = os.path.join(name_or_path, PLM_CONFIG_FILE)
    if os.path.isfile(config_path):
        from ..files import read_json

        value = read_json(config_path, what="model config").get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None
    try:
        from paddlenlp.transformers.ernie.configuration import ERNIE_PRETRAINED_INIT_CONFIGURATION
    except ImportError:  # another paddlenlp layout: the check after loading still applies
        return None
    value = ERNIE_PRETRAINED_INIT_CONFIGURATION.get(name_or_path, {}).get("max_position_embeddings")
    return int(value) if value else None


UNKNOWN_WARN_SHARE = 0.2  # a fitting Chinese vocabulary leaves well under 1% of tokens unknown
UNKNOWN_SAMPLE = 2000


def unknown_share(tokenizer, texts) -> float:
    """Share of `[UNK]` among the tokens of `texts`."""
    unk, total = tokenizer.unk_token_id, 0
    unknown = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk)
    return unknown / total if total else 0.0


def warn_unknown_tokens(tokenizer, dataset, model_name: str) -> Optional[float]:
    """Warn when the vocabulary does not fit the data (most tokens `[UNK]`) or a label word is unknown
    (the other label-word problems: utils/model/label_words.py `warn_label_words`)."""
    texts = [e[key] for e in (dataset.train or dataset.dev or dataset.test or dataset.data or [])[:UNKNOWN_SAMPLE]
             for key in ("text_a", "text_b") if key in e]
    share = unknown_share(tokenizer, texts) if texts else None
    if share is not None and share >= UNKNOWN_WARN_SHARE:
        logger.warning("%.0f%% of the text tokens are [UNK] for the vocabulary of %s: the model cannot read this "
                       "data (wrong --model_name_or_path, or a vocabulary built for other texts?)", 100 * share,
                       model_name)
    for label, word in dataset.labels.label_words.items():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids and all(i == tokenizer.unk_token_id for i in ids):
            logger.warning("label word %r (label %r) is [UNK] for this vocabulary: its classifier row starts "
                           "from the unknown token's; choose a word the vocabulary knows", word, label)
    return share
