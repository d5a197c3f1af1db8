"""`python -m utils.label_words`'s flags: the dataset, the PLM to ask, how many candidates."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from ..dataset.labels import LABEL_FILE
from ..errors import UserError
from ..model.label_words import DEFAULT_TOP_TOKENS


@dataclass
class LabelWordsArguments:
    data_dir: Optional[str] = field(default=None, metadata={
        "required": True, "help": "Dataset folder with label.txt (and train.txt to rank)."})
    model_name_or_path: Optional[str] = field(default=None, metadata={
        "required": True, "help": "The PLM whose tokenizer and MLM head to ask."})
    prompt: str = field(default="", metadata={"text": True, "help": "Plain-text prompt between the text and the mask."})
    top_tokens: int = field(default=DEFAULT_TOP_TOKENS, metadata={
        "help": "MLM-head candidates per label (0: only label.txt's alternatives)."})
    max_examples: int = field(default=32, metadata={"help": "Training texts per label used for ranking."})
    no_ranking: bool = field(default=False, metadata={"help": "Only check the tokenization (no model loaded)."})
    output: Optional[str] = field(default=None, metadata={
        "help": "Write the suggested label.txt here (never over --data_dir's)."})

    def __post_init__(self):
        if self.top_tokens < 0:
            raise UserError(f"must be 0 or more, got {self.top_tokens}", "--top_tokens")
        if self.max_examples < 1:
            raise UserError(f"must be positive, got {self.max_examples}", "--max_examples")
        if self.output and os.path.realpath(self.output) == os.path.realpath(self.label_path):
            raise UserError("would overwrite the dataset's own label.txt; write the suggestion elsewhere", "--output")

    @property
    def label_path(self) -> str:
        return os.path.join(self.data_dir, LABEL_FILE)
