"""Every flag is checked before any model loads: one paragraph naming the flag, exit 2, nothing written."""
import pytest

import export as export_cli
import train
from utils.args import Method, Quantize, SoftEncoder, parse_args
from utils.errors import run_cli
from utils.synthetic import PROMPT

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
    (["--metric_for_best_model", "f1"], "--metric_for_best_model", "accuracy, macro_f1, loss"),
    (["--max_seq_length", "3"], "--max_seq_length", "at least 4"),
    (["--max_seq_length", "100000"], "--max_seq_length", "positions"),
    (["--max_seq_length", "6"], "--max_seq_length", "the prompt alone takes"),
    (["--prompt", "{'soft': None, 'length': 4}{'text': 'text_a'}{'mask'}", "--soft_encoder", "mlp"], "--prompt",
     "full template"),
    (["--prompt", "{'soft': None}{'text': 'text_a'}{'mask'}", "--num_virtual_tokens", "3"], "--prompt",
     "full template"),
    (["--per_device_train_batch_size", "many"], "--per_device_train_batch_size", "invalid int value"),
]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a PLM starts loading: flags are checked before that."""
    import utils.training

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(utils.training, "load_plm", refuse)
    monkeypatch.setattr(utils.training, "rebuild_from_checkpoint", refuse)


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


def test_upstream_spellings_are_accepted(tiny_model_dir, keyword_data, tmp_path):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(tmp_path),
            "--do_train", "--soft_encoder", "None", "--method", "PTuning", "--quantize", "INT8"]
    model_args, data_args, _ = parse_args(argv)
    assert data_args.soft_encoder is SoftEncoder.NONE and data_args.prompt_flags_given == ["soft_encoder"]
    assert model_args.method is Method.PTUNING and model_args.quantize is Quantize.INT8
    _, data_args, _ = parse_args(argv[:-6])
    assert data_args.soft_encoder is SoftEncoder.LSTM and data_args.encoder_hidden_size == 200
    assert data_args.prompt_flags_given == []


def test_keeping_the_best_and_the_latest_checkpoint_is_the_default(tmp_path):
    _, _, training_args = parse_args(["--do_train", "--output_dir", str(tmp_path)])
    assert training_args.save_total_limit == 1  # the Trainer keeps the best beside it
    _, _, training_args = parse_args(["--do_train", "--output_dir", str(tmp_path), "--save_total_limit", "5"])
    assert training_args.save_total_limit == 5


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
