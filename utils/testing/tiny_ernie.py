"""Build a randomly initialised ERNIE 3.0 in PaddleNLP format, for offline runs and benchmarks.

    python -m utils.tiny_ernie --output_dir checkpoints/tiny-ernie --data_dir data/example
    python -m utils.tiny_ernie --output_dir bench/ernie-base --preset ernie-3.0-base-zh \
        --vocab_file ../shared/vocab/ernie-3.0-base-zh-vocab.txt

The result (config.json, model_state.pdparams, vocab.txt, tokenizer files) loads with
`--model_name_or_path DIR` like a downloaded model. IT IS NOT PRETRAINED: it knows no language,
so its accuracy says nothing about ERNIE's. `--preset ernie-3.0-*-zh` gives the real
architecture (same compute as the real model) with random weights.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from ..choices import Choice
from ..errors import UserError, run_cli
from ..files import atomic_directory, read_text_lines, write_json_atomic, write_text_atomic
from ..model.plm import NOT_PRETRAINED_MARKER as MARKER_FILE  # the PLM loader warns when it finds it
from ..flags.checks import positive

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "type_vocab_size": 4,
    "task_type_vocab_size": 3,
    "use_task_id": True,
    "initializer_range": 0.02,
}
PRESETS = ("tiny", "ernie-3.0-base-zh", "ernie-3.0-medium-zh", "ernie-3.0-mini-zh",
           "ernie-3.0-micro-zh", "ernie-3.0-nano-zh")


def vocab_from_texts(texts: Iterable[str]) -> List[str]:
    """Special tokens, every character seen (lower-cased, as ErnieTokenizer does), ASCII pieces.

    ASCII letters and digits also get `##x` pieces so any Latin word splits into characters
    instead of becoming [UNK].
    """
    chars = set()
    for text in texts:
        chars.update(ch for ch in text.lower() if not ch.isspace())
    ascii_chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    chars.update(ascii_chars)
    tokens = list(SPECIAL_TOKENS) + sorted(chars - set(SPECIAL_TOKENS))
    tokens += ["##" + ch for ch in ascii_chars]
    return tokens


def texts_of_data_dirs(data_dirs: Iterable[str]) -> List[str]:
    """All text in a dataset directory's .txt files (labels and prompt words included)."""
    texts = []
    for data_dir in data_dirs:
        if not os.path.isdir(data_dir):
            raise UserError("data directory not found", data_dir)
        for name in sorted(os.listdir(data_dir)):
            if name.endswith(".txt"):
                texts.extend(line for _, line in read_text_lines(os.path.join(data_dir, name)))
    return texts


def read_vocab_file(path: str) -> List[str]:
    tokens = [line.strip() for _, line in read_text_lines(path, what="vocab file")]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise UserError(f"vocab lacks the special tokens {missing}", path)
    if tokens[0] != "[PAD]":
        raise UserError("the first vocab entry must be [PAD] (ERNIE uses pad id 0)", path)
    return tokens


def model_config(preset: str, vocab_size: int, **overrides) -> dict:
    if preset == "tiny":
        config = dict(TINY_CONFIG)
    else:
        from paddlenlp.transformers.ernie.configuration import ERNIE_PRETRAINED_INIT_CONFIGURATION

        config = dict(ERNIE_PRETRAINED_INIT_CONFIGURATION[preset])
        config.setdefault("intermediate_size", 4 * config["hidden_size"])
    config.update({k: v for k, v in overrides.items() if v is not None})
    # Real ERNIE vocab files are a few rows shorter than the embedding table; keep the larger.
    config["vocab_size"] = max(vocab_size, config.get("vocab_size", 0) if preset != "tiny" else 0)
    config["pad_token_id"] = 0
    return config


def build_ernie(output_dir: str, tokens: List[str], preset: str = "tiny", seed: int = 0,
                extra_marker: Optional[dict] = None, overwrite: bool = False, **overrides) -> str:
    """Write a random ERNIE (ErnieForMaskedLM weights) + ErnieTokenizer files to `output_dir`.

    An identical earlier build is kept as is; any other model there is never replaced unless
    `overwrite` (a user's own model may live where a demo would build one).
    """
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForMaskedLM, ErnieTokenizer

    config = model_config(preset, len(tokens), **overrides)
    marker = {
        "pretrained": False,
        "warning": "Randomly initialised, NOT pretrained: it knows no language. Use it for offline "
                   "dry runs, tests and speed benchmarks only; accuracy numbers from it say nothing about ERNIE.",
        "built_by": "python -m utils.tiny_ernie",
        "preset": preset,
        "seed": seed,
        "config": config,
        "vocab_size": len(tokens),
        **(extra_marker or {}),
    }
    marker_path = os.path.join(output_dir, MARKER_FILE)
    if os.path.isfile(marker_path):
        with open(marker_path, encoding="utf-8") as fp:
            previous = json.load(fp)
        if previous == marker:
            return output_dir  # identical build already there
        if not overwrite:
            raise UserError(f"holds another model built by this command (preset {previous.get('preset')}, vocab "
                            f"{previous.get('vocab_size')}; this one: {preset}, vocab {len(tokens)}); refusing to replace "
                            "it: pass --overwrite_output_dir or choose another --output_dir", output_dir)
    elif os.path.isdir(output_dir) and os.listdir(output_dir):
        raise UserError("exists and is not a model built by this command; refusing to overwrite it", output_dir)

    # Built beside the target and swapped in at once: a crash never leaves a half-written model.
    with atomic_directory(output_dir) as tmp_dir:
        write_text_atomic(os.path.join(tmp_dir, "vocab.txt"), "\n".join(tokens) + "\n")
        tokenizer = ErnieTokenizer(os.path.join(tmp_dir, "vocab.txt"), do_lower_case=True,
                                   model_max_length=config["max_position_embeddings"])
        tokenizer.save_pretrained(tmp_dir)
        paddle.seed(seed)
        model = ErnieForMaskedLM(ErnieConfig(**config))
        model.save_pretrained(tmp_dir)
        write_json_atomic(os.path.join(tmp_dir, MARKER_FILE), marker)
    return output_dir


Preset = Choice("Preset", [(name.upper().replace("-", "_").replace(".", "_"), name) for name in PRESETS])


@dataclass
class TinyErnieArguments:
    """`python -m utils.tiny_ernie`'s flags (utils.flags.parser reads them)."""

    output_dir: Optional[str] = field(default=None, metadata={"required": True, "help": "the model directory to write"})
    data_dir: List[str] = field(default_factory=list, metadata={
        "repeatable": True, "help": "dataset folder(s) whose characters make the vocab (repeatable)"})
    vocab_file: Optional[str] = field(default=None, metadata={
        "help": "use this vocab (e.g. the real ERNIE 3.0 vocab) instead"})
    extra_text: List[str] = field(default_factory=list, metadata={
        "repeatable": True, "text": True, "help": "more text for the vocab (prompts)"})
    preset: Preset = field(default=Preset("tiny"), metadata={
        "help": "tiny, or an ERNIE 3.0 size: its architecture with random weights"})
    hidden_size: Optional[int] = field(default=None, metadata={"help": "instead of the preset's"})
    num_hidden_layers: Optional[int] = field(default=None, metadata={"help": "instead of the preset's"})
    num_attention_heads: Optional[int] = field(default=None, metadata={"help": "instead of the preset's"})
    intermediate_size: Optional[int] = field(default=None, metadata={"help": "instead of the preset's"})
    seed: int = field(default=0, metadata={"help": "of the random weights"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "replace a different model built here earlier by this command (never a foreign one)"})

    def __post_init__(self):
        positive(self, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if not (self.vocab_file or self.data_dir or self.extra_text):
            raise UserError("give --vocab_file or --data_dir to make the vocab from", "utils.tiny_ernie")


def main(argv: List[str]) -> int:
    from ..flags.parser import parse_flags

    (args,) = parse_flags(TinyErnieArguments, argv, "python -m utils.tiny_ernie", __doc__)
    if args.vocab_file:
        tokens = read_vocab_file(args.vocab_file)
    else:
        tokens = vocab_from_texts(texts_of_data_dirs(args.data_dir) + args.extra_text)
    build_ernie(args.output_dir, tokens, preset=args.preset.value, seed=args.seed, overwrite=args.overwrite_output_dir,
                hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size)
    print(f"{args.output_dir}: random ERNIE ({args.preset}, vocab {len(tokens)}), NOT pretrained")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
