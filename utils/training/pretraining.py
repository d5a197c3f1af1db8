"""Task-adaptive masked-LM pretraining (pretrain.py): continue ERNIE's MLM training on unlabeled text.

    python pretrain.py --model_name_or_path ernie-3.0-base-zh --input_file DATA/unlabeled.txt DATA/data.txt \
        --output_dir checkpoints/tapt --max_seq_length 128 --masking word --masked_lm_prob 0.15 \
        --per_device_train_batch_size 32 --learning_rate 5e-5 --max_steps 2000 --save_steps 200

The output directory is a PaddleNLP model directory (config.json, model_state.pdparams, vocab.txt,
tokenizer files, plus pretraining.json: what it was trained on) that `--model_name_or_path`
accepts, and a run directory with this tool's rules: one run per directory, marked checkpoints,
kill-safe rotation, `--resume_from_checkpoint` that continues with the losses of an
uninterrupted run (utils/training/trainer.py `MarkedCheckpoints`).

Masking, as ERNIE does for Chinese: `word` (default) masks whole words (jieba's segmentation; a
word's every token together, like ERNIE's and Chinese-BERT-wwm's whole-word masking), `char`
masks tokens independently. About `--masked_lm_prob` of each text's tokens are chosen (at least
one); a chosen token becomes [MASK] 80%, a random token 10%, itself 10% of the time. The loss is
computed at the chosen positions only (ERNIE's `masked_positions`).

The masks of a text are drawn from its own generator, seeded by (seed, epoch, text index): every
epoch masks anew (dynamic masking), and the masks depend on nothing else, so a resumed run masks
exactly as the uninterrupted one would have (with the seeded batch order, the losses are equal).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..choices import Masking
from ..flags.pretrain import PretrainArguments  # noqa: F401 (pretrain.py's own flags; run() takes them)
from ..errors import UserError
from ..rundir.names import MODEL_STATE_FILE, PLM_CONFIG_FILE, PRETRAINING_FILE, SPEC_FILE, VOCAB_FILE
from ..files import iter_text_lines, write_json_atomic

logger = logging.getLogger(__name__)

MODEL_FILES = (MODEL_STATE_FILE, PLM_CONFIG_FILE, PRETRAINING_FILE)
CHARS_PER_TOKEN = 8      # the first prefix of a line segmented (CorpusEncoder.units): 8 characters a token


# -- the corpus ----------------------------------------------------------------------------------


def read_corpus(paths: Sequence[str], what: str = "input file") -> Tuple[List[Tuple[str, ...]], List[dict]]:
    """`(texts, files)`: every line of every file (a text, or a pair), checked; `files` describes them."""
    texts: List[Tuple[str, ...]] = []
    files = []
    for path in paths:
        start = len(texts)
        digest = hashlib.sha256()
        for number, line in iter_text_lines(path, what):
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) > 2:
                raise UserError(f"expected a text or text_a<TAB>text_b, found {len(fields) - 1} tabs (a labelled "
                                "line? give the texts only, e.g. `cut -f1 train.txt`)", path, number)
            if not all(fields):
                raise UserError("empty text", path, number)
            texts.append(tuple(fields))
            digest.update(line.encode("utf-8") + b"\n")
        if len(texts) == start:
            raise UserError(f"has no texts: an {what} lists one text per line", path)
        files.append({"path": os.path.abspath(path), "texts": len(texts) - start, "sha256": digest.hexdigest()})
    return texts, files


@dataclass
class EncodedText:
    input_ids: List[int]
    token_type_ids: List[int]
    spans: List[Tuple[int, int]]     # maskable units (whole words, or single tokens): [start, end) in input_ids


class CorpusEncoder:
    """Texts -> token ids and the units masking picks, with the fast word-piece tokenizer that equals
    the model's (utils/deploy/preprocess.py) and jieba's words for whole-word masking."""

    def __init__(self, tokenizer, max_seq_length: int, masking: str):
        import tempfile

        from ..deploy.preprocess import load_wordpiece_tokenizer

        self.max_seq_length = max_seq_length
        self.whole_words = masking == Masking.WORD.value
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        with tempfile.TemporaryDirectory() as directory:
            tokenizer.save_pretrained(directory)
            self.fast = load_wordpiece_tokenizer(os.path.join(directory, VOCAB_FILE),
                                                 bool(getattr(tokenizer, "do_lower_case", True)), tokenizer.unk_token,
                                                 list(tokenizer.all_special_tokens))
        if self.whole_words:
            import jieba

            jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
            jieba.initialize()

    def units(self, text: str, max_tokens: Optional[int] = None) -> Tuple[List[int], List[int]]:
        """`(ids, unit index per token)` of `text`, or, with `max_tokens`, of a prefix of it whose first
        `max_tokens` tokens are the whole text's: jieba and the tokenizer never see the rest of a long line
        (a 2-million-character line was segmented whole: 4x slower). The prefix is `CHARS_PER_TOKEN`
        characters a token, doubled until a whole word lies between the tokens kept and the word the cut
        may have split (whitespace, say, gives no tokens)."""
        size = len(text) if max_tokens is None else CHARS_PER_TOKEN * (max_tokens + 2)
        while True:
            ids, units, words = self._units(text[:size])
            if size >= len(text) or (len(ids) > max_tokens and words[max_tokens - 1] + 1 < words[-1]):
                return ids, units
            size *= 2

    def _units(self, text: str) -> Tuple[List[int], List[int], List[int]]:
        """`(ids, unit index per token, word index per token)`: a unit is a jieba word (word masking) or a
        token; a word is jieba's, or the pre-tokenizer's (char masking)."""
        if self.whole_words:
            import jieba

            encoding = self.fast.encode(jieba.lcut(text), is_pretokenized=True, add_special_tokens=False)
            words = [w if w is not None else -1 for w in encoding.word_ids]
            return encoding.ids, words, words
        encoding = self.fast.encode(text, add_special_tokens=False)
        return encoding.ids, list(range(len(encoding.ids))), [w if w is not None else -1 for w in encoding.word_ids]

    def encode(self, text: Tuple[str, ...]) -> EncodedText:
        room = self.max_seq_length - 1 - len(text)  # [CLS] and a [SEP] after each part
        pieces = [self.units(part, room) for part in text]  # a part keeps at most `room` tokens
        lengths = [len(ids) for ids, _ in pieces]
        while sum(lengths) > room:  # the longest part gives way, as the tokenizers truncate pairs
            lengths[int(np.argmax(lengths))] -= 1
        input_ids, token_types, spans = [self.cls], [0], []
        for part, ((ids, units), length) in enumerate(zip(pieces, lengths)):
            offset = len(input_ids)
            input_ids += ids[:length] + [self.sep]
            token_types += [part] * (length + 1)
            start = 0
            for index in range(1, length + 1):  # consecutive tokens of one unit form a span
                if index == length or units[index] != units[start]:
                    spans.append((offset + start, offset + index))
                    start = index
        return EncodedText(input_ids, token_types, spans)


class LazyEncoded:
    """`encoder.encode(texts[i])` on access: nothing is encoded ahead, so a corpus of a million lines
    starts at once and holds its texts only (encoding all first took minutes and ~2.8 GB)."""

    def __init__(self, texts: Sequence[Tuple[str, ...]], encoder: CorpusEncoder):
        self.texts, self.encoder = texts, encoder

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> EncodedText:
        return self.encoder.encode(self.texts[index])


class MaskedTextDataset:
    """Item `epoch * len(self) + i`: text i masked for that epoch (see the module docstring)."""

    def __init__(self, encoded: Sequence[EncodedText], seed: int, masked_lm_prob: float, mask_id: int,
                 random_ids: np.ndarray):
        self.encoded = encoded
        self.seed = int(seed)
        self.prob = masked_lm_prob
        self.mask_id = mask_id
        self.random_ids = random_ids     # the tokens a 10% replacement draws from (no special tokens)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, key: int) -> Dict[str, list]:
        epoch, index = divmod(int(key), len(self.encoded))
        text = self.encoded[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        budget = max(1, int(round(sum(end - start for start, end in text.spans) * self.prob)))
        chosen, count = [], 0
        for unit in rng.permutation(len(text.spans)):
            start, end = text.spans[unit]
            if count + end - start > budget:
                continue  # whole units only: a word that would overshoot is skipped
            chosen.append(unit)
            count += end - start
            if count >= budget:
                break
        if not chosen and text.spans:  # every word longer than the budget: mask the first drawn anyway
            chosen = [int(rng.integers(len(text.spans)))]
        positions = sorted(p for unit in chosen for p in range(*text.spans[unit]))
        input_ids = list(text.input_ids)
        labels = [input_ids[p] for p in positions]
        draws = rng.random(len(positions))
        replacements = self.random_ids[rng.integers(len(self.random_ids), size=len(positions))]
        for position, draw, replacement in zip(positions, draws, replacements):
            if draw < 0.8:
                input_ids[position] = self.mask_id
            elif draw < 0.9:
                input_ids[position] = int(replacement)
        return {"input_ids": input_ids, "token_type_ids": text.token_type_ids, "positions": positions,
                "labels": labels}


class MaskedLMCollator:
    """Pads a batch; `masked_positions` are flat batch*sequence indices, `labels` the tokens there."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: List[dict]) -> Dict[str, np.ndarray]:
        length = max(len(item["input_ids"]) for item in items)
        input_ids = np.full((len(items), length), self.pad_id, dtype=np.int64)
        token_types = np.zeros((len(items), length), dtype=np.int64)
        positions, labels = [], []
        for row, item in enumerate(items):
            input_ids[row, :len(item["input_ids"])] = item["input_ids"]
            token_types[row, :len(item["token_type_ids"])] = item["token_type_ids"]
            positions += [row * length + p for p in item["positions"]]
            labels += item["labels"]
        return {"input_ids": input_ids, "token_type_ids": token_types,
                "masked_positions": np.array(positions, dtype=np.int64), "labels": np.array(labels, dtype=np.int64)}


# -- the run -------------------------------------------------------------------------------------


def trainer_class():
    from paddlenlp.trainer import Trainer

    from .trainer import MarkedCheckpoints, SeededBatchSampler

    class EpochKeyedBatchSampler(SeededBatchSampler):
        """The seeded order, with each index `i` handed out as `epoch * N + i` (the dataset's key)."""

        def __iter__(self):
            epoch, size = self.epoch, len(self.dataset)
            for batch in super().__iter__():
                yield [epoch * size + i for i in batch]

    class PretrainTrainer(MarkedCheckpoints, Trainer):
        """paddlenlp's Trainer on ErnieForMaskedLM with marked checkpoints; every save (checkpoint or
        final model) also writes pretraining.json, so each is a model directory on its own."""

        def __init__(self, *args, provenance: dict, **kwargs):
            self.provenance = provenance
            super().__init__(*args, **kwargs)

        sampler_class = EpochKeyedBatchSampler

        def _save(self, output_dir=None, state_dict=None, merge_tensor_parallel=False):
            output_dir = output_dir or self.args.output_dir
            super()._save(output_dir, state_dict, merge_tensor_parallel)
            if self.args.should_save:
                write_json_atomic(os.path.join(output_dir, PRETRAINING_FILE),
                                  {**self.provenance, "global_step": self.state.global_step})

    return PretrainTrainer


def random_token_ids(tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def run(model_args: PretrainArguments, args) -> dict:
    """pretrain.py: check the inputs, claim the output directory, train, save; return the metrics."""
    import paddle

    from ..model.plm import load_tokenizer
    from ..rundir.plan import DirLock, apply_plan

    texts, files, eval_texts, eval_files = read_inputs(model_args, args)
    lock = DirLock(args.output_dir, what="pretrain.py").acquire() if args.should_save else None
    failed = True
    try:
        plan = plan_output(model_args, args)
        tokenizer = load_tokenizer(model_args.model_name_or_path)
        if args.should_save:
            apply_plan(plan)
        encoder = CorpusEncoder(tokenizer, model_args.max_seq_length, model_args.masking.value)
        logger.info("%d texts, %s masking (each encoded when its batch is drawn)", len(texts) + len(eval_texts),
                    model_args.masking.value)
        random_ids = random_token_ids(tokenizer)

        def dataset(items):
            return MaskedTextDataset(LazyEncoded(items, encoder), args.seed, model_args.masked_lm_prob,
                                     tokenizer.mask_token_id, random_ids)

        train_dataset = dataset(texts)
        eval_dataset = dataset(eval_texts) if eval_texts else None
        provenance = provenance_of(model_args, args, files, eval_files)
        paddle.set_device(args.device)
        with paddle.utils.unique_name.guard():  # parameter names (optimizer state keys) equal in every run
            results = train_and_evaluate(model_args, args, tokenizer, train_dataset, eval_dataset, provenance,
                                         plan.resume)
        failed = False
        return results
    finally:
        if lock is not None:
            lock.release(failed=failed)


def read_inputs(model_args: PretrainArguments, args) -> Tuple[list, List[dict], list, List[dict]]:
    """`(texts, files, eval_texts, eval_files)`, every line checked, and the flags that need them; no model loads."""
    from ..model.plm import position_limit

    if args.eval_steps and not model_args.eval_file:
        raise UserError("evaluates the held-out --eval_file, and none was given", "--eval_steps")
    texts, files = read_corpus(model_args.input_file)
    eval_texts, eval_files = read_corpus([model_args.eval_file], "eval file") if model_args.eval_file else ([], [])
    limit = position_limit(model_args.model_name_or_path)
    if limit is not None and model_args.max_seq_length > limit:
        raise UserError(f"is {model_args.max_seq_length}, but the model has only {limit} positions", "--max_seq_length")
    return texts, files, eval_texts, eval_files


def plan_output(model_args: PretrainArguments, args):
    """The output directory's plan (utils/rundir/plan.py), with the checkpoint it resumes from verified."""
    from ..rundir.checkpoints import verify as verify_checkpoint
    from ..rundir.plan import plan_output_dir

    model_dir = model_args.model_name_or_path
    plan = plan_output_dir(args.output_dir, True, ["eval"] if model_args.eval_file else [],
                           args.overwrite_output_dir, args.resume_from_checkpoint,
                           model_dir if os.path.isdir(model_dir) else None)
    if plan.resume:
        if os.path.isfile(os.path.join(plan.resume, SPEC_FILE)):
            raise UserError("is a train.py checkpoint (a classifier); pretrain.py continues its own checkpoints "
                            f"(with {PRETRAINING_FILE}): to classify with a pretrained model, give pretrain.py's "
                            "output to train.py --model_name_or_path", plan.resume)
        verify_checkpoint(plan.resume, purpose="resume", world_size=max(1, args.world_size), model_files=MODEL_FILES)
    return plan


def provenance_of(model_args: PretrainArguments, args, files: List[dict], eval_files: List[dict]) -> dict:
    """What `PRETRAINING_FILE` says the model was trained on, and how."""
    from ..model.plm import is_not_pretrained

    model_dir = model_args.model_name_or_path
    return {"built_by": "python pretrain.py", "base_model": model_dir,
            "base_was_pretrained": not (os.path.isdir(model_dir) and is_not_pretrained(model_dir)),
            "input_files": files, "eval_files": eval_files, "masking": model_args.masking.value,
            "masked_lm_prob": model_args.masked_lm_prob, "max_seq_length": model_args.max_seq_length,
            "seed": args.seed, "max_steps": args.max_steps, "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size}


def train_and_evaluate(model_args: PretrainArguments, args, tokenizer, train_dataset, eval_dataset,
                       provenance: dict, resume: Optional[str]) -> dict:
    """Load the masked LM, train (from `resume` when given), save, evaluate on --eval_file; the metrics."""
    from paddlenlp.trainer import set_seed
    from paddlenlp.trainer.trainer_callback import ProgressCallback

    from ..model.plm import load_plm
    from .callbacks import Progress

    set_seed(args.seed)
    model, _ = load_plm(model_args.model_name_or_path, head="masked_lm")
    trainer = trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              tokenizer=tokenizer, data_collator=MaskedLMCollator(tokenizer.pad_token_id),
                              provenance=provenance)
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(Progress())
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    results = {"train": metrics}
    if eval_dataset is not None:
        evaluation = trainer.evaluate()
        evaluation["eval_perplexity"] = float(math.exp(min(evaluation["eval_loss"], 50)))
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        results["eval"] = evaluation
    return results
