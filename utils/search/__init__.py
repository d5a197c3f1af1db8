"""search.py: hyperparameter search over train.py's flags with Optuna, each trial judged by multirun's
mean - std over seeds or FewCLUE splits.

Modules: `space.py` (the space file: ranges, choices, label-word sets; the default space), `candidates.py`
(every candidate through train.py's own checks before any trial; label-word sets from the checker's
ranking), `objective.py` (one trial: its runs by multirun's machinery, intermediate values for pruning,
mean - std), `study.py` (storage, one space per study, resume after a kill, the ask/tell loop),
`report.py` (best_command.txt, trials.tsv, plots, search.json beside the chosen runs), `ray_tune.py`
(--ray: the trials as Ray Tune trials, Tune's OptunaSearch on the study, Optuna's pruner as a Tune scheduler),
`run.py` (the whole command).
"""
