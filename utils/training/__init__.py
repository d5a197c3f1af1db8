"""Training: train.py's run and its modes, pretrain.py, multirun.py (Paddle).

    run.py           `Run`: one train.py invocation (open: checks and the output directory; execute)
    plan.py          what to build before weights load: the model spec, the step count, the model
    trainer.py       the Trainer: seeded batches, marked checkpoints, exact resumes, R-Drop for label sets
    callbacks.py     progress lines, the best checkpoint of a resumed run
    tuning.py        what is fitted on dev after training: thresholds, temperature
    long_text.py     --long_text: documents as window examples, metrics and predictions per document
    outputs.py       prediction files, reports, explanations, the export step
    distill.py       `DistillationRun(Run)`: self-training and distillation (a mode; run.py never imports it)
    teacher.py       the teacher a distillation run labels texts with
    distributed.py   data parallelism that keeps every process's model identical
    pretraining.py   pretrain.py: task-adaptive masked-LM pretraining
    multirun.py      multirun.py: seeds x splits, mean ± std
    visualdl.py      VisualDL logging that never stops a run
"""
