"""Every place a text enters refuses text that is not valid Unicode, naming where it came from: a
lone surrogate (`"\\ud800"` in JSON, or the bytes of a command line that are not UTF-8, which Python
carries as U+DC80..U+DCFF) is a 400 naming the field and index, `error: --flag: ...` with exit 2,
or a `UserError` in the Python API, never the tokenizer's TypeError or a traceback."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, ready_client
from utils.errors import UserError, check_text, run_cli

LONE = "苹果\ud800很甜"        # a UTF-16 half without its other half, as `"\ud800"` in JSON gives it
ESCAPED = "苹果\udcff很甜"     # the byte 0xFF of a command line that is not UTF-8, as Python carries it


def test_check_text_names_the_place_the_character_and_its_likely_origin():
    assert check_text("苹果 😀", "texts[0]") == "苹果 😀"
    with pytest.raises(UserError) as error:
        check_text(LONE, "texts[3]")
    assert str(error.value).startswith("texts[3]: not valid Unicode: character 3 is a lone surrogate U+D800")
    with pytest.raises(UserError) as error:
        check_text(ESCAPED, "--text")
    assert str(error.value).startswith("--text: not valid Unicode: character 3 is U+DCFF, which stands for the "
                                       "byte 0xFF of text that is not UTF-8")
    with pytest.raises(UserError) as error:
        check_text("a\udc80", "data.txt", 7)
    assert str(error.value).startswith("data.txt:7: not valid Unicode: character 2")


def post_json(client, path, body):
    """`body` sent as JSON with lone surrogates escaped (`"\\ud800"`), as any JSON client may send them."""
    return client.post(path, content=json.dumps(body).encode("ascii"), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def service(trained):
    from utils.serving.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(os.path.join(trained[1], "export"), num_threads=1))
    with ready_client(app) as client:
        yield client


@pytest.mark.parametrize("path, body, field", [
    ("/predict", {"texts": ["苹果", LONE]}, "texts[1]"),
    ("/predict", {"texts": [ESCAPED]}, "texts[0]"),
    ("/models/cls_default", {"data": {"text": ["香蕉", "葡萄", LONE]}}, "data.text[2]"),
], ids=["predict", "predict, surrogate escape", "simpleserving"])
def test_the_service_answers_400_naming_the_field_and_index(service, path, body, field):
    response = post_json(service, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["message"].startswith("not valid Unicode: character 3 is ")
    assert post_json(service, path, {**body, **({"texts": ["苹果"]} if "texts" in body else
                                               {"data": {"text": ["苹果"]}})}).status_code == 200


def test_a_field_name_or_model_name_that_is_not_valid_unicode_is_a_4xx_not_a_500(service):
    response = post_json(service, "/predict", {"texts": ["苹果"], "\ud800": 1})
    assert response.status_code == 400 and response.json()["error"]["field"] == "body", response.text
    assert "not valid Unicode" in response.json()["error"]["message"]
    response = service.post("/models/%ED%A0%80", json={"data": {"text": ["苹果"]}})
    assert response.status_code == 404 and response.json()["error"]["field"] == "name", response.text


def test_a_pair_service_names_the_text_of_the_pair(pair_export):  # noqa: F811
    from utils.serving.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(pair_export, num_threads=1))
    with ready_client(app) as client:
        for path, body, field in [
                ("/predict", {"texts": [["苹果", "香蕉"], ["苹果", LONE]]}, "texts[1][1]"),
                ("/predict", {"texts": [[LONE, "香蕉"]]}, "texts[0][0]"),
                ("/models/cls_default", {"data": {"text": ["苹果", LONE], "text_pair": ["香蕉", "葡萄"]}},
                 "data.text[1]"),
                ("/models/cls_default", {"data": {"text": ["苹果", "葡萄"], "text_pair": ["香蕉", LONE]}},
                 "data.text_pair[1]")]:
            response = post_json(client, path, body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["field"] == field, (body, response.text)
        assert post_json(client, "/predict", {"texts": [["苹果", "香蕉"]]}).status_code == 200


def test_the_python_api_raises_user_error_naming_the_index(trained, pair_export):  # noqa: F811
    from utils import Classifier

    with pytest.raises(UserError) as error:
        Classifier(os.path.join(trained[1], "export"), num_threads=1).predict(["苹果", LONE])
    assert str(error.value).startswith("texts[1]: not valid Unicode")
    pair = Classifier(pair_export, num_threads=1)
    for texts, where in (([("苹果", ESCAPED)], "texts[0][1]"),
                         ([("苹果", "香蕉"), (LONE, "香蕉")], "texts[1][0]")):
        with pytest.raises(UserError) as error:
            pair.predict(texts)
        assert str(error.value).startswith(f"{where}: not valid Unicode"), str(error.value)


@pytest.mark.parametrize("script, argv, flag", [
    ("client", ["--text", "苹果", "--text", b"\xb9\xfb"], "--text"),  # 果 in GBK
    ("explain", ["--resume_from_checkpoint", "nowhere", "--text", b"\xff"], "--text"),
    ("explain", ["--resume_from_checkpoint", "nowhere", "--label", b"\xe8\x8b"], "--label"),
    ("infer", ["--model_path_prefix", "nowhere", "--input_file", "x", "--other_label", b"\xff"], "--other_label"),
    ("serve", ["--model_path_prefix", "nowhere", "--name", b"m\xff"], "--name"),
    ("train", ["--do_train", "--prompt", b"\xd5\xe2\xca\xc7"], "--prompt"),  # 这是 in GBK
    ("train", ["--do_train", "--reject_threshold", "0.5", "--other_label", b"\xff"], "--other_label"),
    ("utils.label_words", ["--data_dir", "x", "--model_name_or_path", "y", "--prompt", b"\xff"], "--prompt"),
    ("utils.testing.tiny_ernie", ["--output_dir", "x", "--extra_text", b"\xff"], "--extra_text"),
], ids=lambda v: v if isinstance(v, str) and not v.startswith("--") else None)
def test_a_text_flag_with_bytes_that_are_not_utf8_is_one_error_naming_the_flag(script, argv, flag, tmp_path, capsys):
    """Each script's text flags, given the bytes as Python decodes a Linux command line (os.fsdecode:
    surrogate escapes); the test below shows a real command line arrives so."""
    import importlib

    argv = [os.fsdecode(a) for a in argv]
    main = importlib.import_module(script).main
    if script == "utils.label_words":  # (its main runs run_cli itself)
        code = main(argv)
    else:
        code = run_cli(main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {flag}: not valid Unicode: character ") and "Traceback" not in err, err
    assert "of text that is not UTF-8" in err


def test_a_real_command_line_with_bytes_that_are_not_utf8_is_refused_naming_the_flag():
    result = subprocess.run([sys.executable, "client.py", "--text", b"\xb9\xfb"], cwd=ROOT, capture_output=True,
                            env={**os.environ, "LC_ALL": "C.UTF-8"})
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert err.startswith("error: --text: not valid Unicode: character 1 is U+DCB9, which stands for the byte 0xB9")
    assert "Traceback" not in err
