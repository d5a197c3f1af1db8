"""Which labels are wrong: out-of-fold probabilities from K train.py runs, confident learning (cleanlab) over
them, and the suspects as TSV, HTML and Label Studio review tasks (audit.py). Paddle (the folds train).

    folds.py      the audited examples (file:line kept) and their stratified, seeded K folds
    oof.py        the fold runs (`FoldRun`: train, then predict the held-out fold), resumable and reused;
                  --repeats R: R seeded runs of the K folds, their probabilities averaged
    issues.py     cleanlab: flagged examples, label quality scores, suggested labels (multi-class, label sets)
    report.py     label_issues.tsv/.html, Label Studio tasks and config, oof_probabilities.tsv, audit.json
    pipeline.py   audit.py: check everything, run the folds, find and write the issues
"""
