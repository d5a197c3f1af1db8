"""Which label words should I write? A checker for label.txt's words, and a ranking of candidates.

    python -m utils.label_words --data_dir ./data --model_name_or_path ernie-3.0-base-zh [--prompt ...]

Per label, how its word tokenizes: `[UNK]` tokens, a word cut into sub-word pieces, token counts
that differ between labels (`--verbalizer manual` and `--zero_shot` need equal counts), and words
that collide (two labels whose words give the same token ids start from the same classifier row
and, if both are `[UNK]`, keep identical scores forever). Then a cheap form of LM-BFF's automatic
label search: candidates from label.txt's alternatives (`name==w1|w2|...`) and from the MLM head's
top tokens at the mask after `text + prompt`, ranked per label by how much more likely the PLM
finds them on that label's training texts than on the others' (mean log-probability per token).
Output: the table and a suggested label.txt. train.py logs the tokenization problems as warnings
(`warn_label_words`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_TOP_TOKENS = 5


@dataclass
class WordCheck:
    """How one label's word tokenizes, and what is wrong with it (`problems`, empty when fine)."""

    label: str
    word: str
    tokens: List[str]
    ids: List[int]
    problems: List[str] = field(default_factory=list)


def check_label_words(label_words: Dict[str, str], tokenizer) -> List[WordCheck]:
    """One `WordCheck` per label (label order): [UNK], split words, unequal counts, collisions."""
    checks = []
    for label in sorted(label_words):
        word = label_words[label]
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        checks.append(WordCheck(label, word, tokenizer.convert_ids_to_tokens(ids), list(ids)))
    counts = {len(c.ids) for c in checks}
    by_ids: Dict[tuple, List[str]] = {}
    for c in checks:
        by_ids.setdefault(tuple(c.ids), []).append(c.label)
    for c in checks:
        unknown = [t for t, i in zip(c.tokens, c.ids) if i == tokenizer.unk_token_id]
        if not c.ids:
            c.problems.append("tokenizes to nothing")
        elif len(unknown) == len(c.ids):
            c.problems.append("[UNK]: the vocabulary does not know it")
        elif unknown:
            c.problems.append(f"{len(unknown)} of its {len(c.ids)} tokens are [UNK]")
        # A Chinese word is one token per character in ERNIE's vocabulary: that is how it is read,
        # not a problem. A word cut into sub-word pieces (`##`) is: the vocabulary lacks it.
        if any(t.startswith("##") for t in c.tokens):
            c.problems.append(f"split into sub-word pieces ({' '.join(c.tokens)}): the vocabulary lacks the word")
        if len(counts) > 1:
            c.problems.append(f"{len(c.ids)} tokens while other labels' words have "
                              f"{'/'.join(str(n) for n in sorted(counts - {len(c.ids)}))} "
                              "(--verbalizer manual and --zero_shot need equal counts)")
        others = [label for label in by_ids[tuple(c.ids)] if label != c.label]
        if others:
            c.problems.append(f"collides with {', '.join(others)}: the same token ids, so the same scores")
    return checks


def warn_label_words(label_words: Dict[str, str], tokenizer, source: str = "label.txt") -> List[WordCheck]:
    """train.py's warnings: partly [UNK] words and colliding words (the problems that can make two
    labels indistinguishable; wholly [UNK] words are warned about by `plm.warn_unknown_tokens`);
    `python -m utils.label_words` shows the rest."""
    checks = check_label_words(label_words, tokenizer)
    for c in checks:
        for problem in c.problems:
            if "tokens are [UNK]" in problem or problem.startswith("collides"):
                logger.warning("%s: label word %r of %r: %s (python -m utils.label_words suggests others)", source,
                               c.word, c.label, problem)
    return checks


# -- ranking candidates by the MLM head --------------------------------------------------------------------


def _mask_log_probs(plm, tokenizer, texts: Sequence[str], prompt: str, n_masks: int, batch_size: int = 32
                    ) -> np.ndarray:
    """log P(token) at each of `n_masks` masks after `text + prompt`: `[texts, n_masks, vocab]`."""
    import paddle

    out = []
    with paddle.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = [[tokenizer.cls_token_id] + tokenizer(t + prompt, add_special_tokens=False)["input_ids"][:400]
                    + [tokenizer.mask_token_id] * n_masks + [tokenizer.sep_token_id]
                    for t in texts[start:start + batch_size]]
            length = max(len(r) for r in rows)
            ids = np.full((len(rows), length), tokenizer.pad_token_id, dtype="int64")
            positions = []
            for i, r in enumerate(rows):
                ids[i, :len(r)] = r
                positions += [i * length + len(r) - 1 - n_masks + k for k in range(n_masks)]
            attention = (ids == tokenizer.pad_token_id).astype("float32")[:, None, None, :] * -1e4
            logits = plm(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(attention),
                         masked_positions=paddle.to_tensor(np.array(positions, dtype="int64")))
            logits = (logits[0] if isinstance(logits, (tuple, list)) else logits).numpy().astype("float64")
            logits = logits - logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            out.append(logp.reshape(len(rows), n_masks, -1))
    return np.concatenate(out)


@dataclass
class Candidate:
    word: str
    source: str          # label.txt, or mlm (the MLM head's top tokens)
    own: float           # mean log-probability per token on the label's texts
    others: float        # ... on the other labels' texts
    score: float         # own - others: how well the word separates the label


def rank_candidates(plm, tokenizer, texts_by_label: Dict[str, List[str]], alternatives: Dict[str, List[str]],
                    prompt: str, top_tokens: int = DEFAULT_TOP_TOKENS) -> Dict[str, List[Candidate]]:
    """Per label, its candidates best first (see the module docstring)."""
    labels = sorted(texts_by_label)
    all_texts = [t for label in labels for t in texts_by_label[label]]
    owner = np.array([label for label in labels for _ in texts_by_label[label]])
    single = _mask_log_probs(plm, tokenizer, all_texts, prompt, 1)[:, 0, :]  # [texts, vocab]
    specials = set(tokenizer.all_special_ids)
    candidates: Dict[str, Dict[str, str]] = {}
    for label in labels:
        words = {w: "label.txt" for w in alternatives.get(label, [])}
        mean = single[owner == label].mean(0)
        others = single[owner != label].mean(0) if (owner != label).any() else np.zeros_like(mean)
        for i in np.argsort(-(mean - others)):
            if len([w for w, s in words.items() if s == "mlm"]) >= top_tokens:
                break
            token = tokenizer.convert_ids_to_tokens([int(i)])[0]
            if int(i) in specials or token.startswith("##") or token in words or not token.strip():
                continue
            words[token] = "mlm"
        candidates[label] = words
    cache: Dict[int, np.ndarray] = {1: single[:, None, :]}
    ranked: Dict[str, List[Candidate]] = {}
    for label in labels:
        rows = []
        for word, source in candidates[label].items():
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            if len(ids) not in cache:
                cache[len(ids)] = _mask_log_probs(plm, tokenizer, all_texts, prompt, len(ids))
            per_text = np.mean([cache[len(ids)][:, k, t] for k, t in enumerate(ids)], axis=0)
            own = float(per_text[owner == label].mean())
            rest = float(per_text[owner != label].mean()) if (owner != label).any() else 0.0
            rows.append(Candidate(word, source, own, rest, own - rest))
        ranked[label] = sorted(rows, key=lambda c: -c.score)
    return ranked


def suggest(ranked: Dict[str, List[Candidate]], current: Dict[str, str]) -> Dict[str, str]:
    """One word per label, best candidate first, never a word another label already took (labels
    with the clearest winner choose first)."""
    order = sorted(ranked, key=lambda label: -(ranked[label][0].score if ranked[label] else -1e9))
    taken, chosen = set(), {}
    for label in order:
        pick = next((c.word for c in ranked[label] if c.word not in taken), current[label])
        chosen[label] = pick
        taken.add(pick)
    return chosen


def format_report(checks: List[WordCheck], ranked: Optional[Dict[str, List[Candidate]]] = None,
                  suggested: Optional[Dict[str, str]] = None, shown: int = 5) -> str:
    lines = ["label\tword\ttokens\tproblems"]
    for c in checks:
        lines.append(f"{c.label}\t{c.word}\t{' '.join(c.tokens)}\t{'; '.join(c.problems) or 'ok'}")
    if ranked:
        lines += ["", "label\trank\tcandidate\tsource\tscore\tlog-p own\tlog-p others"]
        for label, rows in ranked.items():
            for rank, c in enumerate(rows[:shown], 1):
                lines.append(f"{label}\t{rank}\t{c.word}\t{c.source}\t{c.score:.3f}\t{c.own:.3f}\t{c.others:.3f}")
    if suggested:
        lines += ["", "suggested label.txt:"] + [f"{label}=={word}" for label, word in sorted(suggested.items())]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    """The command (`python -m utils.label_words`, utils/label_words.py): `args` are its checked flags
    (utils.flags.label_words.LabelWordsArguments). Prints the report, writes --output."""
    from ..dataset.folder import load_dataset_dir
    from ..files import check_output_file, write_text_atomic
    from ..dataset.labels import read_label_file
    from .plm import load_tokenizer

    if args.output:
        check_output_file(args.output)
    raw = read_label_file(args.label_path)
    alternatives = raw.alternatives or {label: [word] for label, word in raw.label_words.items()}
    first = dict(raw.label_words)
    dataset = None if args.no_ranking else load_dataset_dir(args.data_dir, need_train=True, need_dev=False)
    tokenizer = load_tokenizer(args.model_name_or_path)
    checks = check_label_words(first, tokenizer)
    ranked = suggested = None
    if dataset is not None:
        from ..model import compat
        from .plm import load_plm

        compat.apply()
        plm, _ = load_plm(args.model_name_or_path, head="masked_lm")
        plm.eval()
        labels = dataset.labels.labels
        texts = {label: [] for label in labels}
        for e in dataset.train:
            label = labels[e["labels"]]
            if len(texts[label]) < args.max_examples:
                texts[label].append(e["text_a"])
        ranked = rank_candidates(plm, tokenizer, texts, alternatives, args.prompt, args.top_tokens)
        suggested = suggest(ranked, first)
    print(format_report(checks, ranked, suggested), end="")
    if args.output and suggested:
        write_text_atomic(args.output, "".join(f"{label}=={word}\n" for label, word in sorted(suggested.items())))
        print(f"wrote {args.output}")
    return 0
