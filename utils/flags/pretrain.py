"""pretrain.py's own flags (the Trainer's are `utils.flags.trainer.PretrainingArguments`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..choices import Masking
from ..errors import UserError
from .checks import fraction

@dataclass
class PretrainArguments:
    """pretrain.py's own flags (PaddleNLP's pretraining names); the Trainer's are `PretrainingArguments`."""

    model_name_or_path: str = field(default="ernie-3.0-base-zh", metadata={
        "help": "The ERNIE to continue: a PaddleNLP built-in name or a local model directory."})
    input_file: List[str] = field(default=None, metadata={
        "help": "Unlabeled texts, one per line (text_a<TAB>text_b: a pair): unlabeled.txt, data.txt, the train/dev "
                "texts (give texts only: `cut -f1 train.txt`). Several files are read in order."})
    eval_file: Optional[str] = field(default=None, metadata={
        "help": "Held-out texts: eval_loss and perplexity at the end (and every --eval_steps when given)."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per text with [CLS]/[SEP] (longer ones are cut)."})
    masking: Masking = field(default=Masking.WORD, metadata={
        "help": "word: whole-word masking (jieba words, as ERNIE); char: every token on its own."})
    masked_lm_prob: float = field(default=0.15, metadata={"help": "Share of each text's tokens to predict."})

    def __post_init__(self):
        self.masking = Masking.from_flag(self.masking, "--masking")
        if not self.input_file:
            raise UserError("is required: the unlabeled text file(s) to pretrain on", "--input_file")
        fraction(self.masked_lm_prob, "--masked_lm_prob")
        if self.max_seq_length < 4:
            raise UserError(f"must be at least 4, got {self.max_seq_length}", "--max_seq_length")
