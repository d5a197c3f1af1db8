"""Every script's flags as dataclasses, parsed once by one parser; each flag checked in its
dataclass's `__post_init__` (a bad value: one `error: --flag: ...` paragraph, exit 2, before any model loads).

    parser.py       the one parser (paddlenlp's PdArgumentParser, loaded without Paddle) and field metadata
    checks.py       the small range checks the dataclasses share
    runtime.py      infer.py / serve.py / client.py / explain.py: device, threads, fp16/int8, lengths, HTTP
    export.py       what an export contains (train.py --do_export, export.py, ensemble.py) and those scripts
    train.py        train.py: model, data and the cross-group checks (`TrainFlags`)
    trainer.py      train.py and pretrain.py: paddlenlp's Trainer flags with this tool's defaults
    pretrain.py, multirun.py, explain.py, label_words.py: those commands' own flags
    audit.py        audit.py's own flags beside train.py's groups, and the flags each fold's train.py gets
"""
