"""The long-tail keyword task of benchmarks/active_learning.py: the stated distribution, deterministically."""
import collections
import random

from utils.testing.synthetic import (FILLER, KEYWORDS, LONGTAIL_KEYWORDS, longtail_counts, longtail_vocab_texts,
                                     make_longtail_split)


def keyword_of(text, label):
    (keyword,) = [k for k in LONGTAIL_KEYWORDS[label] if k in text]
    return keyword


def test_counts_follow_the_zipf_law_and_sum_to_the_class_size():
    counts = longtail_counts(100)
    assert counts == [55, 19, 10, 7, 5, 4]  # 100 / r**1.5, normalised: a few frequent, many rare
    assert longtail_counts(6) == [1, 1, 1, 1, 1, 1]  # every keyword occurs when the class size allows
    for n in (6, 20, 37, 100, 1000):
        counts = longtail_counts(n)
        assert sum(counts) == n and counts == sorted(counts, reverse=True)


def test_the_pool_is_long_tailed_per_class_and_the_test_set_uniform_over_keywords():
    pool = make_longtail_split(random.Random(100), 100)
    assert pool == make_longtail_split(random.Random(100), 100)  # seeded
    per_keyword = collections.Counter((label, keyword_of(text, label)) for text, label in pool)
    for label, keywords in LONGTAIL_KEYWORDS.items():
        assert [per_keyword[label, k] for k in keywords] == longtail_counts(100)
    test = make_longtail_split(random.Random(300), 48, uniform=True)
    assert set(collections.Counter((label, keyword_of(text, label)) for text, label in test).values()) == {8}


def test_keywords_are_unambiguous_and_in_the_tiny_vocab():
    chars = [c for keywords in LONGTAIL_KEYWORDS.values() for k in keywords for c in k]
    assert len(chars) == len(set(chars))  # no character shared by two keywords
    assert not set(chars) & set(FILLER + "".join(k + w for k, w in KEYWORDS.values()))
    assert set(chars) <= set("".join(longtail_vocab_texts()))
