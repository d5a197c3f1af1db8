"""What to label next (select.py): rank unlabelled texts by an export's uncertainty, its ensemble's
disagreement or the diversity of its vectors, and pick K, streaming any number of texts.

    scores.py      uncertainty and disagreement scores from probabilities (entropy, margin, KL, votes)
    pools.py       the bounded pools kept while texts stream (top-K heap, seeded reservoir), text
                   identity for repeats and exclusions, the --exclude_file reader
    diversity.py   k-center greedy or k-means on L2-normalised vectors, the class balance
    strategies.py  the strategies as a registry: what each pools and how it picks (one class per name)
    run.py         select.py's run: outputs fetched (locally or on Ray), pools, picks, the TSV and the
                   Label Studio tasks with pre-labels
"""
