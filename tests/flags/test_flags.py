"""Every script's flags are dataclasses parsed once by utils/flags/parser.py: each is listed by --help, and
each bad value is one paragraph naming the flag, exit 2, before any model loads, nothing written; the
defaults train.py adds are added only for the flags not given; infer.py, serve.py and client.py parse
without Paddle."""
import dataclasses
import enum
import json
import os
import subprocess
import sys
import typing

import pytest

import export as export_cli
import train
from utils.choices import Method, Quantize, SoftEncoder
from utils.flags.train import parse_args
from utils.flags.trainer import default_device
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT
from helpers import import_script

# (flags, the flag named in the message, text expected in the message)
BAD_FLAGS = [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size", "positive"),
    (["--per_device_train_batch_size", "-4"], "--per_device_train_batch_size", "positive"),
    (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size", "positive"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], "--num_train_epochs", "positive"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps", "positive"),
    (["--seed", "-1"], "--seed", "zero or more"),
    (["--learning_rate", "-0.00001"], "--learning_rate", "zero or more"),
    (["--learning_rate=-1e-5"], "--learning_rate", "zero or more"),
    (["--ppt_learning_rate", "-1"], "--ppt_learning_rate", "zero or more"),
    (["--learning_rate", "nan"], "--learning_rate", "zero or more"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio", "in [0, 1)"),
    (["--weight_decay", "-0.1"], "--weight_decay", "zero or more"),
    (["--max_grad_norm", "-1"], "--max_grad_norm", "zero or more"),
    (["--logging_steps", "0"], "--logging_steps", "positive"),
    (["--eval_steps", "0"], "--eval_steps", "positive"),
    (["--save_steps", "-5"], "--save_steps", "positive"),
    (["--save_total_limit", "0"], "--save_total_limit", "positive"),
    (["--early_stopping_patience", "-1"], "--early_stopping_patience", "zero"),
    (["--num_virtual_tokens", "0"], "--num_virtual_tokens", "positive"),
    (["--encoder_hidden_size", "-3"], "--encoder_hidden_size", "positive"),
    (["--device", "xpu"], "--device", "cpu, gpu or gpu:N"),
    (["--device", "cuda"], "--device", "cpu, gpu or gpu:N"),
    (["--output_dir", ""], "--output_dir", "empty"),
    (["--quantize", "int4"], "--quantize", "none or int8"),
    (["--export_type", "tensorrt"], "--export_type", "paddle or onnx"),
    (["--method", "lora"], "--method", "ptuning or finetune"),
    (["--verbalizer", "auto"], "--verbalizer", "soft or manual"),
    (["--manual_loss", "kl"], "--manual_loss", "ce or mlm"),
    (["--soft_encoder", "gru"], "--soft_encoder", "lstm, mlp or none"),
    (["--metric_for_best_model", "f1"], "--metric_for_best_model", "accuracy, macro_f1, micro_f1, loss"),
    (["--max_seq_length", "3"], "--max_seq_length", "at least 4"),
    (["--max_seq_length", "100000"], "--max_seq_length", "positions"),
    (["--max_seq_length", "6"], "--max_seq_length", "the prompt alone takes"),
    (["--prompt", "{'soft': None, 'length': 4}{'text': 'text_a'}{'mask'}", "--soft_encoder", "mlp"], "--prompt",
     "full template"),
    (["--prompt", "{'soft': None}{'text': 'text_a'}{'mask'}", "--num_virtual_tokens", "3"], "--prompt",
     "full template"),
    (["--per_device_train_batch_size", "many"], "--per_device_train_batch_size", "invalid int value"),
    # task types (utils.flags.train.check_task_args): flags that make no sense for the task are refused with the reason
    (["--alpha_rdrop", "1"], "--alpha_rdrop", "add --use_rdrop"),
    (["--alpha_rgl", "0.2"], "--alpha_rgl", "add --use_rgl"),
    (["--task_type", "multi-labels"], "--task_type", "multi-class, multi-label or hierarchical"),
    (["--threshold", "0.3"], "--threshold", "is for --task_type multi-label or hierarchical"),
    (["--threshold_search", "global"], "--threshold_search", "is for --task_type multi-label or hierarchical"),
    (["--hierarchical_decoding", "flat"], "--hierarchical_decoding", "is for --task_type multi-label or hierarchical"),
    (["--metric_for_best_model", "micro_f1"], "--metric_for_best_model", "equals accuracy"),
    (["--task_type", "multi-label", "--threshold", "1.5"], "--threshold", "must be in (0, 1)"),
    (["--task_type", "multi-label", "--threshold_search", "best"], "--threshold_search", "none, global or per-label"),
    (["--task_type", "multi-label", "--hierarchical_decoding", "flat"], "--hierarchical_decoding",
     "is for --task_type hierarchical"),
    (["--task_type", "multi-label", "--use_rgl"], "--use_rgl", "with label sets (--task_type multi-label)"),
    (["--task_type", "hierarchical", "--verbalizer", "manual"], "--verbalizer", "use --verbalizer soft"),
]


@pytest.mark.parametrize("flags, flag, message", BAD_FLAGS, ids=[" ".join(f[0])[:60] for f in BAD_FLAGS])
def test_a_bad_flag_is_one_paragraph_before_any_model_loads(flags, flag, message, tiny_model_dir, keyword_data,
                                                          tmp_path, capsys, no_model_loads):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(out),
            "--prompt", PROMPT, "--do_train", "--do_eval", "--do_export", "--max_steps", "2", "--eval_steps", "1",
            "--max_seq_length", "40"] + flags
    code = run_cli(train.main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") <= 2 and "Traceback" not in err, err
    assert flag in err and message in err, err
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".ptuning.lock"]


def test_thresholds_belong_to_a_model_being_trained(tiny_model_dir, keyword_data, tmp_path, capsys, no_model_loads):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path / "o"),
            "--do_eval", "--resume_from_checkpoint", str(tmp_path), "--task_type", "multi-label"]
    for flags in (["--threshold_search", "per-label"], ["--threshold", "0.4"]):
        assert run_cli(train.main, argv + flags) == 2
        err = capsys.readouterr().err
        assert f"error: {flags[0]}: is part of a model being trained" in err and "add --do_train" in err


def test_task_type_spellings_and_upstream_multi_label_metric(tiny_model_dir, keyword_data, tmp_path):
    from utils.choices import TaskType
    from utils.flags.train import check_task_args

    base = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path),
            "--do_train", "--do_eval"]
    for spelling, expected in (("multi_label", TaskType.MULTI_LABEL), ("Multi-Class", TaskType.MULTI_CLASS),
                               ("HIERARCHICAL", TaskType.HIERARCHICAL)):
        assert parse_args(base + ["--task_type", spelling])[0].task_type is expected
        assert str(expected) == expected.value  # what the log line `task_type: multi-class` prints
    model_args, _, training_args = parse_args(base + ["--task_type", "multi-label", "--metric_for_best_model",
                                                      "macro_f1_score"])
    assert training_args.metric_for_best_model == "macro_f1"  # upstream's multi-label command line
    model_args, _, training_args = parse_args(base + ["--task_type", "multi-label"])
    check_task_args(model_args, training_args, model_args.task_type)
    assert training_args.metric_for_best_model == "macro_f1"  # exact-match accuracy is no default for label sets
    model_args, _, training_args = parse_args(base)
    check_task_args(model_args, training_args, TaskType.MULTI_CLASS)
    assert training_args.metric_for_best_model == "accuracy"


def test_upstream_spellings_are_accepted(tiny_model_dir, keyword_data, tmp_path):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path),
            "--do_train", "--soft_encoder", "None", "--method", "PTuning", "--quantize", "INT8"]
    model_args, data_args, _ = parse_args(argv)
    assert data_args.soft_encoder is SoftEncoder.NONE and data_args.prompt_flags_given == ["soft_encoder"]
    assert model_args.method is Method.PTUNING and model_args.quantize is Quantize.INT8
    _, data_args, _ = parse_args(argv[:-6])
    assert data_args.soft_encoder is SoftEncoder.LSTM and data_args.encoder_hidden_size == 200
    assert data_args.prompt_flags_given == []


# The defaults TrainingArguments.__post_init__ resolves from the flags given (utils/flags/trainer.py):
# (case, flags, the TrainingArguments fields parse_args gives)
PLAIN = dict(output_dir="./checkpoints/", report_to=[], device="cpu", save_total_limit=1,  # the latest checkpoint
             evaluation_strategy="no", save_strategy="steps", save_steps=500,  # (and the best, when evaluating)
             metric_for_best_model=None, load_best_model_at_end=False)
BEST_EVERY_EPOCH = dict(PLAIN, evaluation_strategy="epoch", save_strategy="epoch", metric_for_best_model="accuracy",
                        load_best_model_at_end=True)
DEFAULT_CASES = [
    ("training alone: none of the evaluation defaults", ["--do_train"], PLAIN),
    ("--do_eval False is no --do_eval", ["--do_train", "--do_eval", "False"], PLAIN),
    ("evaluating without --eval_steps: every epoch, keep the best", ["--do_train", "--do_eval"], BEST_EVERY_EPOCH),
    ("--eval_steps: evaluate and save every that many steps", ["--do_train", "--do_eval", "--eval_steps", "10"],
     dict(BEST_EVERY_EPOCH, evaluation_strategy="steps", save_strategy="steps", eval_steps=10, save_steps=10)),
    ("--flag=value spellings", ["--do_train=true", "--do_eval=True", "--eval_steps=7"],
     dict(BEST_EVERY_EPOCH, evaluation_strategy="steps", save_strategy="steps", eval_steps=7, save_steps=7)),
    ("an evaluation strategy is evaluating too", ["--do_train", "--evaluation_strategy", "steps", "--eval_steps", "5"],
     dict(BEST_EVERY_EPOCH, evaluation_strategy="steps", save_strategy="steps", eval_steps=5, save_steps=5)),
    ("--evaluation_strategy no: nothing to keep the best by", ["--do_train", "--do_eval", "--evaluation_strategy", "no"],
     dict(evaluation_strategy="no", metric_for_best_model=None, load_best_model_at_end=False, save_strategy="steps",
          do_eval=True)),  # (paddlenlp alone turns "no" into "steps" when --do_eval is on)
    ("evaluating without training: no checkpoints to choose from", ["--do_eval"],
     dict(metric_for_best_model=None, load_best_model_at_end=False, save_total_limit=1, report_to=[])),
    ("given flags win", ["--do_train", "--do_eval", "--eval_steps", "10", "--output_dir", "out", "--report_to",
                         "visualdl", "--device", "cpu", "--save_total_limit", "5", "--evaluation_strategy", "steps",
                         "--save_strategy", "steps", "--save_steps", "20", "--metric_for_best_model", "macro_f1",
                         "--load_best_model_at_end", "False"],
     dict(output_dir="out", report_to=["visualdl"], device="cpu", save_total_limit=5, evaluation_strategy="steps",
          save_strategy="steps", eval_steps=10, save_steps=20, metric_for_best_model="macro_f1",
          load_best_model_at_end=False)),
    ("upstream's bare --load_best_model_at_end means true (its multi-label command)",
     ["--do_train", "--do_eval", "--metric_for_best_model", "macro_f1_score", "--load_best_model_at_end",
      "--evaluation_strategy", "epoch", "--save_strategy", "epoch"],
     dict(BEST_EVERY_EPOCH, metric_for_best_model="macro_f1")),
    ("an epoch strategy given: saving follows it", ["--do_train", "--do_eval", "--eval_steps", "10",
                                                   "--evaluation_strategy", "epoch"], BEST_EVERY_EPOCH),
]


@pytest.mark.parametrize("case, flags, fields", DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_defaults_apply_only_to_flags_not_given(case, flags, fields, tmp_path, monkeypatch):
    import paddle

    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)  # the default device is cpu everywhere
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even into the default ./checkpoints/
    _, _, training_args = parse_args(flags)
    for name, value in fields.items():
        actual = getattr(training_args, name)
        assert getattr(actual, "value", actual) == value, (name, actual)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cuda, gpus, device", [(False, 0, "cpu"), (True, 0, "cpu"), (True, 2, "gpu")])
def test_default_device_is_gpu_only_where_one_can_be_used(cuda, gpus, device, monkeypatch):
    import paddle

    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: cuda)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: gpus)
    assert default_device() == device


def test_do_export_without_onnxruntime_is_refused_before_training(monkeypatch, tiny_model_dir, keyword_data,
                                                                 tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code = run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir",
                                str(tmp_path / "o"), "--do_train", "--do_export", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--do_export" in err and "pip install onnxruntime" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, message", [
    (["--quantize", "int4"], "--quantize"), (["--export_type", "x"], "--export_type"), ([], "required"),
    (["--tolerance", "-1"], "--tolerance"), (["--opset", "9"], "--opset"), (["--output_dir", ""], "--output_dir"),
])
def test_export_flags_are_checked(flags, message, trained, tmp_path, capsys):
    argv = (["--resume_from_checkpoint", trained[1]] if message != "required" else []) + [
        "--output_dir", str(tmp_path / "e")] + flags
    code = run_cli(export_cli.main, argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "e").exists()


# --- every script, walked from its dataclasses -----------------------------------------------------------------

def script_flags():
    """`{script: (its dataclasses, argv that parses, and whose run stops at a missing file)}`. Every path is
    relative and missing: run in an empty directory, a bad value that slipped through would stop the run
    at that file with an error naming it, not the flag."""
    from utils.flags.audit import AuditArguments
    from utils.flags.explain import ExplainArguments
    from utils.flags.export import EnsembleArguments, ExportCommandArguments
    from utils.flags.label_words import LabelWordsArguments
    from utils.flags.multirun import MultirunArguments
    from utils.flags.pretrain import PretrainArguments
    from utils.flags.runtime import ClientArguments, InferArguments, ServeArguments
    from utils.flags.search import SearchArguments
    from utils.flags.select import SelectArguments
    from utils.flags.train import DataArguments, ModelArguments
    from utils.flags.trainer import PretrainingArguments, TrainingArguments
    from utils.testing.tiny_ernie import TinyErnieArguments

    return {
        "train": ((ModelArguments, DataArguments, TrainingArguments),
                  ["--data_dir", "nowhere", "--output_dir", "out", "--do_train"]),
        "export": ((ExportCommandArguments,), ["--resume_from_checkpoint", "nowhere", "--output_dir", "out"]),
        "infer": ((InferArguments,), ["--model_path_prefix", "nowhere", "--input_file", "none.txt"]),
        "serve": ((ServeArguments,), ["--model_path_prefix", "nowhere"]),
        "client": ((ClientArguments,), ["--input_file", "none.txt"]),
        "explain": ((ExplainArguments,), ["--resume_from_checkpoint", "nowhere", "--text", "苹果"]),
        "ensemble": ((EnsembleArguments,), ["--members", "a", "b", "--output_dir", "out"]),
        "pretrain": ((PretrainArguments, PretrainingArguments),
                     ["--input_file", "none.txt", "--output_dir", "out"]),
        "multirun": ((MultirunArguments,), ["--output_dir", "out", "--splits_dir", "nowhere", "--", "--do_eval"]),
        "search": ((SearchArguments,), ["--output_dir", "out", "--splits_dir", "nowhere", "--", "--do_train"]),
        "audit": ((AuditArguments, ModelArguments, DataArguments, TrainingArguments),
                  ["--data_dir", "nowhere", "--output_dir", "out"]),
        "select": ((SelectArguments,), ["--model_path_prefix", "nowhere", "--input_file", "none.txt",
                                        "--output_file", "picks.tsv"]),
        "utils.label_words": ((LabelWordsArguments,), ["--data_dir", "nowhere", "--model_name_or_path", "m",
                                                       "--no_ranking"]),
        "utils.tiny_ernie": ((TinyErnieArguments,), ["--output_dir", "out", "--vocab_file", "none.txt"]),
    }


SCRIPTS = ("train", "export", "infer", "serve", "client", "explain", "ensemble", "pretrain", "multirun", "search", "audit",
           "select", "utils.label_words", "utils.tiny_ernie")
# The checks __post_init__ makes beyond the type: {script: [(flag, a bad value, words of the error)]}.
CHECKED = {
    "train": [("threshold", "1.5", "must be in (0, 1)"), ("reject_threshold", "0", "must be a number in (0, 1]"),
              ("encoder_hidden_size", "0", "must be positive"), ("num_virtual_tokens", "0", "must be positive"),
              ("early_stopping_patience", "-1", "must be zero (never stop) or more"),
              ("min_confidence", "1", "must be in [0, 1)"), ("temperature", "0", "must be positive"),
              ("max_unlabeled", "0", "must be positive"), ("rounds", "0", "must be at least 1"),
              ("window_stride", "0", "must be at least 1"), ("max_windows", "0", "must be at least 1"),
              ("max_seq_length", "3", "must be at least 4"), ("device", "tpu", "must be cpu, gpu or gpu:N"),
              ("output_dir", " ", "must name a directory"), ("metric_for_best_model", "f1", "must be one of")],
    "export": [("opset", "12", "must be at least 13"), ("tolerance", "0", "must be positive"),
               ("output_dir", " ", "must name a directory")],
    "infer": [("device_id", "-1", "must be a GPU number"), ("num_threads", "0", "must be positive"),
              ("max_seq_length", "0", "must be positive"), ("batch_size", "0", "must be positive"),
              ("top_k", "0", "must be positive"), ("reject_threshold", "1.5", "must be a number in (0, 1]"),
              ("chunk_size", "0", "must be positive"), ("device", "tpu", "must be cpu, gpu or gpu:N"),
              ("other_label", "a,b", "without tabs, newlines or commas"), ("prompt", "这是", "drop --prompt")],
    "serve": [("device_id", "-1", "must be a GPU number"), ("num_threads", "0", "must be positive"),
              ("max_seq_length", "0", "must be positive"), ("port", "70000", "must be in 0..65535"),
              ("instances", "0", "must be a positive integer"), ("max_batch_size", "0", "must be a positive integer"),
              ("max_wait_ms", "-1", "must be zero or more"), ("max_queue", "0", "must be a positive integer"),
              ("max_texts_per_request", "0", "must be a positive integer"),
              ("max_chars_per_text", "0", "must be a positive integer"), ("device", "tpu", "must be cpu, gpu or gpu:N"),
              ("name", "a/b", "without '/'"), ("replicas", "2", "only with --ray"),
              ("watch_interval_s", "-1", "must be zero (off) or more seconds"), ("model", "news", "must be NAME=EXPORT_DIR")],
    "client": [("batch_size", "0", "must be positive"), ("timeout", "0", "must be positive")],
    "explain": [("device_id", "-1", "must be a GPU number"), ("max_cases", "0", "must be positive"),
                ("steps", "0", "must be positive"), ("device", "tpu", "must be cpu, gpu or gpu:N")],
    "ensemble": [("opset", "12", "must be at least 13"), ("tolerance", "0", "must be positive"),
                 ("threshold", "1", "must be in (0, 1)"), ("batch_size", "0", "must be positive")],
    "pretrain": [("max_seq_length", "3", "must be at least 4"), ("masked_lm_prob", "1", "must be in (0, 1)"),
                 ("device", "tpu", "must be cpu, gpu or gpu:N")],
    "multirun": [],
    "search": [("n_trials", "0", "must be 1 or more"), ("parallel", "-1", "must be 0 or more"),
               ("metric", "eval_f1", "no such dev metric")],
    "select": [("k", "0", "must be positive"), ("pool_size", "0", "must be positive"),
               ("batch_size", "0", "must be positive"), ("chunk_size", "0", "must be positive"),
               ("seed", "-1", "must be 0 or more"), ("device", "tpu", "must be cpu, gpu or gpu:N"),
               ("num_threads", "0", "must be positive"), ("max_seq_length", "0", "must be positive"),
               ("device_id", "-1", "must be a GPU number")],
    "utils.label_words": [("top_tokens", "-1", "must be 0 or more"), ("max_examples", "0", "must be positive")],
    "utils.tiny_ernie": [("hidden_size", "0", "must be positive"), ("num_hidden_layers", "0", "must be positive"),
                         ("num_attention_heads", "0", "must be positive"),
                         ("intermediate_size", "0", "must be positive")],
}
# audit.py reads train.py's groups as train.py does, and adds its own.
CHECKED["audit"] = CHECKED["train"] + [
    ("folds", "1", "must be at least 2"), ("repeats", "0", "must be at least 1"),
    ("audit_rounds", "0", "must be at least 1"),
    ("selection_fraction", "1.5", "must be in (0, 1)"),
    ("max_issues", "0", "must be positive")]
# This tool's numeric flags that take any number, and why (the walk below fails on a new one not listed).
UNCHECKED = {
    ("train", "early_stopping_threshold"): "an improvement: any number",
    ("audit", "early_stopping_threshold"): "an improvement: any number",
    ("serve", "max_ongoing_requests"): "Ray Serve's: checked with --ray (tests/serving/test_ray_serve.py)",
    ("client", "max_seq_len"): "the service checks it and answers 400 naming it",
    ("client", "top_k"): "the service checks it and answers 400 naming it",
    ("client", "prob_limit"): "the service checks it and answers 400 naming it",
    ("multirun", "seeds"): "any seed (repeats refused)",
    ("multirun", "split_ids"): "each names a file of --splits_dir, which says whether it exists",
    ("search", "seeds"): "any seed (repeats refused)",
    ("search", "split_ids"): "each names a file of --splits_dir, which says whether it exists",
    ("search", "sampler_seed"): "any seed",
    ("utils.tiny_ernie", "seed"): "any seed",
}


def flag_fields(dataclass_types, own_only=False):
    """`(field, its type without Optional/List)` of every flag of the dataclasses (`own_only`: declared by
    this tool, not inherited from paddlenlp)."""
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        own = set()
        for cls in dtype.__mro__:
            if cls.__module__.startswith("utils."):
                own |= set(cls.__dict__.get("__annotations__", {}))
        for f in dataclasses.fields(dtype):
            if not f.init or f.metadata.get("remainder") or (own_only and f.name not in own):
                continue
            kind = hints[f.name]
            while typing.get_origin(kind) in (typing.Union, list):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            yield f, kind


def type_errors(script):
    """A value of the wrong type for every flag that has one: a word for a number, an unknown choice, a
    truth value that is none."""
    from utils.choices import Choice

    for f, kind in flag_fields(script_flags()[script][0]):
        if isinstance(kind, type) and issubclass(kind, Choice):
            yield f.name, "no-such-value", "must be one of"
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):  # paddlenlp's (IntervalStrategy, ...)
            yield f.name, "no-such-value", "invalid choice"
        elif kind is bool:
            yield f.name, "maybe", "Truthy value expected"
        elif kind in (int, float):
            yield f.name, "x1", f"invalid {kind.__name__} value"


def bad_values():
    from utils.flags.trainer import NUMERIC_CHECKS

    for script in SCRIPTS:
        yield from ((script, *case) for case in type_errors(script))
        yield from ((script, *case) for case in CHECKED[script])
        if script in ("train", "pretrain", "audit"):  # the Trainer's numbers, checked before paddlenlp's __post_init__
            names = {f.name for f, _ in flag_fields(script_flags()[script][0])}
            bad = {"positive": "0", "zero or more": "-1", "in [0, 1)": "1.5"}
            yield from ((script, name, bad[what], f"must be {what}") for name, _, what in NUMERIC_CHECKS
                        if name in names)


BAD_VALUES = list(bad_values())


@pytest.mark.parametrize("script, flag, value, message", BAD_VALUES,
                         ids=[f"{c[0]} --{c[1]} {c[2]}" for c in BAD_VALUES])
def test_every_bad_flag_value_is_one_paragraph_naming_the_flag(script, flag, value, message, tmp_path, monkeypatch,
                                                             capsys, no_model_loads):
    import paddle

    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    monkeypatch.chdir(tmp_path)
    base = script_flags()[script][1]
    if f"--{flag}" in base:  # the base's value, replaced
        base = base[:base.index(f"--{flag}")] + base[base.index(f"--{flag}") + 2:]
    argv = [f"--{flag}", value] + base  # (before multirun's `--`)
    code = run_cli(import_script(script).main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: --{flag}: ") and message in err, err
    assert err.count("\n") == 2 and "Traceback" not in err, err  # the paragraph and the --debug hint
    assert os.listdir(tmp_path) == []


def test_every_numeric_flag_of_this_tool_has_its_range_checked_or_a_reason_not_to():
    from utils.flags.trainer import NUMERIC_CHECKS

    checked = {(script, flag) for script in SCRIPTS for flag, _, _ in CHECKED[script]}
    checked |= {(script, name) for script in ("train", "pretrain", "audit") for name, _, _ in NUMERIC_CHECKS}
    numeric = {(script, f.name) for script in SCRIPTS
               for f, kind in flag_fields(script_flags()[script][0], own_only=True) if kind in (int, float)}
    assert sorted(numeric - checked - set(UNCHECKED)) == []
    assert sorted(set(UNCHECKED) - numeric) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag_and_exits_0(script, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(import_script(script).main, ["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for f, _ in flag_fields(script_flags()[script][0]):
        listed = f"--{f.name} " in out or f"--{f.name}\n" in out or f"--{f.name}," in out
        assert listed != bool(f.metadata.get("hidden")), f"--{f.name}"


def test_upstream_spellings_repeats_and_hidden_flags():
    """What infer.py, client.py and explain.py took as argparse flags, as field metadata: aliases,
    repeatable flags, a hidden flag refused with the reason, required flags; choices in any case."""
    from utils.choices import Quantize, ThresholdSearch
    from utils.errors import UserError
    from utils.flags.export import EnsembleArguments
    from utils.flags.parser import parse_flags
    from utils.flags.runtime import ClientArguments, InferArguments

    (infer,) = parse_flags(InferArguments, ["--model_path_prefix", "m", "--data_dir", "d", "--cpu_threads", "3",
                                            "--max_length", "64", "--model_name", "ernie-3.0-base-zh", "--device",
                                            "gpu:2", "--use_int8"], "infer.py")
    assert (infer.num_threads, infer.max_seq_length, infer.model_name_or_path) == (3, 64, "ernie-3.0-base-zh")
    assert infer.placement() == ("gpu", 2) and infer.use_int8 and infer.input_path == os.path.join("d", "data.txt")
    (client,) = parse_flags(ClientArguments, ["--text", "苹果", "--text", "香蕉"], "client.py")
    assert client.text == ["苹果", "香蕉"]
    (ensemble,) = parse_flags(EnsembleArguments, ["--members", "a", "b", "--output_dir", "o", "--quantize", "INT8",
                                                  "--threshold_search", "per_label"], "ensemble.py")
    assert ensemble.quantize is Quantize.INT8 and ensemble.threshold_search is ThresholdSearch.PER_LABEL
    for argv, flag, words in ((["--model_path_prefix", "m", "--data_dir", "d", "--prompt", "这是"], "--prompt",
                               "the export carries the template"),
                              (["--data_dir", "d"], "infer.py", "the following arguments are required: "
                                                                "--model_path_prefix")):
        with pytest.raises(UserError) as error:
            parse_flags(InferArguments, argv, "infer.py")
        assert error.value.path == flag and words in error.value.message


PADDLE_FREE = {
    "infer": ("utils.flags.runtime:InferArguments", ["--model_path_prefix", "m", "--input_file", "t.txt",
                                                     "--cpu_threads", "2", "--max_length", "64", "--device", "gpu:1"]),
    "serve": ("utils.flags.runtime:ServeArguments", ["--model_path_prefix", "m", "--port", "0", "--loop", "ASYNCIO",
                                                     "--device", "cpu"]),
    "client": ("utils.flags.runtime:ClientArguments", ["--text", "苹果", "--text", "香蕉", "--batch_size", "4"]),
}


@pytest.mark.parametrize("script", sorted(PADDLE_FREE))
def test_infer_serve_and_client_parse_their_flags_without_paddle(script):
    """--help and a parse, in a Python where importing paddle, paddlenlp or paddle2onnx fails: the one
    parser is paddlenlp's argparser.py loaded from its file, not paddlenlp.trainer (which imports Paddle)."""
    from conftest import ROOT
    from helpers import BLOCK_PADDLE

    dataclass_path, argv = PADDLE_FREE[script]
    module, name = dataclass_path.split(":")
    code = BLOCK_PADDLE + f"""
import contextlib, dataclasses, importlib, io, json
sys.path.insert(0, {ROOT!r})
from utils.errors import run_cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        run_cli(importlib.import_module({script!r}).main, ["--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
from utils.flags.parser import parse_flags
(flags,) = parse_flags(getattr(importlib.import_module({module!r}), {name!r}), {argv!r}, {script!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddlenlp", "paddle2onnx"))
print(json.dumps({{"help": out.getvalue(), "flags": {{k: str(v) for k, v in dataclasses.asdict(flags).items()}},
                  "loaded": loaded}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == [] and f"usage: {script}.py" in report["help"]
    expected = {"infer": {"num_threads": "2", "max_seq_length": "64", "device": "gpu:1"},
                "serve": {"port": "0", "loop": "asyncio"}, "client": {"text": "['苹果', '香蕉']", "batch_size": "4"}}
    assert {k: report["flags"][k] for k in expected[script]} == expected[script]
