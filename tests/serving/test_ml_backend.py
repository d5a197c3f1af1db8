"""The service as Label Studio's ML backend (utils/serving/ml_backend.py, routes under
--label_studio_prefix): the protocol's bodies for every task type, names read from the project's
config, tasks through the batcher, and hostile requests answered 4xx naming the field, never a 500,
never a stuck batcher. (A real Label Studio drives it in test_label_studio_server.py.)"""
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import metric_value, ready_client
from helpers import assert_error_names, infer_jsonl, post_raw_or_json
from service_fakes import FakeClassifier, FakeModel
from utils.annotation import label_studio as ls
from utils.errors import UserError, run_cli
from utils.serving.app import ServiceConfig, create_app
from utils.task.decoding import Decoder

LABELS = ["a", "b", "c"]
CONFIG = ls.labeling_config(LABELS)
GOOD = {"tasks": [{"id": 1, "data": {"text": "4"}}], "label_config": CONFIG}


class LabelSetModel(FakeModel):
    """A FakeModel of a label-set `task_type`: text n chooses label j when bit j of n is set."""

    def __init__(self, task_type, labels):
        super().__init__()
        self.labels, self.decoder = labels, Decoder(task_type, labels)

    def run(self, features, batch_size=32):
        ids = np.array([f["input_ids"][0] for f in features])
        self.batches.append(list(ids))
        return np.where((ids[:, None] >> np.arange(len(self.labels))) & 1, 10.0, -10.0).astype(np.float32)


def app_of(model, **config):
    return create_app(ServiceConfig("unused", num_threads=1, **config), classifier=FakeClassifier(model))


@pytest.fixture(scope="module")
def client():
    with TestClient(app_of(FakeModel(), max_texts_per_request=4, max_chars_per_text=20)) as test_client:
        yield test_client


def predict(client, tasks, config=CONFIG, **extra):
    response = client.post("/label-studio/predict", json={"tasks": tasks, "label_config": config, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_setup_give_one_model_version_that_the_predictions_carry(client):
    health = client.get("/label-studio/health").json()
    assert health["status"] == "UP" and health["model_version"].startswith("cls_default-")
    setup = client.post("/label-studio/setup", json={"project": "1.1700000000", "schema": CONFIG, "hostname": "x",
                                                     "access_token": "t", "extra_params": None})
    assert setup.status_code == 200 and setup.json() == {"model_version": health["model_version"]}
    body = predict(client, [{"id": 7, "data": {"text": "5"}}], project="1.1700000000", params={"context": None})
    assert body["model_version"] == health["model_version"]
    assert body["results"] == [{"model_version": health["model_version"], "score": 1.0, "result": [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["c"]}}]}]
    assert client.get("/label-studio/versions").json() == {"versions": [health["model_version"]]}


def test_the_names_come_from_the_projects_config_not_from_this_tools_defaults(client):
    """Another control, object and data key; an alias; a second Text; a control for something else
    first: the prediction names the classification control and reads the text its object shows."""
    config = ('<View><Header value="Topic"/><Text name="title" value="$headline"/><Text name="doc" value="$body"/>'
              '<TextArea name="note" toName="doc"/><Choices name="topic" toName="doc" choice="single">'
              '<Choice value="A" alias="a"/><Choice value="b"/><View><Choice value="c"/></View></Choices></View>')
    body = predict(client, [{"data": {"headline": "1", "body": "4"}}, {"data": {"body": "2", "headline": 1}}], config)
    assert [r["result"] for r in body["results"]] == [
        [{"from_name": "topic", "to_name": "doc", "type": "choices", "value": {"choices": [label]}}]
        for label in ("b", "c")]


SURE = 1 / (1 + np.exp(-10.0))  # sigmoid(10): a chosen label's probability; 1 - SURE: a label left out


@pytest.mark.parametrize("task_type, texts, expected", [
    ("multi-label", ["3", "4", "8"], [({"choices": ["a", "b"]}, SURE), ({"choices": ["c"]}, SURE), (None, SURE)]),
    ("hierarchical", ["3", "4", "2"], [({"taxonomy": [["a", "x"]]}, SURE), ({"taxonomy": [["b"]]}, SURE),
                                       (None, 1 - SURE)]),
], ids=["multi-label", "hierarchical"])
def test_label_sets_are_choices_or_taxonomy_paths_scored_by_their_least_sure_label(task_type, texts, expected):
    """Text n chooses label j when bit j of n is set. "8" chooses none (score: 1 - its best label's
    probability, sure of that); "2" chooses a##x without its parent, which top-down decoding refuses:
    an empty result, scored as unsure as a##x was sure."""
    labels = ["a", "a##x", "b"] if task_type == "hierarchical" else LABELS
    with TestClient(app_of(LabelSetModel(task_type, labels))) as client:
        body = predict(client, [{"data": {"text": t}} for t in texts], ls.labeling_config(labels, task_type))
    kind = "taxonomy" if task_type == "hierarchical" else "choices"
    for result, (value, score) in zip(body["results"], expected):
        assert result["result"] == ([] if value is None else [
            {"from_name": "label", "to_name": "text", "type": kind, "value": value}])
        assert result["score"] == pytest.approx(score, abs=1e-6)


def test_more_tasks_than_one_request_may_send_go_through_the_batcher_in_slices_in_order():
    """Label Studio sends every task it was asked about in one request: 10 tasks with
    --max_texts_per_request 4 are answered in order, in batches of at most 4, and counted."""
    model = FakeModel()
    with TestClient(app_of(model, max_texts_per_request=4)) as client:
        body = predict(client, [{"data": {"text": str(n)}} for n in range(10)])
        metrics = client.get("/metrics").text
    assert [r["result"][0]["value"]["choices"] for r in body["results"]] == [[LABELS[n % 3]] for n in range(10)]
    assert sorted(n for batch in model.batches for n in batch) == list(range(10))
    assert max(len(batch) for batch in model.batches) <= 4 and len(model.batches) >= 3
    assert metric_value(metrics, "ptuning_texts_total") == 10


def test_webhook_events_are_acknowledged_and_training_is_refused_as_not_implemented(client):
    for action in ("TASKS_CREATED", "ANNOTATION_CREATED", "PROJECT_UPDATED"):
        response = client.post("/label-studio/webhook", json={"action": action, "project": {"id": 1}})
        assert response.status_code == 200 and response.json()["status"] == "ignored"
    for path, body in (("/label-studio/train", {"annotations": [], "project": "1.1"}),
                       ("/label-studio/webhook", {"action": "START_TRAINING", "project": {"id": 1}})):
        response = client.post(path, json=body)
        assert response.status_code == 501 and "train.py" in response.json()["error"]["message"]


def test_a_reject_option_needs_its_other_label_among_the_choices():
    model = FakeModel()
    model.decoder = Decoder("multi-class", LABELS, reject_threshold=0.5, other_label="none")
    with TestClient(app_of(model)) as client:
        refused = client.post("/label-studio/setup", json={"schema": CONFIG})
        assert refused.status_code == 422 and "'none'" in refused.json()["error"]["message"]
        assert client.post("/label-studio/setup", json={"schema": ls.labeling_config(LABELS + ["none"])}
                           ).status_code == 200


def test_the_prefix_flag_moves_every_route_and_leaves_the_services_own(tmp_path):
    with TestClient(app_of(FakeModel(), label_studio_prefix="/tools/ls")) as client:
        assert client.get("/tools/ls/health").status_code == 200
        assert client.post("/tools/ls/predict", json=GOOD).status_code == 200
        assert client.get("/label-studio/health").status_code == 404
        assert client.post("/predict", json={"texts": ["1"]}).json()["predictions"][0]["label"] == "b"


@pytest.mark.parametrize("prefix", ["", "/", "label-studio", "/label-studio/", "/a//b", "/a b", "/{name}", "/models",
                                    "/predict/ls", "/health", "/docs", "/..", "/é"])
def test_a_prefix_that_is_no_path_or_clashes_with_a_route_is_refused_before_the_model_loads(prefix, tmp_path,
                                                                                            capsys):
    import serve

    with pytest.raises(UserError, match="--label_studio_prefix"):
        ServiceConfig("unused", label_studio_prefix=prefix)
    argv = ["--model_path_prefix", str(tmp_path / "no-export"), "--label_studio_prefix", prefix]
    assert run_cli(serve.main, argv) == 2
    assert "--label_studio_prefix" in capsys.readouterr().err  # (not the missing export: checked first)


PAIR_CONFIG = ls.labeling_config(LABELS, pair=True)
OTHER_TEXT = '<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
HOSTILE = [
    ("/label-studio/predict", b"{not json", 400, "body"),
    ("/label-studio/predict", json.dumps({"tasks": [{"data": {"text": "?"}}], "label_config": CONFIG}).replace(
        "?", "\\ud800").encode(), 400, "tasks[0].data.text"),
    ("/label-studio/predict", b'{"tasks": [{"data": {"text": "1"}}], "label_config": "<View>\\udfff</View>"}', 400,
     "label_config"),
    ("/label-studio/predict", b"\xff\xfe", 400, "body"),
    ("/label-studio/predict", [GOOD], 422, "body"),
    ("/label-studio/predict", {"label_config": CONFIG}, 422, "tasks"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"]}, 422, "label_config"),
    ("/label-studio/predict", {"tasks": {"id": 1}, "label_config": CONFIG}, 422, "tasks"),
    ("/label-studio/predict", {"tasks": [], "label_config": CONFIG}, 422, "tasks"),
    ("/label-studio/predict", {"tasks": [7], "label_config": CONFIG}, 422, "tasks[0]"),
    ("/label-studio/predict", {"tasks": [{"id": 1}], "label_config": CONFIG}, 422, "tasks[0].data"),
    ("/label-studio/predict", {"tasks": [{"data": ["1"]}], "label_config": CONFIG}, 422, "tasks[0].data"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": "1"}}, {"data": {"txt": "1"}}], "label_config": CONFIG},
     422, "tasks[1].data.text"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": 1}}], "label_config": CONFIG}, 422, "tasks[0].data.text"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": None}}], "label_config": CONFIG}, 422,
     "tasks[0].data.text"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": ["1", "2"]}}], "label_config": CONFIG}, 422,
     "tasks[0].data.text"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": " \n"}}], "label_config": CONFIG}, 422,
     "tasks[0].data.text"),
    ("/label-studio/predict", {"tasks": [{"data": {"text": "长" * 21}}], "label_config": CONFIG}, 413,
     "tasks[0].data.text"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": ls.labeling_config(["a", "b", "d"])}, 422,
     "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": ls.labeling_config(["a", "b"])}, 422,
     "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": ls.labeling_config(LABELS, "multi-label")},
     422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": ls.labeling_config(LABELS, "hierarchical")},
     422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": '<View><Text name="text" value="$text"/>'
                               '<TextArea name="n" toName="text"/></View>'}, 422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": '<View><Image name="i" value="$img"/>'
                               '<Choices name="c" toName="i"><Choice value="a"/></Choices></View>'}, 422,
     "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": CONFIG.replace('value="$text"',
                                                                                      'value="text"')},
     422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"],
                               "label_config": CONFIG.replace('<Text ', '<Text valueType="url" ')}, 422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": "<View><Choices"}, 422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": '<!DOCTYPE v [<!ENTITY x "a">]>' + CONFIG},
     422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": ["<View/>"]}, 422, "label_config"),
    ("/label-studio/predict", {"tasks": GOOD["tasks"], "label_config": '<View><Text name="t" value="$t"/><Taxonomy '
                               'name="c" toName="t">' + '<Choice value="x">' * 2000 + "</Choice>" * 2000
                               + "</Taxonomy></View>"}, 422, "label_config"),
    ("/label-studio/setup", {}, 422, "schema"),
    ("/label-studio/setup", {"schema": OTHER_TEXT}, 422, "schema"),
    ("/label-studio/setup", {"schema": 3}, 422, "schema"),
    ("/label-studio/setup", b"[]", 422, "body"),
    ("/label-studio/webhook", b"{", 400, "body"),
    ("/label-studio/webhook", b"7", 422, "body"),
]


@pytest.mark.parametrize("path, body, status, field", HOSTILE, ids=[f"{p.rsplit('/', 1)[1]} {b!r}"[:60]
                                                                    for p, b, _, _ in HOSTILE])
def test_a_hostile_request_is_a_4xx_naming_the_field_and_the_service_goes_on(path, body, status, field, client):
    error = assert_error_names(post_raw_or_json(client, path, body), status, field)
    assert set(error) == {"status", "field", "message"}
    assert predict(client, GOOD["tasks"])["results"][0]["result"][0]["value"] == {"choices": ["b"]}


def test_an_oversize_body_is_413_unread_and_a_pair_config_needs_its_second_text():
    with TestClient(app_of(FakeModel(), max_texts_per_request=1, max_chars_per_text=10)) as client:
        limit = client.app.state.config.max_body_bytes
        huge = json.dumps({"tasks": [{"data": {"text": "1" * (limit + 1)}}], "label_config": CONFIG})
        response = client.post("/label-studio/predict", content=huge, headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["field"] == "body"
        assert client.post("/label-studio/predict", json=GOOD).status_code == 200
    pair = FakeClassifier(FakeModel())
    pair.pair = True
    with TestClient(create_app(ServiceConfig("unused", num_threads=1), classifier=pair)) as client:
        response = client.post("/label-studio/setup", json={"schema": CONFIG})
        assert response.status_code == 422 and "second <Text>" in response.json()["error"]["message"]
        assert client.post("/label-studio/setup", json={"schema": PAIR_CONFIG}).status_code == 200


def test_a_pair_export_reads_both_texts_of_a_task_as_infer_reads_a_pair(pair_export, tmp_path, capsys):
    texts = [("苹果好吃", "我爱吃香蕉"), ("葡萄", "紫色的葡萄"), ("香蕉", "苹果")]
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in texts), encoding="utf-8")
    records = infer_jsonl(capsys, pair_export, str(path), str(tmp_path / "out.jsonl"))
    config = ls.labeling_config(["apple", "banana", "grape"], pair=True)
    with ready_client(create_app(ServiceConfig(pair_export, num_threads=1))) as client:
        body = predict(client, [{"data": {"text_b": b, "text": a}} for a, b in texts], config)
    assert [r["result"][0]["value"]["choices"] for r in body["results"]] == [[r["label"]] for r in records]
    np.testing.assert_allclose([r["score"] for r in body["results"]], [r["confidence"] for r in records], atol=2e-6)
