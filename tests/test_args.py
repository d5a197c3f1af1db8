"""Every flag is checked before any model loads: one paragraph naming the flag, exit 2, nothing written;
the defaults train.py adds are added only for the flags not given."""
import os

import pytest

import export as export_cli
import train
from utils.choices import Method, Quantize, SoftEncoder
from utils.flags.train import parse_args
from utils.flags.trainer import default_device
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT

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
