"""Learnable synthetic tasks for tests and benchmarks: labels decided by keywords.

Every text is random filler characters with one class keyword somewhere inside (multi-label: one
to three different keywords, each one's label is on), so even a randomly initialised ERNIE can
learn it; scores on it show the training loop works, not that the model understands language.
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Optional, Tuple

FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"
KEYWORDS = {"apple": ("苹果", "红色"), "banana": ("香蕉", "黄色"), "grape": ("葡萄", "紫色")}
PROMPT = "这句话说的水果是"


def make_text(rng: random.Random, keyword: str, min_len: int = 3, max_len: int = 10) -> str:
    left = "".join(rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len)))
    right = "".join(rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len)))
    return left + keyword + right


def make_split(rng: random.Random, per_class: int, labelled: bool = True, **kwargs) -> List[str]:
    lines = []
    for label, (keyword, _) in KEYWORDS.items():
        for _ in range(per_class):
            text = make_text(rng, keyword, **kwargs)
            lines.append(f"{text}\t{label}" if labelled else text)
    rng.shuffle(lines)
    return lines


def write_keyword_dataset(data_dir: str, train_per_class: int = 32, dev_per_class: int = 8,
                          test_per_class: int = 8, data_lines: int = 12, seed: int = 0,
                          label_words: Optional[Dict[str, str]] = None, **text_kwargs) -> str:
    """Write train/dev/test/data/label .txt files of the keyword task into `data_dir`."""
    rng = random.Random(seed)
    os.makedirs(data_dir, exist_ok=True)
    words = label_words or {label: word for label, (_, word) in KEYWORDS.items()}
    files = {
        "label.txt": [f"{label}=={words[label]}" for label in KEYWORDS],
        "train.txt": make_split(rng, train_per_class, **text_kwargs),
        "dev.txt": make_split(rng, dev_per_class, **text_kwargs),
        "test.txt": make_split(rng, test_per_class, **text_kwargs),
        "data.txt": make_split(rng, max(1, data_lines // len(KEYWORDS)), labelled=False, **text_kwargs),
    }
    for name, lines in files.items():
        with open(os.path.join(data_dir, name), "w", encoding="utf-8") as fp:
            fp.write("\n".join(lines) + "\n")
    return data_dir


def write_long_keyword_dataset(data_dir: str, hidden: int = 128, tail: int = 40, train_per_class: int = 32,
                               dev_per_class: int = 8, test_per_class: int = 8, seed: int = 0) -> str:
    """The keyword task with the keyword hidden: at least `hidden` filler characters (one token each)
    before it and up to `tail` after, so a model that reads only the first `hidden` tokens sees
    none of it (--long_text: truncation is at chance, windows find it)."""
    rng = random.Random(seed)

    def split(per_class: int) -> List[str]:
        lines = []
        for label, (keyword, _) in KEYWORDS.items():
            for _ in range(per_class):
                left = "".join(rng.choice(FILLER) for _ in range(hidden + rng.randint(0, tail)))
                right = "".join(rng.choice(FILLER) for _ in range(rng.randint(0, tail)))
                lines.append(f"{left}{keyword}{right}\t{label}")
        rng.shuffle(lines)
        return lines

    os.makedirs(data_dir, exist_ok=True)
    files = {"label.txt": [f"{label}=={word}" for label, (_, word) in KEYWORDS.items()],
             "train.txt": split(train_per_class), "dev.txt": split(dev_per_class), "test.txt": split(test_per_class)}
    for name, lines in files.items():
        with open(os.path.join(data_dir, name), "w", encoding="utf-8") as fp:
            fp.write("\n".join(lines) + "\n")
    return data_dir


MULTI_LABEL_PROMPT = "这句话提到的水果有"


def make_multilabel_split(rng: random.Random, n: int, max_labels: int = 2, min_len: int = 1,
                          max_len: int = 5) -> List[str]:
    """`n` lines `text<TAB>l1,l2`: each text carries 1..max_labels distinct keywords between fillers."""
    names = list(KEYWORDS)
    lines = []
    for i in range(n):
        count = 1 + i % max_labels  # as many texts with one, two and three labels
        chosen = rng.sample(names, count)
        parts = ["".join(rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len)))]
        for name in chosen:
            parts += [KEYWORDS[name][0], "".join(rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len)))]
        lines.append("".join(parts) + "\t" + ",".join(sorted(chosen)))
    rng.shuffle(lines)
    return lines


def write_multilabel_keyword_dataset(data_dir: str, train: int = 96, dev: int = 30, test: int = 30, data_lines: int = 6,
                                     seed: int = 0) -> str:
    """The keyword task as --task_type multi-label: a text's labels are the fruits it names (one or
    two, half each; with three per text the tiny model needs far more steps)."""
    rng = random.Random(seed)
    os.makedirs(data_dir, exist_ok=True)
    files = {
        "label.txt": [f"{label}=={word}" for label, (_, word) in KEYWORDS.items()],
        "train.txt": make_multilabel_split(rng, train),
        "dev.txt": make_multilabel_split(rng, dev),
        "test.txt": make_multilabel_split(rng, test),
        "data.txt": [line.split("\t")[0] for line in make_multilabel_split(rng, data_lines)],
    }
    for name, lines in files.items():
        with open(os.path.join(data_dir, name), "w", encoding="utf-8") as fp:
            fp.write("\n".join(lines) + "\n")
    return data_dir


def vocab_texts() -> List[str]:
    """Every character the keyword task can produce (for building a tiny vocab)."""
    return [FILLER, PROMPT] + [k + w for k, w in KEYWORDS.values()]


def make_mlm_corpus(n: int, seed: int = 0) -> List[str]:
    """Texts whose masked characters are predictable from the rest (for pretraining tests): each
    fruit always comes with its colour word, in a few fixed sentence frames, between fillers."""
    rng = random.Random(seed)
    frames = ("{k}是{w}的", "我看见{w}{k}", "{k}的颜色是{w}")
    texts = []
    for _ in range(n):
        keyword, word = rng.choice(list(KEYWORDS.values()))
        filler = "".join(rng.choice(FILLER[:20]) for _ in range(rng.randint(0, 2)))
        texts.append(filler + rng.choice(frames).format(k=keyword, w=word))
    return texts


def flip_labels(path: str, fraction: float, seed: int = 0) -> Dict[int, str]:
    """Plant label noise in a multi-class data file: `round(fraction * n)` lines chosen at random (seeded) get
    another label of the file's own, chosen at random; returns `{line number: the true label}` of those lines."""
    with open(path, encoding="utf-8") as fp:
        lines = fp.read().splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    labels = sorted({line.rsplit("\t", 1)[1] for _, line in numbered})
    rng = random.Random(seed)
    planted = {}
    for number, line in rng.sample(numbered, round(fraction * len(numbered))):
        text, label = line.rsplit("\t", 1)
        lines[number - 1] = f"{text}\t{rng.choice([other for other in labels if other != label])}"
        planted[number] = label
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines) + "\n")
    return planted


# The long-tail keyword task (benchmarks/active_learning.py --task longtail): four classes, six two-character
# keywords each, none of whose characters is a filler's or another task's. In a pool, each class's keywords
# are Zipf-distributed (`longtail_counts`); a test set is uniform over keywords. A model learns a keyword only
# from labelled texts that carry it, so uniform labelling spends its labels on the frequent keywords.
LONGTAIL_KEYWORDS = {
    "animal": ("猫狗", "鸡鸭", "鹅兔", "鹿熊", "狼虎", "豹蛇"),
    "tree": ("松柏", "杨柳", "桃李", "杏梅", "菊兰", "竹荷"),
    "tool": ("锤钳", "锯斧", "凿锉", "铲犁", "刨钉", "锥镐"),
    "weather": ("雨雪", "霜雷", "雹雾", "霞虹", "冰晴", "旱涝"),
}
LONGTAIL_EXPONENT = 1.5


def longtail_counts(per_class: int, keywords: int = 6, exponent: float = LONGTAIL_EXPONENT) -> List[int]:
    """How many of a class's `per_class` pool texts carry its r-th keyword: proportional to 1 / r**exponent,
    rounded by largest remainder (they sum to `per_class`; every keyword at least once when per_class allows)."""
    weights = [1.0 / (rank ** exponent) for rank in range(1, keywords + 1)]
    shares = [per_class * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(keywords), key=lambda r: (-(shares[r] - int(shares[r])), r))
    for rank in by_remainder[:per_class - sum(counts)]:
        counts[rank] += 1
    while per_class >= keywords and 0 in counts:  # the rarest keyword still occurs: taken from the most frequent
        counts[counts.index(0)] += 1
        counts[counts.index(max(counts))] -= 1
    return counts


def make_longtail_split(rng: random.Random, per_class: int, uniform: bool = False, min_len: int = 2,
                        max_len: int = 6) -> List[Tuple[str, str]]:
    """`(text, label)` pairs, `per_class` per class: keywords Zipf-distributed (`longtail_counts`), or with
    `uniform` the same number of texts for every keyword (`per_class` must then be a multiple of 6)."""
    rows = []
    for label, keywords in LONGTAIL_KEYWORDS.items():
        counts = [per_class // len(keywords)] * len(keywords) if uniform else longtail_counts(per_class, len(keywords))
        for keyword, count in zip(keywords, counts):
            rows += [(make_text(rng, keyword, min_len, max_len), label) for _ in range(count)]
    rng.shuffle(rows)
    return rows


def longtail_vocab_texts() -> List[str]:
    """Every character the long-tail task can produce (build a tiny vocab from these and `vocab_texts()`)."""
    return ["".join(k for keywords in LONGTAIL_KEYWORDS.values() for k in keywords)]
