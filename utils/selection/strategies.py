"""select.py's strategies as a registry: one small class per `--strategy`, registered by name.

A strategy says which outputs it reads beyond the logits (`outputs`), its uncertainty scorer, the pool
a text goes to while streaming (`pool_key`, `new_pool`, `offer`) and how the picks are drawn from the
pools (`picks`). `Selector` (run.py) drives any of them the same way. Adding a strategy is one class
with `@register`, plus its name in utils/choices.py `Strategy` (the CLI's list; a test keeps the two equal).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import numpy as np

from ..choices import Diversity, Strategy
from ..deploy.format import MEMBER_OUTPUT, REPRESENTATION_OUTPUT
from ..errors import UserError
from .diversity import k_center, k_means, ranked_pick
from .pools import Reservoir, TopK
from .scores import Scorer, scorer

STRATEGIES: Dict[str, Type["SelectionStrategy"]] = {}


def register(cls: Type["SelectionStrategy"]) -> Type["SelectionStrategy"]:
    STRATEGIES[cls.name] = cls
    return cls


def registered(name: str) -> Type["SelectionStrategy"]:
    """The strategy class registered as `name`."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}", "--strategy")
    return STRATEGIES[name]


def strategy_for(options, decoder) -> "SelectionStrategy":
    """The registered strategy `options.strategy`, set up for this decoder."""
    return registered(options.strategy)(options, decoder)


class SelectionStrategy:
    """Ranked picks: the K texts of highest priority (with --balance: the K best per predicted class)."""

    name = ""
    outputs: Tuple[str, ...] = ()  # the outputs read beyond the logits
    keeps_vectors = False  # a bounded uniform sample (`Reservoir`) instead of the best texts

    def __init__(self, options, decoder):
        self.options = options
        self.scorer: Scorer = scorer(self.name, decoder.multi_label, decoder.thresholds, options.disagreement)

    @classmethod
    def missing(cls, output: str, export_dir: str) -> UserError:
        """The error when the export lacks `output`."""
        return UserError(f"--strategy {cls.name} needs the output {output}, which this export has not got",
                         export_dir)

    def pool_key(self, label: int) -> Optional[int]:
        return label if self.options.balance else None

    def new_pool(self):
        return TopK(self.options.k)

    def offer(self, pool, priority: float, line: int, key: int, item) -> None:
        pool.offer(priority, line, key, item)

    def picks(self, pools: dict) -> List[Tuple[object, float]]:
        """`(candidate, score shown)` in rank order."""
        items = ranked_items(pools)
        classes = [int(c.probs.argmax()) for c in items] if self.options.balance else None
        return [(items[i], items[i].score) for i in ranked_pick(len(items), self.options.k, classes)]


def ranked_items(pools: dict) -> list:
    """Every pool's candidates, highest priority first (ties: the earlier line)."""
    ranked = sorted(((p, c) for pool in pools.values() for p, c in pool.ranked()), key=lambda pc: (-pc[0], pc[1].line))
    return [c for _, c in ranked]


@register
class Entropy(SelectionStrategy):
    name = Strategy.ENTROPY.value


@register
class Margin(SelectionStrategy):
    name = Strategy.MARGIN.value


@register
class Disagreement(SelectionStrategy):
    name = Strategy.DISAGREEMENT.value
    outputs = (MEMBER_OUTPUT,)

    @classmethod
    def missing(cls, output: str, export_dir: str) -> UserError:
        return UserError("--strategy disagreement needs an ensemble export (ensemble.py), whose members' logits "
                         f"({MEMBER_OUTPUT}) it compares; this is a single model's export: use entropy, margin, "
                         "diversity or hybrid", export_dir)


class VectorStrategy(SelectionStrategy):
    """Picks spread over the texts' vectors (--diversity: k-center greedy or k-means) among one bounded pool."""

    outputs = (REPRESENTATION_OUTPUT,)

    @classmethod
    def missing(cls, output: str, export_dir: str) -> UserError:
        return UserError(f"--strategy {cls.name} needs the texts' vectors ({REPRESENTATION_OUTPUT}), which exports "
                         "made before select.py existed lack: export the checkpoint again (export.py, or "
                         "ensemble.py); entropy, margin and disagreement work on this export", export_dir)

    def pool_key(self, label: int) -> Optional[int]:
        return None

    def spread(self, items: list, first: int) -> List[Tuple[object, float]]:
        """`(candidate, distance)`: k-center's distance to the nearest earlier pick, or k-means' to the centroid."""
        if not items:
            return []
        classes = [int(c.probs.argmax()) for c in items] if self.options.balance else None
        vectors = np.stack([c.vector for c in items])
        if self.options.diversity == Diversity.KMEANS.value:
            picked = k_means(vectors, self.options.k, self.options.seed, classes)
        else:
            picked = k_center(vectors, self.options.k, first, classes)
        return [(items[i], distance) for i, distance in picked]


@register
class DiversityStrategy(VectorStrategy):
    """A seeded uniform sample of --pool_size texts; k-center from a seeded random first center (or k-means)."""

    name = Strategy.DIVERSITY.value
    keeps_vectors = True

    def new_pool(self):
        return Reservoir(self.options.pool_size, self.options.seed)

    def offer(self, pool, priority: float, line: int, key: int, item) -> None:
        pool.offer(key, item)

    def picks(self, pools: dict) -> List[Tuple[object, float]]:
        items = sorted(pools[None].items(), key=lambda c: c.line) if pools else []  # not the reservoir's slot order
        first = int(np.random.default_rng(self.options.seed).integers(len(items))) if items else 0
        return self.spread(items, first)


@register
class Hybrid(VectorStrategy):
    """The --pool_size most uncertain (entropy) texts; k-center from the most uncertain one (or k-means)."""

    name = Strategy.HYBRID.value

    def new_pool(self):
        return TopK(self.options.pool_size)

    def picks(self, pools: dict) -> List[Tuple[object, float]]:
        return self.spread(ranked_items(pools), 0)

