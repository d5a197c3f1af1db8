"""The audited examples and their K folds: stratified, seeded, each example held out exactly once.

`read_pool` reads train.txt (and dev.txt with --include_dev) line by line, keeping each example's
`file:line` and the line as written, so a fold's data files are the user's own lines. `assign_folds`
deals each stratum's examples (shuffled by the seed) round-robin into the K folds, continuing where
the previous stratum stopped, so every label is spread evenly and fold sizes differ by at most one.
The stratum of a multi-class example is its label; of a label set, its rarest label (a label set
has no single class). `selection_slice` picks a fold's model-selection examples from its training
folds the same way. No Paddle here.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..dataset.folder import parse_line, split_path
from ..dataset.labels import LABEL_FILE, LabelSet, read_label_file
from ..errors import UserError
from ..files import read_text_lines
from ..task.decoding import MULTI_CLASS


@dataclass
class Example:
    """One audited data line: where it is, the line as written, and the parsed example."""

    path: str
    line: int
    text: str             # the line as written (text<TAB>label or text_a<TAB>text_b<TAB>label)
    example: dict         # utils.dataset.folder's example dict: text_a, [text_b], labels

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.path)}:{self.line}"

    @property
    def texts(self) -> List[str]:
        return [self.example["text_a"]] + ([self.example["text_b"]] if "text_b" in self.example else [])


@dataclass
class Pool:
    """Everything the audit reads from the data folder."""

    labels: LabelSet
    examples: List[Example]
    dev: List[Example]         # dev.txt when it is not audited ([] when absent or audited)
    task_type: str
    pair: bool

    def given(self) -> List[List[int]]:
        """Each example's given label ids (one for multi-class; a label set's, ancestors included)."""
        return [given_ids(e.example["labels"], self.task_type) for e in self.examples]


def given_ids(labels, task_type: str) -> List[int]:
    if task_type == MULTI_CLASS:
        return [int(labels)]
    return [i for i, on in enumerate(labels) if on > 0.5]


def read_split(path: str, what: str, labels: LabelSet, task_type: str, pair: Optional[bool]) -> List[Example]:
    """Every labelled line of a split file, parsed strictly (errors name file:line)."""
    out = []
    for number, line in read_text_lines(path, what):
        example = parse_line(line, path, number, True, pair, labels.label_to_id, task_type)
        pair = "text_b" in example if pair is None else pair
        out.append(Example(path, number, line, example))
    return out


def read_pool(data_dir: str, task_type: str, include_dev: bool) -> Pool:
    """The audited examples (train.txt, plus dev.txt with `include_dev`) and the dev set kept for model
    selection. Errors (a missing folder or file, a bad line) name the file and line."""
    if not data_dir or not os.path.isdir(data_dir):
        raise UserError("data directory not found (a folder with train.txt, label.txt and optionally dev.txt)",
                        data_dir or "--data_dir")
    labels = read_label_file(os.path.join(data_dir, LABEL_FILE), task_type)
    train = read_split(split_path(data_dir, "train"), "train file", labels, task_type, None)
    if not train:
        raise UserError("train file has no examples", split_path(data_dir, "train"))
    pair = "text_b" in train[0].example
    dev_path = split_path(data_dir, "dev")
    dev = read_split(dev_path, "dev file", labels, task_type, pair) if os.path.exists(dev_path) else []
    if include_dev and not dev:
        raise UserError("--include_dev audits dev.txt, and it has no examples" if os.path.exists(dev_path)
                        else "--include_dev audits dev.txt, which is not there", dev_path)
    return Pool(labels, train + dev if include_dev else train, [] if include_dev else dev, task_type, pair)


def strata(given: Sequence[Sequence[int]]) -> List[int]:
    """One stratum per example: its label (multi-class) or its rarest label (label sets; -1: none)."""
    counts = Counter(label for labels in given for label in labels)
    return [min(labels, key=lambda label: (counts[label], label)) if labels else -1 for labels in given]


def check_label_counts(pool: Pool, folds: int) -> None:
    """Every label given to between 1 and K-1 examples is an error: some fold would hold out all of them,
    and its model would never have seen the label. A label nobody was given is fine (no example to judge)."""
    counts = Counter(label for labels in pool.given() for label in labels)
    names = pool.labels.labels
    for label_id, count in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if count < folds:
            name = names[label_id]
            # One example is held out by whichever fold holds it: no --folds helps, only more examples.
            remedy = (f"lower --folds to {count} or fewer, add examples of {name!r}" if count >= 2 else
                      f"no --folds can audit a single example; add examples of {name!r}")
            raise UserError(f"label {name!r} is given to {count} audited example(s), fewer than --folds {folds}: some "
                            f"fold would hold out every one of them and its model would never see the label; {remedy}, "
                            "or leave them out of the audit", pool.labels.path, pool.labels.lines.get(name))


def assign_folds(groups: Sequence[int], k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each example: per group, shuffled by `seed`, dealt round-robin; the deal goes on
    from fold to fold across groups, so fold sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(groups), -1, dtype=np.int64)
    position = 0
    by_group: Dict[int, List[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    for group in sorted(by_group):
        members = np.array(by_group[group])[rng.permutation(len(by_group[group]))]
        for member in members:
            fold[member] = position % k
            position += 1
    return fold


def selection_slice(groups: Sequence[int], candidates: Sequence[int], fraction: float, seed: int) -> List[int]:
    """The indices (of `candidates`, ascending) kept aside for model selection: per group, round(fraction * n)
    at random, at least one when the group has two or more (its other examples still train)."""
    rng = np.random.default_rng(seed)
    by_group: Dict[int, List[int]] = {}
    for index in candidates:
        by_group.setdefault(groups[index], []).append(index)
    chosen = []
    for group in sorted(by_group):
        members = by_group[group]
        take = max(1 if len(members) >= 2 else 0, int(round(fraction * len(members))))
        chosen += [members[i] for i in rng.permutation(len(members))[:take]]
    return sorted(chosen)
