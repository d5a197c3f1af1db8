"""The Selector on a deterministic fake model: chunking changes nothing, what it holds is bounded by K or
the pool (counted, not timed), exclusions and repeats are never picked, --balance spreads the picks."""
import numpy as np
import pytest

from utils.deploy.format import MEMBER_OUTPUT, OUTPUT_NAME, REPRESENTATION_OUTPUT
from utils.selection.pools import text_key
from utils.selection.run import SelectOptions, Selector
from utils.task.decoding import MULTI_CLASS, Decoder

LABELS = ["a", "b", "c"]
DECODER = Decoder(MULTI_CLASS, LABELS)


def fake_outputs(examples):
    """Logits, 3 members' logits and a vector, each a fixed function of the text."""
    seeds = [int.from_bytes(e["text_a"].encode("utf-8")[-4:].rjust(4, b"\0"), "little") + len(e["text_a"])
             for e in examples]
    rngs = [np.random.default_rng(s) for s in seeds]
    logits = np.array([r.normal(0, 2, 3) for r in rngs], dtype=np.float32)
    members = np.stack([logits + np.array([r.normal(0, 1, 3) for r in rngs]) for _ in range(3)], axis=1)
    vectors = np.array([r.normal(0, 1, 8) for r in rngs], dtype=np.float32)
    return {OUTPUT_NAME: logits, MEMBER_OUTPUT: members.astype(np.float32), REPRESENTATION_OUTPUT: vectors}


def texts(n, repeat_every=0):
    out = [f"文本{i}号" for i in range(n)]
    if repeat_every:
        out = [out[i - 1] if i % repeat_every == 0 and i else t for i, t in enumerate(out)]
    return out


def run(options, lines, chunk, excluded=frozenset()):
    selector = Selector(options, DECODER, excluded)
    for start in range(0, len(lines), chunk):
        examples = [{"text_a": t} for t in lines[start:start + chunk]]
        selector.add(examples, list(range(start + 1, start + 1 + len(examples))), fake_outputs(examples))
    return selector, [(c.line, round(s, 9)) for c, s in selector.picks()]


STRATEGIES = ["entropy", "margin", "disagreement", "diversity", "hybrid"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("balance", [False, True])
def test_streaming_in_chunks_picks_what_one_pass_in_memory_picks(strategy, balance):
    lines = texts(500)
    options = SelectOptions(k=10, strategy=strategy, pool_size=500 if strategy == "diversity" else 60,
                            balance=balance, seed=3)
    whole = run(options, lines, 500)[1]
    assert len(whole) == 10
    for chunk in (1, 7, 64):
        assert run(options, lines, chunk)[1] == whole


@pytest.mark.parametrize("strategy", ["diversity", "hybrid"])
@pytest.mark.parametrize("balance", [False, True])
def test_kmeans_diversity_is_seeded_and_chunking_changes_nothing(strategy, balance):
    lines = texts(300)
    options = SelectOptions(k=8, strategy=strategy, pool_size=300 if strategy == "diversity" else 60,
                            balance=balance, seed=3, diversity="kmeans")
    whole = run(options, lines, 300)[1]
    assert len({line for line, _ in whole}) == 8
    assert run(options, lines, 7)[1] == whole
    assert whole != run(SelectOptions(**{**options.__dict__, "diversity": "kcenter"}), lines, 300)[1]


def test_in_memory_reference_for_entropy():
    lines = texts(300)
    probs = DECODER.probabilities(fake_outputs([{"text_a": t} for t in lines])[OUTPUT_NAME])
    entropy = -(probs * np.log(probs)).sum(axis=1)
    expected = list(np.argsort(-entropy, kind="stable")[:7] + 1)
    assert [line for line, _ in run(SelectOptions(k=7), lines, 50)[1]] == expected


@pytest.mark.parametrize("strategy, bound", [("entropy", 5), ("margin", 5), ("disagreement", 5),
                                             ("hybrid", 40), ("diversity", 40)])
def test_what_is_held_is_bounded_by_k_or_the_pool_not_by_the_input(strategy, bound):
    options = SelectOptions(k=5, strategy=strategy, pool_size=40)
    for n in (200, 3000):
        selector, picks = run(options, texts(n), 256)
        assert selector.scored == n and len(picks) == 5
        assert selector.peak == bound


def test_balance_keeps_k_per_class_at_most_and_spreads_the_picks():
    options = SelectOptions(k=6, strategy="entropy", balance=True)
    selector, picks = run(options, texts(2000), 256)
    assert selector.peak <= 6 * len(LABELS)
    chosen = [c for c, _ in selector.picks()]
    counts = np.bincount([int(c.probs.argmax()) for c in chosen], minlength=3)
    assert list(counts) == [2, 2, 2], counts


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_excluded_texts_and_repeats_are_never_picked(strategy):
    lines = texts(400, repeat_every=2)  # every other text repeats the one before it
    unconstrained = run(SelectOptions(k=20, strategy=strategy, pool_size=400), lines, 50)[1]
    excluded = {text_key({"text_a": lines[line - 1]}) for line, _ in unconstrained[:5]}
    selector, picks = run(SelectOptions(k=20, strategy=strategy, pool_size=400), lines, 50, excluded)
    picked = [lines[line - 1] for line, _ in picks]
    assert len(picked) == len(set(picked)) == 20
    assert not {text_key({"text_a": t}) for t in picked} & excluded
    assert selector.skipped == sum(text_key({"text_a": t}) in excluded for t in lines)  # every copy counted


def test_k_beyond_the_available_texts_picks_them_all_once():
    lines = texts(12, repeat_every=3)
    for strategy in STRATEGIES:
        picks = run(SelectOptions(k=50, strategy=strategy, pool_size=50), lines, 5)[1]
        assert len(picks) == len(set(lines)), strategy
