import json
import os
import shutil
import time

import pytest

from utils.model import plm
from utils.errors import UserError


def test_unreachable_host_fails_within_seconds(monkeypatch, tmp_path):
    monkeypatch.delenv("PTUNING_OFFLINE", raising=False)
    monkeypatch.setattr(plm, "DOWNLOAD_HOST", ("127.0.0.1", 9))  # a closed port: the real socket probe fails
    monkeypatch.setattr(plm, "_cached_dir", lambda name: str(tmp_path / "cache" / name))
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        plm.resolve_model("ernie-3.0-base-zh")
    assert time.monotonic() - start < plm.PROBE_TIMEOUT_S + 1
    message = str(info.value)
    assert "ernie-3.0-base-zh" in message and "unreachable" in message and "utils.tiny_ernie" in message


def test_cached_builtin_model_is_used_offline(monkeypatch, tmp_path):
    cache = tmp_path / "ernie-3.0-base-zh"
    cache.mkdir()
    (cache / "model_state.pdparams").write_bytes(b"x")
    monkeypatch.setattr(plm, "_cached_dir", lambda name: str(cache))
    assert plm.resolve_model("ernie-3.0-base-zh") == "ernie-3.0-base-zh"


def test_local_directory_checks(tmp_path, tiny_model_dir):
    assert plm.resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(UserError, match="missing config.json, model_state.pdparams"):
        plm.resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="model directory not found"):
        plm.resolve_model(os.path.join(".", "no", "such", "model"))


def test_tiny_model_loads_and_is_marked_not_pretrained(tiny_model_dir, caplog):
    from utils.testing.tiny_ernie import MARKER_FILE

    model, tokenizer = plm.load_plm(tiny_model_dir)
    assert type(model).__name__ == "ErnieForMaskedLM"
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token_id is not None
    assert os.path.isfile(os.path.join(tiny_model_dir, MARKER_FILE))
    assert "NOT pretrained" in caplog.text


MODEL_DAMAGE = {
    "truncated weights": lambda d: open(os.path.join(d, "model_state.pdparams"), "r+b").truncate(1000),
    "corrupt config": lambda d: open(os.path.join(d, "config.json"), "w").write("{bad"),
    "impossible config": lambda d: _edit_json(os.path.join(d, "config.json"), hidden_size=65),
    "no vocab": lambda d: os.remove(os.path.join(d, "vocab.txt")),
    "empty vocab": lambda d: open(os.path.join(d, "vocab.txt"), "w").close(),
    "corrupt tokenizer config": lambda d: open(os.path.join(d, "tokenizer_config.json"), "w").write("[1"),
}


def _edit_json(path, **changes):
    with open(path, encoding="utf-8") as fp:
        data = json.load(fp)
    data.update(changes)
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(data, fp)


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_a_damaged_pretrained_model_dir_is_one_paragraph(case, tiny_model_dir, keyword_data, tmp_path, capsys):
    import train
    from utils.errors import run_cli

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    MODEL_DAMAGE[case](str(model))
    code = run_cli(train.main, ["--model_name_or_path", str(model), "--data_dir", keyword_data, "--output_dir",
                                str(tmp_path / "out"), "--do_train", "--max_steps", "1", "--max_seq_length", "32"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(model) in err and "Traceback" not in err, err
