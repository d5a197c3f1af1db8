"""select.py's flags: which unlabelled texts to label next. Paddle-free. The export, the input file,
the batches, chunks and `--ray` are infer.py's flags (`InferArguments`'), declared once there."""
from __future__ import annotations

import os
from dataclasses import field
from typing import Optional

from ..choices import Disagreement, Diversity, Strategy
from ..errors import UserError
from .checks import positive
from .runtime import InferArguments, RuntimeArguments
from dataclasses import dataclass

# How many candidates diversity and hybrid keep with their vectors (--pool_size's default).
DEFAULT_POOL = 10000


def infer_flag(name: str, **metadata):
    """infer.py's declaration of flag `name` (default and help), `metadata` replacing parts of it."""
    declared = InferArguments.__dataclass_fields__[name]
    return field(default=declared.default, metadata={**declared.metadata, **metadata})


@dataclass
class SelectArguments(RuntimeArguments):
    """select.py: rank unlabelled texts and pick the K to label next."""

    model_path_prefix: Optional[str] = infer_flag("model_path_prefix")
    input_file: Optional[str] = infer_flag("input_file", required=True, help=(
        "Unlabelled texts, one per line (text_a<TAB>text_b for pair models; a trailing gold column is accepted "
        "and ignored)."))
    output_file: Optional[str] = infer_flag("output_file", required=True, help=(
        "The picks as TSV (rank, line, text, score, predicted label(s)); beside it STEM.label-studio.json (tasks "
        "with pre-labels) and STEM.label-studio.xml (the labelling config)."))
    k: int = field(default=100, metadata={"help": "How many texts to pick."})
    strategy: Strategy = field(default=Strategy.ENTROPY, metadata={
        "help": "entropy / margin: the most uncertain texts; disagreement: where an ensemble's members disagree "
                "most (an ensemble export); diversity: k-center greedy on the export's mask_embedding; hybrid: "
                "the --pool_size most uncertain (entropy), then k-center among them (docs/how-to/active-learning.md)."})
    disagreement: Disagreement = field(default=Disagreement.KL, metadata={
        "help": "With --strategy disagreement: kl (mean KL divergence of each member from the consensus) or vote "
                "(entropy of the members' votes)."})
    diversity: Diversity = field(default=Diversity.KCENTER, metadata={
        "help": "With --strategy diversity or hybrid, how the picks are spread over the vectors: kcenter (k-center "
                "greedy: each pick the farthest from the earlier ones) or kmeans (K k-means clusters, seeded; per "
                "cluster the text nearest its centroid, largest cluster first)."})
    pool_size: int = field(default=DEFAULT_POOL, metadata={
        "help": "diversity / hybrid: candidates kept with their vectors (memory is bounded by it): hybrid's most "
                "uncertain texts, diversity's seeded uniform sample of the input. At least --k."})
    balance: bool = field(default=False, metadata={
        "help": "Spread the picks evenly across the predicted classes (a class with too few candidates leaves its "
                "share to the others)."})
    exclude_file: Optional[str] = field(default=None, metadata={
        "help": "Texts already labelled (a split such as train.txt, or data.txt-like lines): never picked."})
    seed: int = field(default=0, metadata={
        "help": "diversity / hybrid: the seed of the sample, the first center and k-means."})
    batch_size: int = infer_flag("batch_size")
    chunk_size: Optional[int] = infer_flag("chunk_size")
    file_order: bool = infer_flag("file_order")
    ray: Optional[str] = infer_flag("ray", help=(
        "Score on a Ray cluster as infer.py --ray does (one worker per node); the same picks. `auto`: the cluster "
        "this machine is part of; else the head's HOST:PORT."))

    def __post_init__(self):
        positive(self, "k", "pool_size", "batch_size", "chunk_size")
        if self.seed < 0:
            raise UserError(f"must be 0 or more, got {self.seed}", "--seed")
        self.strategy = Strategy.from_flag(self.strategy, "--strategy")
        self.disagreement = Disagreement.from_flag(self.disagreement, "--disagreement")
        self.diversity = Diversity.from_flag(self.diversity, "--diversity")
        super().__post_init__()
        if self.strategy in (Strategy.DIVERSITY, Strategy.HYBRID) and self.pool_size < self.k:
            raise UserError(f"must be at least --k ({self.k}) for --strategy {self.strategy}, got {self.pool_size}",
                            "--pool_size")
        if not os.path.basename(self.output_file or "").strip():
            raise UserError("must name a file", "--output_file")
