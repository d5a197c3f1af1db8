"""A real Label Studio (its own environment, .venv-labelstudio: `make install-labelstudio`, which
`make test` runs first; SQLite, its data in tmp_path) with serve.py connected as its ML backend:
the pre-labels Label Studio stores for a project's tasks are infer.py's labels and scores on the
same texts, for multi-class, multi-label and hierarchical exports; a project whose labels are not
the model's cannot connect it.

Label Studio is driven by label-studio-sdk from tests/serving/label_studio_driver.py, run by that
environment's Python, as a person would through the UI: create a project with
utils.annotation.label_studio's config, import tasks, add the ML backend (Label Studio calls
/health and /setup), "Retrieve Predictions" (/predict), read back what it stored."""
import json
import os
import random
import socket
import subprocess

import numpy as np
import pytest

from conftest import ROOT, train_quick, until
from helpers import infer_jsonl
from test_service import serving
from utils.annotation import label_studio as ls
from utils.testing import synthetic

VENV = os.path.join(ROOT, os.environ.get("PTUNING_LABEL_STUDIO_VENV", ".venv-labelstudio"))
DRIVER = os.path.join(ROOT, "tests", "serving", "label_studio_driver.py")
USER, PASSWORD, TOKEN = "tests@example.com", "ptuning-tests-1", "ptuning0test0token0123"
START_GUARD = 600  # seconds: Label Studio's first start migrates its SQLite database (~1 min here)
# Label Studio refuses backends and webhooks on local addresses by default (SSRF protection);
# these tests run both on 127.0.0.1. Nothing may leave the machine: no version check, telemetry or Sentry.
ENV = {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false", "LATEST_VERSION_CHECK": "false",
       "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """`label-studio start` on a free port with a known user and token; yields its URL once /health answers."""
    import httpx

    program = os.path.join(VENV, "bin", "label-studio")
    if not os.access(program, os.X_OK):
        pytest.fail(f"no Label Studio environment at {VENV}: build it with `make install-labelstudio` (`make test` "
                    "does)")
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    log = open(data / "label-studio.log", "w+", encoding="utf-8")
    server = subprocess.Popen(
        [program, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir",
         str(data), "--database", str(data / "label_studio.sqlite3"), "--username", USER, "--password", PASSWORD,
         "--user-token", TOKEN, "--enable-legacy-api-token"],
        env={**os.environ, **ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "HOME": str(data)},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up():
        if server.poll() is not None:
            log.seek(0)
            pytest.fail(f"label-studio exited with {server.returncode}:\n{log.read()[-4000:]}")
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(up, "Label Studio answers /health", guard=START_GUARD)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def drive(label_studio, backend, label_config, tasks, title):
    """label_studio_driver.py's answer for a new project of `tasks` with serve.py at `backend`."""
    request = {"url": label_studio, "token": TOKEN, "title": title, "label_config": label_config, "tasks": tasks,
               "backend": backend}
    done = subprocess.run([os.path.join(VENV, "bin", "python"), DRIVER], input=json.dumps(request),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def renamed(config):
    """The config with its control, object and data key renamed (topic, doc, $content): the backend
    must read them from the project, not assume this tool's own names."""
    return (config.replace(f'name="{ls.CONTROL}"', 'name="topic"').replace(f'"{ls.TEXT}"', '"doc"')
            .replace(f"${ls.TEXT}", "$content"))


def expected_prediction(record, task_type):
    """infer.py's JSONL record as the Label Studio prediction it should become (labels and score)."""
    if task_type == "multi-class":
        labels, score = [record["label"]], record["confidence"]
    else:
        labels = [item["label"] for item in record["labels"]]
        chosen = [item["confidence"] for item in record["labels"]]
        score = min(chosen) if chosen else 1.0 - record["top_k"][0]["confidence"]
    return ls.result(labels, task_type, "topic", "doc"), score


@pytest.fixture(scope="module")
def hierarchical_export(tiny_model_dir, tmp_path_factory):
    """The keyword task as a two-level hierarchy (red: apple; yellow: banana, grape), exported."""
    base = tmp_path_factory.mktemp("hierarchical-keywords")
    data_dir = synthetic.write_keyword_dataset(str(base / "data"))
    parents = {"apple": "red", "banana": "yellow", "grape": "yellow"}
    for name in ("train.txt", "dev.txt", "test.txt"):
        path = os.path.join(data_dir, name)
        with open(path, encoding="utf-8") as fp:
            rows = [line.rstrip("\n").split("\t") for line in fp if line.strip()]
        with open(path, "w", encoding="utf-8") as fp:
            fp.writelines(f"{text}\t{parents[label]},{parents[label]}##{label}\n" for text, label in rows)
    with open(os.path.join(data_dir, "label.txt"), "w", encoding="utf-8") as fp:
        fp.write("red==红色\nred##apple==苹果\nyellow==黄色\nyellow##banana==香蕉\nyellow##grape==葡萄\n")
    out = train_quick(tiny_model_dir, data_dir, str(base / "out"), "--task_type", "hierarchical", "--prompt",
                      synthetic.PROMPT, "--threshold_search", "global", "--do_export", steps=120)
    return os.path.join(out, "export")


@pytest.fixture
def exports(trained, trained_multilabel, hierarchical_export):
    return {"multi-class": os.path.join(trained[1], "export"),
            "multi-label": os.path.join(trained_multilabel[1], "export"), "hierarchical": hierarchical_export}


@pytest.mark.parametrize("task_type", ["multi-class", "multi-label", "hierarchical"])
def test_label_studio_stores_pre_labels_equal_to_infer_for_every_task(label_studio, exports, task_type, tmp_path,
                                                                     capsys):
    export = exports[task_type]
    rng = random.Random(5)
    texts = [synthetic.make_text(rng, keyword, 1, 12) for keyword in ("苹果", "香蕉", "葡萄") * 4]
    texts += [synthetic.make_text(rng, "苹果", 1, 4) + synthetic.make_text(rng, "葡萄", 1, 4) for _ in range(4)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    records = infer_jsonl(capsys, export, str(tmp_path / "texts.txt"), str(tmp_path / "out.jsonl"), "--top_k", "2")
    with serving(export, tmp_path) as (_, _, url):
        import httpx

        labels = httpx.get(url + "/labels", timeout=60).json()["labels"]
        config = renamed(ls.labeling_config(labels, task_type))
        answer = drive(label_studio, url + "/label-studio", config, [{"content": t} for t in texts],
                       f"{task_type} tasks")
        version = httpx.get(url + "/label-studio/health", timeout=60).json()["model_version"]
    assert answer.get("backend", {}).get("state") == "CO", answer  # connected
    assert answer["backend"]["model_version"] == version
    stored = answer["tasks"]
    assert [task["data"]["content"] for task in stored] == texts
    assert all(len(task["predictions"]) == 1 for task in stored), stored  # one pre-label per task, none missing
    expected = [expected_prediction(record, task_type) for record in records]
    assert [task["predictions"][0]["result"] for task in stored] == [result for result, _ in expected]
    np.testing.assert_allclose([task["predictions"][0]["score"] for task in stored], [s for _, s in expected],
                               atol=2e-6)
    assert {task["predictions"][0]["model_version"] for task in stored} == {version}
    assert sum(bool(result) for result, _ in expected) >= len(texts) // 2  # not vacuous: labels were chosen


def test_label_studio_refuses_to_connect_a_backend_whose_labels_are_not_the_projects(label_studio, trained,
                                                                                      tmp_path):
    export = os.path.join(trained[1], "export")
    with serving(export, tmp_path) as (_, _, url):
        config = ls.labeling_config(["apple", "banana", "cherry"])
        answer = drive(label_studio, url + "/label-studio", config, [{"text": "苹果"}], "wrong labels")
    assert answer["connect_error"]["status"] == 400, answer
    body = json.dumps(answer["connect_error"]["body"], ensure_ascii=False)
    assert "422" in body and "/label-studio/setup" in body  # Label Studio shows our status and route
