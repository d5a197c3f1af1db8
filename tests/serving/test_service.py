"""serve.py: SimpleServing's body works unchanged, answers equal infer.py's, concurrent requests
share batches yet each gets its own answer, bad requests are 4xx naming the field, overload is 503,
SIGTERM drains in-flight requests."""
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, metric_value, ready_client, until
from helpers import assert_error_names, flip_byte, infer_jsonl, post_raw_or_json, texts_and_file
from service_fakes import FakeClassifier, FakeModel, HeldModel
from utils.errors import run_cli
from utils.serving.app import ServiceConfig, create_app
from utils.serving.batcher import Batcher
from utils.serving.requests import RequestError


@pytest.fixture(scope="module")
def export_dir(trained):
    return os.path.join(trained[1], "export")


@pytest.fixture(scope="module")
def client(export_dir):
    app = create_app(ServiceConfig(export_dir, num_threads=1, max_texts_per_request=50, max_chars_per_text=200))
    with ready_client(app) as test_client:
        yield test_client


def test_simpleserving_body_answers_label_names_equal_to_infer(client, export_dir, tmp_path, capsys):
    texts, path = texts_and_file(tmp_path, n=40)
    records = infer_jsonl(capsys, export_dir, path, str(tmp_path / "out.jsonl"), "--top_k", "2")
    response = client.post("/models/cls_default", json={
        "data": {"text": texts}, "parameters": {"max_seq_len": 512, "batch_size": 1, "prob_limit": 0.5, "top_k": 2}})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert [r["label"] for r in result] == [r["label"] for r in records]
    np.testing.assert_allclose([r["confidence"] for r in result], [r["confidence"] for r in records], atol=2e-6)
    assert [[t["label"] for t in r["top_k"]] for r in result] == [[t["label"] for t in r["top_k"]] for r in records]


def test_two_instances_answer_equal_to_infer(export_dir, tmp_path, capsys):
    """--instances 2: the 40 texts go out in 8-text batches to both workers; the answer is infer.py's."""
    texts, path = texts_and_file(tmp_path, n=40)
    records = infer_jsonl(capsys, export_dir, path, str(tmp_path / "out.jsonl"))
    app = create_app(ServiceConfig(export_dir, device="cpu", num_threads=2, instances=2, max_batch_size=8))
    with ready_client(app) as test_client:
        result = test_client.post("/predict", json={"texts": texts}).json()["predictions"]
        batches = [line for line in test_client.get("/metrics").text.splitlines()
                   if line.startswith("ptuning_batch_size_count ")]
    assert [r["label"] for r in result] == [r["label"] for r in records]
    np.testing.assert_allclose([r["confidence"] for r in result], [r["confidence"] for r in records], atol=2e-6)
    assert float(batches[0].split()[1]) >= 5  # 40 texts, at most 8 a batch


def test_predict_endpoint_and_the_read_only_endpoints(client):
    labels = client.get("/labels").json()
    version = labels.pop("model_version")  # the export's (see test_registry.py)
    assert version.startswith("cls_default-") and len(version) == len("cls_default-") + 12
    assert labels == {"model": "cls_default", "labels": ["apple", "banana", "grape"], "pair": False,
                      "task_type": "multi-class", "thresholds": None, "temperature": 1.0, "reject_threshold": None,
                      "other_label": "other"}
    body = client.post("/predict", json={"texts": ["我爱吃苹果", "香蕉"], "top_k": 3}).json()
    assert [len(p["top_k"]) for p in body["predictions"]] == [3, 3]
    for prediction in body["predictions"]:
        assert prediction["top_k"][0] == {"label": prediction["label"], "confidence": prediction["confidence"]}
        assert sorted(t["label"] for t in prediction["top_k"]) == labels["labels"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    for name in ("ptuning_requests_total", "ptuning_request_errors_total", "ptuning_request_seconds_bucket",
                 "ptuning_batch_size_bucket", "ptuning_queue_texts", "ptuning_texts_total"):
        assert name in metrics, name
    busy = [line for line in metrics.splitlines() if line.startswith("ptuning_model_seconds_total ")]
    assert busy and float(busy[0].split()[1]) > 0  # the worker's busy time: it ran two batches
    assert "openapi" in client.get("/openapi.json").json()


def test_every_response_is_counted_by_route_and_status_and_names_its_replica(export_dir):
    """The metrics middleware: answers, 4xx and unknown paths are counted under the route's template
    ("other" when none matched), each with its latency, and every response, error or not, carries
    X-Served-By when the app serves a replica (Ray Serve)."""
    from fastapi.testclient import TestClient

    app = create_app(ServiceConfig(export_dir, num_threads=1), served_by="node-a/4242")
    with TestClient(app) as client:
        responses = [client.get("/health"), client.get("/nowhere"), client.post("/models/unknown", json={}),
                     client.post("/predict", content=b"{not json")]
        assert [r.status_code for r in responses] == [200, 404, 404, 400]
        assert all(r.headers["x-served-by"] == "node-a/4242" for r in responses)
        metrics = client.get("/metrics").text
    for line in ('ptuning_requests_total{endpoint="/health",status="200"} 1.0',
                 'ptuning_requests_total{endpoint="other",status="404"} 1.0',
                 'ptuning_request_errors_total{endpoint="/models/{name}",status="404"} 1.0',
                 'ptuning_request_errors_total{endpoint="/predict",status="400"} 1.0',
                 'ptuning_request_seconds_count{endpoint="/predict"} 1.0'):
        assert line in metrics, line
    assert "x-served-by" not in {k.lower() for k in TestClient(create_app(ServiceConfig(export_dir))).get(
        "/health").headers}


BAD_REQUESTS = [
    ("/predict", b"{not json", 400, "body"),
    ("/predict", [1, 2], 422, "body"),
    ("/predict", {}, 422, "texts"),
    ("/predict", {"texts": "one text"}, 422, "texts"),
    ("/predict", {"texts": []}, 422, "texts"),
    ("/predict", {"texts": ["ok", 7]}, 422, "texts[1]"),
    ("/predict", {"texts": ["ok", "   "]}, 422, "texts[1]"),
    ("/predict", {"texts": [["a", "b"]]}, 422, "texts[0]"),
    ("/predict", {"texts": ["x"] * 51}, 413, "texts"),
    ("/predict", {"texts": ["长" * 201]}, 413, "texts[0]"),
    ("/predict", {"texts": ["ok"], "top_k": 0}, 422, "top_k"),
    ("/predict", {"texts": ["ok"], "topk": 2}, 422, "topk"),
    ("/models/cls_default", {"text": ["ok"]}, 422, "data.text"),
    ("/models/cls_default", {"data": ["ok"]}, 422, "data"),
    ("/models/cls_default", {"data": {"text": ["ok"], "text_pair": ["a", "b"]}}, 422, "data.text_pair"),
    ("/models/cls_default", {"data": {"text": ["ok"]}, "parameters": {"max_seq_len": "long"}}, 422,
     "parameters.max_seq_len"),
    ("/models/cls_default", {"data": {"text": ["ok"]}, "parameters": {"max_seq_len": 3}}, 422,
     "parameters.max_seq_len"),
    ("/models/cls_default", {"data": {"text": ["ok"]}, "parameters": {"prob_limit": 2}}, 422, "parameters.prob_limit"),
    ("/models/cls_default", {"data": {"text": ["ok"]}, "parameters": {"batch_size": -1}}, 422, "parameters.batch_size"),
    ("/models/other_model", {"data": {"text": ["ok"]}}, 404, "name"),
    ("/no/such/endpoint", {}, 404, "path"),
]


@pytest.mark.parametrize("path, body, status, field", BAD_REQUESTS, ids=[f"{b!r}"[:50] for _, b, _, _ in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_naming_the_field(path, body, status, field, client):
    assert_error_names(post_raw_or_json(client, path, body), status, field)
    assert client.post("/predict", json={"texts": ["苹果"]}).status_code == 200  # and the service goes on


@pytest.mark.parametrize("content_type", ["application/json", None, "text/plain"])
@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"texts": ["\xff\xfe"]}', b'{"texts": ["a"'],
                         ids=["nested too deep", "not UTF-8", "cut short"])
def test_a_body_that_is_no_json_is_400_with_any_content_type(body, content_type, client):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "body" and "Traceback" not in response.text


def run_requests(batcher, requests):
    async def go():
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([{"text_a": str(t)} for t in r]) for r in requests),
                                       return_exceptions=True)
        await batcher.close()
        return results

    return asyncio.run(go())


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows():
    model = FakeModel()
    requests = [[1, 2], [3], [4, 5, 6], [7], [8, 9, 10, 11]]
    results = run_requests(Batcher(model, max_batch_size=32, max_wait_ms=200, max_queue=100), requests)
    assert model.batches == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]  # one run for all five requests
    for texts, probs in zip(requests, results):
        assert probs.shape == (len(texts), 3) and list(probs.argmax(1)) == [t % 3 for t in texts]


def test_batches_are_bounded_and_a_large_request_spans_several_in_order():
    model = FakeModel()
    results = run_requests(Batcher(model, max_batch_size=4, max_wait_ms=50, max_queue=100), [list(range(10)), [10]])
    assert [len(b) for b in model.batches] == [4, 4, 3] and sum(model.batches, []) == list(range(11))
    assert list(results[0].argmax(1)) == [t % 3 for t in range(10)] and list(results[1].argmax(1)) == [1]


def test_a_request_that_breaks_the_model_fails_alone():
    model = FakeModel(fail_on=13)
    results = run_requests(Batcher(model, max_batch_size=32, max_wait_ms=100, max_queue=100), [[1, 2], [13], [4]])
    assert isinstance(results[1], RuntimeError)
    assert list(results[0].argmax(1)) == [1, 2] and list(results[2].argmax(1)) == [1]


def test_a_full_queue_answers_503_with_retry_after_instead_of_growing():
    model = FakeModel(delay=0.3)
    results = run_requests(Batcher(model, max_batch_size=2, max_wait_ms=0, max_queue=4),
                           [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    refused = [r for r in results if isinstance(r, RequestError)]
    assert refused and all(r.status == 503 and r.headers == {"Retry-After": "1"} for r in refused)
    served = [r for r in results if not isinstance(r, Exception)]
    assert len(served) + len(refused) == 5 and len(served) >= 2


def test_the_event_loop_answers_while_the_model_works(export_dir):
    """/health is answered while a batch is held in the model: the model runs in a worker thread (a
    run on the event loop's thread fails the request instead of blocking the loop)."""
    import threading
    from fastapi.testclient import TestClient

    model = HeldModel()
    app = create_app(ServiceConfig(export_dir, max_wait_ms=0), classifier=FakeClassifier(model))
    with TestClient(app) as client:
        answers = []
        slow = threading.Thread(target=lambda: answers.append(client.post("/predict", json={"texts": ["1"]})))
        slow.start()
        assert model.started.wait(60)  # (a guard against a hang, not a time limit)
        assert client.get("/health").status_code == 200  # while the run waits for the test
        model.release.set()
        slow.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["predictions"][0]["label"] == "b"


def test_a_full_queue_is_503_with_retry_after_over_http(export_dir):
    """Over HTTP: the model held on its first text and --max_queue 2 texts waiting (/metrics' queue
    depth says so), one more request, on either endpoint, gets 503 + Retry-After: 1 naming the
    service; the requests already in are answered once the model goes on."""
    import threading
    from fastapi.testclient import TestClient

    model = HeldModel()
    app = create_app(ServiceConfig(export_dir, max_batch_size=1, max_queue=2, max_wait_ms=0),
                     classifier=FakeClassifier(model))
    answers, threads = {}, []
    with TestClient(app) as client:
        def post(text):
            answers[text] = client.post("/predict", json={"texts": [text]})

        for text in ("1", "2", "3"):
            threads.append(threading.Thread(target=post, args=(text,)))
            threads[-1].start()
            if text == "1":
                assert model.started.wait(60)  # "1" runs (held); "2" and "3" then wait in the queue
        until(lambda: metric(client, "ptuning_queue_texts") == 2, "2 texts queued")
        refused = [client.post("/predict", json={"texts": ["4"]}),
                   client.post("/models/cls_default", json={"data": {"text": ["5"]}})]
        model.release.set()
        for thread in threads:
            thread.join()
    for response in refused:
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        error = response.json()["error"]
        assert error["field"] == "service" and "the queue is full (2 texts waiting, limit 2)" in error["message"]
    assert {text: r.status_code for text, r in answers.items()} == {"1": 200, "2": 200, "3": 200}
    assert [answers[t].json()["predictions"][0]["label"] for t in "123"] == ["b", "c", "a"]


def test_ready_is_503_while_the_model_loads_and_health_is_503_once_the_load_failed(export_dir, monkeypatch):
    """create_app without a loaded classifier (in an ASGI server of one's own) loads it in a thread:
    while the load is held, /ready and requests get 503 + Retry-After and /health is 200; once
    loaded, ready. A load that fails: /health, /ready and requests answer 503 with the error
    (infer.py's paragraph), so no orchestrator keeps a process that can never serve."""
    import threading

    import utils.deploy.classifier
    from fastapi.testclient import TestClient
    from utils.errors import UserError

    loading, failure = threading.Event(), []

    def held_load(export, **options):
        loading.wait()
        if failure:
            raise failure[0]
        return FakeClassifier(FakeModel())

    monkeypatch.setattr(utils.deploy.classifier, "Classifier", held_load)
    with TestClient(create_app(ServiceConfig(export_dir))) as client:
        ready, predict = client.get("/ready"), client.post("/predict", json={"texts": ["1"]})
        assert client.get("/health").status_code == 200  # alive while it loads
        for response in (ready, predict):
            assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        loading.set()
        until(lambda: client.get("/ready").status_code == 200, "ready once the load is let go of")
        assert client.post("/predict", json={"texts": ["1"]}).json()["predictions"][0]["label"] == "b"

    failure.append(UserError("sha256 differs from manifest.json (modified or corrupt); export again", "E/model.onnx"))
    with TestClient(create_app(ServiceConfig(export_dir))) as client:
        until(lambda: "loading" not in client.get("/ready").text, "the load, let go of already, has ended")
        expected = "the model could not be loaded: E/model.onnx: sha256 differs from manifest.json"
        for response in (client.get("/health"), client.get("/ready"), client.post("/predict", json={"texts": ["1"]})):
            assert response.status_code == 503 and response.json()["error"]["message"].startswith(expected)


def test_draining_answers_503_to_ready_and_new_requests_and_still_answers_the_queued_ones(export_dir):
    """The app's shutdown (serve.py: after uvicorn has closed the port and in-flight requests are
    done; Ray: a replica being stopped): /ready and new requests get 503 + Retry-After, while the
    requests already in the batcher (one held in the model, one queued) are answered."""
    import httpx

    model = HeldModel()
    app = create_app(ServiceConfig(export_dir, max_batch_size=1, max_wait_ms=0), classifier=FakeClassifier(model))

    async def go():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        batcher = app.state.service.batcher
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            running = asyncio.create_task(client.post("/predict", json={"texts": ["1"]}))
            await asyncio.get_running_loop().run_in_executor(None, model.started.wait)
            queued = asyncio.create_task(client.post("/predict", json={"texts": ["2"]}))
            while batcher.queued != 1:
                await asyncio.sleep(0)
            draining = asyncio.create_task(lifespan.__aexit__(None, None, None))
            while not batcher.closing:
                await asyncio.sleep(0)
            ready, late = await client.get("/ready"), await client.post("/predict", json={"texts": ["3"]})
            model.release.set()
            await draining
            return ready, late, await running, await queued

    ready, late, running, queued = asyncio.run(go())
    for response in (ready, late):
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    assert "shutting down" in ready.json()["error"]["message"] and "shutting down" in late.json()["error"]["message"]
    assert [r.status_code for r in (running, queued)] == [200, 200]
    assert [r.json()["predictions"][0]["label"] for r in (running, queued)] == ["b", "c"]


def test_texts_longer_than_max_seq_len_are_cut_as_infer_cuts_them(client, export_dir, tmp_path, capsys):
    """Texts of 63-123 characters, longer than the export's 40 tokens: /predict answers them as
    infer.py does (cut to the exported length), SimpleServing's parameters.max_seq_len 24 as
    infer.py --max_seq_length 24 (whose answers differ: the cut matters)."""
    import random

    from utils.testing.synthetic import make_split

    texts = [line.split("\t")[0] for line in make_split(random.Random(7), 8, min_len=30, max_len=60)]
    assert min(map(len, texts)) > 40
    path = tmp_path / "long.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    at_40 = infer_jsonl(capsys, export_dir, str(path), str(tmp_path / "40.jsonl"), "--top_k", "3")
    at_24 = infer_jsonl(capsys, export_dir, str(path), str(tmp_path / "24.jsonl"), "--top_k", "3",
                        "--max_seq_length", "24")
    assert not np.allclose([r["confidence"] for r in at_40], [r["confidence"] for r in at_24], atol=1e-3)
    exported = client.post("/predict", json={"texts": texts, "top_k": 3})
    shorter = client.post("/models/cls_default", json={"data": {"text": texts},
                                                       "parameters": {"max_seq_len": 24, "top_k": 3}})
    for response, records in ((exported.json()["predictions"], at_40), (shorter.json()["result"], at_24)):
        assert [r["label"] for r in response] == [r["label"] for r in records]
        for answer, record in zip(response, records):
            assert [t["label"] for t in answer["top_k"]] == [t["label"] for t in record["top_k"]]
            np.testing.assert_allclose([t["confidence"] for t in answer["top_k"]],
                                       [t["confidence"] for t in record["top_k"]], atol=2e-6)


def metric(url_or_client, name):
    """The value of an unlabelled metric in /metrics (over HTTP, or through a TestClient)."""
    import httpx

    if isinstance(url_or_client, str):
        return metric_value(httpx.get(url_or_client + "/metrics", timeout=60).text, name)
    return metric_value(url_or_client.get("/metrics").text, name)


HANG_GUARD = 300  # seconds after which a test's serve.py is killed: a hang fails the test instead of stalling it
HELD = os.path.join(ROOT, "tests", "serving", "service_fakes.py")  # serve.py whose model waits for a line on stdin


@contextlib.contextmanager
def serving(export_dir, cwd, *flags, script=os.path.join(ROOT, "serve.py")):
    """serve.py in its own process on a port it picks (--port 0), yielded once it listens (its JSON
    line on stdout says where); killed if still running after, or after HANG_GUARD seconds.
    `export_dir` None: the models are in `flags` (--model NAME=DIR)."""
    import threading

    export = ["--model_path_prefix", export_dir] if export_dir is not None else []
    server = subprocess.Popen([sys.executable, script, *export, "--port", "0",
                               "--num_threads", "1", *flags], cwd=str(cwd), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(HANG_GUARD, server.kill)
    guard.start()
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()  # it ended before listening: its error
        ready = json.loads(line)
        yield server, ready["port"], ready["url"]
    finally:
        guard.cancel()
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("instances, signum", [("1", signal.SIGTERM), ("2", signal.SIGTERM), ("auto", signal.SIGTERM),
                                               ("1", signal.SIGINT)],
                         ids=["SIGTERM", "SIGTERM, 2 instances", "SIGTERM, instances auto", "Ctrl-C"])
def test_a_stop_signal_closes_the_port_and_answers_every_request_in_flight_then_exits_0(export_dir, tmp_path,
                                                                                        instances, signum):
    """serve.py with a model the test holds: 12 requests of 4 texts are in the service (one run
    held per instance, the rest queued: /metrics' queue depth says when all are in). On
    SIGTERM or Ctrl-C the port refuses new connections at once, yet every request in flight is
    answered when the model goes on, and serve.py exits 0."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    workers = 1 if instances == "1" else 2  # auto on 2 threads: a run on every thread, then one beside it on half
    with serving(export_dir, tmp_path, "--num_threads", str(workers), "--instances", instances, "--max_batch_size", "4",
                 "--max_wait_ms", "0", script=HELD) as (server, port, url):
        requests = [[str(4 * i + j) for j in range(4)] for i in range(12)]
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(httpx.post, url + "/predict", json={"texts": texts}, timeout=HANG_GUARD)
                       for texts in requests]
            running = sum(int(server.stdout.readline().split()[1]) for _ in range(workers))  # held runs
            until(lambda: metric(url, "ptuning_queue_texts") == 48 - running,  # the others, behind the held runs
                  "every request in the service")
            if instances == "auto":  # serve.py gave the batcher its split path: the second held run is on it
                lines = httpx.get(url + "/metrics", timeout=HANG_GUARD).text.splitlines()
                paths = [sum(float(line.split()[1]) for line in lines
                             if line.startswith(f'ptuning_batch_paths_total{{path="{p}"}} ')) for p in ("full", "split")]
                assert sum(paths) == 2 and paths[1] >= 1, paths
            server.send_signal(signum)
            for line in server.stderr:  # uvicorn says this once it has closed the port
                if "Waiting for connections to close" in line:
                    break
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD).close()
            server.stdin.write("go on\n")
            server.stdin.flush()
            responses = [future.result() for future in futures]
        assert [r.status_code for r in responses] == [200] * 12
        assert [[p["label"] for p in r.json()["predictions"]] for r in responses] == [
            ["abc"[int(t) % 3] for t in texts] for texts in requests]
        assert server.wait(timeout=HANG_GUARD) == 0


def test_a_body_larger_than_any_valid_request_is_413_and_the_largest_valid_one_passes(client):
    config = ServiceConfig("the client fixture's limits", max_texts_per_request=50, max_chars_per_text=200)
    headers = {"content-type": "application/json"}
    largest = json.dumps({"texts": ["😀" * 200] * 50}).encode()  # 12 bytes a character, JSON-escaped
    assert len(largest) < config.max_body_bytes  # (pairs may be as long again)
    assert client.post("/predict", content=largest, headers=headers).status_code == 200
    over = b'{"texts": [' + b'"x",' * (config.max_body_bytes // 4) + b'"x"]}'
    for content in (over, iter([over])):  # with Content-Length, then chunked (no length)
        response = client.post("/predict", content=content, headers=headers)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["field"] == "body" and "--max_chars_per_text" in error["message"]
    assert 'ptuning_request_errors_total{endpoint="other",status="413"} 2.0' in client.get("/metrics").text
    assert client.post("/predict", json={"texts": ["苹果"]}).status_code == 200


def test_a_chunked_body_is_read_only_up_to_the_limit():
    from utils.serving.middleware import BodyLimit

    def endless(reads):
        async def receive():
            reads.append(1)
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}
        return receive

    async def call(limit, receive):
        seen, sent = [], []

        async def app(scope, receive, send):
            seen.append(await receive())

        async def send(message):
            sent.append(message)

        await BodyLimit(app, limit)({"type": "http", "headers": []}, receive, send)
        return seen, sent

    reads = []
    seen, sent = asyncio.run(call(10_500, endless(reads)))
    assert not seen and len(reads) == 11 and sent[0]["status"] == 413  # stopped at the 11th kB

    parts = iter([b'{"texts": ', b'["a"]', b"}"])

    async def chunked():
        body = next(parts)
        return {"type": "http.request", "body": body, "more_body": body != b"}"}

    seen, sent = asyncio.run(call(10_500, chunked))
    assert seen == [{"type": "http.request", "body": b'{"texts": ["a"]}', "more_body": False}] and not sent


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_client_announcing_a_huge_body_gets_413_before_sending_it(http, export_dir, tmp_path):
    import httpx

    with serving(export_dir, tmp_path, "--http", http) as (_, port, url):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n")  # a terabyte announced, none sent
            answer = b""
            while chunk := sock.recv(65536):  # the service answers and closes
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer
        assert json.loads(body)["error"]["field"] == "body"
        assert httpx.post(url + "/predict", json={"texts": ["苹果"]}, timeout=20).status_code == 200


def test_serve_refuses_a_missing_export_and_a_busy_port(tmp_path, export_dir, capsys):
    import serve

    assert run_cli(serve.main, ["--model_path_prefix", str(tmp_path / "nothing")]) == 2
    assert "not an export directory" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli(serve.main, ["--model_path_prefix", export_dir, "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert run_cli(serve.main, ["--model_path_prefix", export_dir, "--max_batch_size", "0"]) == 2
    assert "--max_batch_size" in capsys.readouterr().err


def flip_model_bytes(export, monkeypatch):
    flip_byte(os.path.join(export, "model.onnx"), mask=0xFF)  # same size, other bytes


def truncate_model(export, monkeypatch):
    with open(os.path.join(export, "model.onnx"), "r+b") as fp:
        fp.truncate(1000)


def edit_labels(export, monkeypatch):  # two label names swapped by hand: valid, same size, not what was exported
    path = os.path.join(export, "labels.json")
    with open(path, encoding="utf-8") as fp:
        text = fp.read()
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(text.replace('"apple"', '"@@@@@"').replace('"grape"', '"apple"').replace('"@@@@@"', '"grape"'))


def duplicate_labels_resigned(export, monkeypatch):  # edited and re-signed in the manifest: its content is refused
    from conftest import resign

    path = os.path.join(export, "labels.json")
    with open(path, encoding="utf-8") as fp:
        labels = json.load(fp)
    labels[1]["label"] = labels[0]["label"]
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(labels, fp)
    resign(export, "labels.json")


def edit_manifest(key, value):
    def edit(export, monkeypatch):
        path = os.path.join(export, "manifest.json")
        with open(path, encoding="utf-8") as fp:
            manifest = json.load(fp)
        manifest[key] = value
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(manifest, fp)
    return edit


def remove(name):
    return lambda export, monkeypatch: os.remove(os.path.join(export, name))


def unreadable_model(export, monkeypatch):  # (the tests may run as root, whom chmod does not stop)
    import errno

    import utils.deploy.bundle

    real = utils.deploy.bundle.sha256_file

    def sha256_file(path):
        if path.endswith("model.onnx"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(utils.deploy.bundle, "sha256_file", sha256_file)


def cpu_only_onnxruntime():
    import onnxruntime

    return "CUDAExecutionProvider" not in onnxruntime.get_available_providers()


UNUSABLE = [
    pytest.param(flip_model_bytes, [], id="damaged model"),
    pytest.param(truncate_model, [], id="truncated model"),
    pytest.param(remove("model.onnx"), [], id="missing model"),
    pytest.param(unreadable_model, [], id="unreadable model"),
    pytest.param(edit_labels, [], id="edited labels"),
    pytest.param(duplicate_labels_resigned, [], id="re-signed bad labels"),
    pytest.param(remove("vocab.txt"), [], id="missing vocab"),
    pytest.param(remove("preprocess.json"), [], id="missing preprocess.json"),
    pytest.param(edit_manifest("max_seq_length", "long"), [], id="manifest max_seq_length edited"),
    pytest.param(edit_manifest("onnx", {"fp32": "../model.onnx"}), [], id="manifest model path edited"),
    pytest.param(None, ["--use_int8"], id="no int8 model"),
    pytest.param(None, ["--max_seq_length", "100000"], id="max_seq_length too long"),
    pytest.param(None, ["--max_seq_length", "-5"], id="max_seq_length negative"),
    pytest.param(None, ["--max_seq_length", "4"], id="too short for the prompt"),
    pytest.param(None, ["--num_threads", "0"], id="num_threads 0"),
    pytest.param(None, ["--device", "gpu"], id="gpu without CUDA", marks=pytest.mark.skipif(
        not cpu_only_onnxruntime(), reason="this onnxruntime has CUDA: --device gpu is usable")),
]


@pytest.mark.parametrize("damage, flags", UNUSABLE)
def test_an_export_or_flag_infer_refuses_ends_serve_with_its_error_before_it_listens(
        damage, flags, export_dir, tmp_path, capsys, monkeypatch):
    """Every way an export can be unusable (damaged, truncated, missing or unreadable files, edited
    labels or manifest, a missing variant, impossible flags, a device that is not there): serve.py
    exits 2 with infer.py's error paragraph for the same export and flags, and uvicorn never starts
    (the port never listens): no process that answers /health but can never serve."""
    import shutil

    import uvicorn

    import infer
    import serve

    export = str(tmp_path / "export")
    shutil.copytree(export_dir, export)
    if damage is not None:
        damage(export, monkeypatch)
    (tmp_path / "texts.txt").write_text("苹果\n", encoding="utf-8")
    assert run_cli(infer.main, ["--model_path_prefix", export, "--input_file", str(tmp_path / "texts.txt"),
                                "--output_file", str(tmp_path / "out.tsv"), *flags]) == 2
    infer_error = capsys.readouterr().err.splitlines()[0]
    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: served.append("uvicorn"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append("uvicorn"))
    assert run_cli(serve.main, ["--model_path_prefix", export, "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert served == [] and "Traceback" not in err
    assert err.splitlines()[0] == infer_error and infer_error.startswith("error: ")


def test_serve_names_the_flag_that_is_wrong(export_dir, capsys):
    """--num_threads 0 is --num_threads's mistake (it was reported as --instances'), in infer.py's words."""
    import serve

    for flags, error in ((["--num_threads", "0"], "error: --num_threads: must be positive, got 0"),
                         (["--num_threads", "0", "--instances", "2"], "error: --num_threads: must be positive, got 0"),
                         (["--max_seq_length", "0"], "error: --max_seq_length: must be positive, got 0"),
                         (["--port", "70000"], "error: --port: must be in 0..65535 (0: any free port), got 70000")):
        assert run_cli(serve.main, ["--model_path_prefix", export_dir, *flags]) == 2
        assert capsys.readouterr().err.splitlines()[0] == error


def test_serve_refuses_an_http_stack_it_cannot_use(export_dir, monkeypatch, capsys):
    """--loop/--http: a named module that is not installed, or any choice with --ray (Ray Serve's
    proxies serve HTTP there), is an error naming the flag, before anything starts."""
    import importlib.util

    import serve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert run_cli(serve.main, ["--model_path_prefix", export_dir, "--loop", "uvloop"]) == 2
    assert "error: --loop: uvloop is not installed" in capsys.readouterr().err
    assert run_cli(serve.main, ["--model_path_prefix", export_dir, "--http", "h11", "--ray", "auto"]) == 2
    assert "error: --http: is for serve.py's own uvicorn" in capsys.readouterr().err


def test_client_py_sends_simpleserving_requests(client, monkeypatch, capsys):
    """client.py's body through the app (its HTTP call replaced by the test client)."""
    import client as client_cli

    def post(url, body, timeout):
        response = client.post("/models/cls_default", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    monkeypatch.setattr(client_cli, "post", post)
    assert run_cli(client_cli.main, ["--text", "我爱吃苹果", "--text", "香蕉", "--top_k", "2", "--batch_size", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["我爱吃苹果", "香蕉"] and all(len(line["top_k"]) == 2 for line in lines)


def test_a_lone_request_does_not_wait_for_company():
    """max_wait_ms is for sharing batches: with no other request in the service, a request runs at
    once (the wait here is far longer than the check allows; the fake model is instant)."""
    model = FakeModel()

    async def go():
        batcher = Batcher(model, max_batch_size=32, max_wait_ms=60_000, max_queue=100)
        batcher.start()
        for text in (1, 2):  # one client, one request after the other
            await asyncio.wait_for(batcher.submit([{"text_a": str(text)}]), timeout=30)
        await batcher.close()

    asyncio.run(go())
    assert model.batches == [[1], [2]]


def closed_loop(batcher, clients, rounds, stagger_s=0.0, think_s=0.0):
    """`clients` coroutines, each submitting one text, awaiting its answer, `think_s`, and again."""
    async def client(index):
        await asyncio.sleep(index * stagger_s)
        for _ in range(rounds):
            probs = await asyncio.wait_for(batcher.submit([{"text_a": str(index)}]), timeout=30)
            assert list(probs.argmax(1)) == [index % 3]
            await asyncio.sleep(think_s)

    async def go():
        batcher.start()
        await asyncio.gather(*(client(i) for i in range(clients)))
        await batcher.close()

    asyncio.run(go())


def test_closed_loop_clients_are_not_split_into_half_batches_for_good():
    """Texts that queued while a batch ran wait (up to max_wait_ms) for the clients just answered:
    counted from their own arrival, they would leave at once and the clients would alternate in two
    half batches forever (what 32 clients did to int8 ERNIE-base: 16.5 texts a run)."""
    model = FakeModel(delay=0.05)
    # 8 clients starting 15 ms apart: the first batch (after 40 ms) holds only some of them.
    closed_loop(Batcher(model, max_batch_size=8, max_wait_ms=40, max_queue=100), clients=8, rounds=8,
                stagger_s=0.015, think_s=0.001)
    sizes = [len(batch) for batch in model.batches]
    assert sizes[0] < 8  # split at first, as before
    assert sizes.count(8) >= 4, sizes  # then the clients share full batches (split for good: none)


def test_a_batch_waits_for_no_one_once_every_client_of_the_last_round_is_back():
    """With 3 clients in the service, a batch starts as soon as all 3 have queued: max_wait_ms (a
    minute here) only bounds the wait for clients that do not come back."""
    model = FakeModel(delay=0.01)
    started = time.monotonic()
    closed_loop(Batcher(model, max_batch_size=32, max_wait_ms=60_000, max_queue=100), clients=3, rounds=5)
    assert time.monotonic() - started < 50  # a batch that waited for its max_wait_ms would take 60 s
    assert [len(batch) for batch in model.batches] == [3] * 5


def test_length_runs_cut_a_sorted_batch_where_padding_costs_more_than_a_run():
    import itertools
    import random

    from utils.serving.batcher import length_runs

    def cost(lengths, runs, run_cost):
        return sum((r.stop - r.start) * lengths[r.stop - 1] + run_cost for r in runs)

    assert length_runs([]) == []
    assert length_runs([30] * 8) == [slice(0, 8)]  # nothing to gain from cutting
    assert length_runs([10, 10, 50, 50], run_cost=16) == [slice(0, 2), slice(2, 4)]
    assert length_runs([10, 10, 50, 50], run_cost=1000) == [slice(0, 4)]
    rng = random.Random(0)
    for _ in range(200):  # against every way of cutting
        lengths = sorted(rng.randint(5, 60) for _ in range(rng.randint(1, 9)))
        run_cost = rng.choice([0, 8, 16, 64])
        runs = length_runs(lengths, run_cost)
        assert [r.start for r in runs][0] == 0 and runs[-1].stop == len(lengths)
        assert all(a.stop == b.start for a, b in zip(runs, runs[1:]))
        best = min(cost(lengths, [slice(a, b) for a, b in zip((0,) + cuts, cuts + (len(lengths),))], run_cost)
                   for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k))
        assert cost(lengths, runs, run_cost) == best


def test_a_batch_split_by_length_still_answers_every_request_in_order():
    """On CPU a batch runs as length_runs(): several model runs, each request still gets its rows."""
    model = FakeModel(length=lambda text: 5 if text % 2 else 60)  # odd texts short, even texts long
    requests = [[1, 2, 3], [4], [5, 6, 7, 8]]
    results = run_requests(Batcher(model, max_batch_size=32, max_wait_ms=50, max_queue=100, split_by_length=True),
                           requests)
    for texts, probs in zip(requests, results):
        assert list(np.argmax(probs, axis=1)) == [t % 3 for t in texts]
    assert sorted(len(b) for b in model.batches) == [4, 4]  # the short ones, then the long ones
    assert all(len({t % 2 for t in batch}) == 1 for batch in model.batches)


class ConcurrencyProbe(FakeModel):
    """A FakeModel that records the most runs in progress at once."""

    def __init__(self, delay):
        import threading

        super().__init__(delay=delay)
        self.lock, self.active, self.most = threading.Lock(), 0, 0

    def run(self, features, batch_size=32):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            return super().run(features, batch_size)
        finally:
            with self.lock:
                self.active -= 1


def test_several_instances_run_batches_side_by_side_and_each_request_gets_its_own_rows():
    """--instances 2: two workers take their own batches from the one queue and run at once on the
    one model; every request still gets its own rows, and the queue drains on close."""
    model = ConcurrencyProbe(delay=0.05)
    requests = [[i, i + 100] for i in range(0, 40, 2)]
    results = run_requests(Batcher(model, max_batch_size=4, max_wait_ms=0, max_queue=100, workers=2), requests)
    for texts, probs in zip(requests, results):
        assert list(np.argmax(probs, axis=1)) == [t % 3 for t in texts]
    assert model.most == 2  # side by side, never more than the instances
    assert sorted(t for batch in model.batches for t in batch) == sorted(t for r in requests for t in r)


def test_idle_instances_share_the_queue_instead_of_one_taking_it_all():
    """32 texts queued while both workers are idle: each takes half, and both run at once."""
    model = ConcurrencyProbe(delay=0.05)
    run_requests(Batcher(model, max_batch_size=32, max_wait_ms=0, max_queue=100, workers=2), [[i] for i in range(32)])
    assert sorted(map(len, model.batches)) == [16, 16] and model.most == 2


def test_a_large_request_is_shared_by_idle_instances_and_answered_in_order():
    model = ConcurrencyProbe(delay=0.05)
    [probs] = run_requests(Batcher(model, max_batch_size=32, max_wait_ms=0, max_queue=100, workers=2),
                           [list(range(10))])
    assert sorted(model.batches) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and model.most == 2
    assert list(probs.argmax(1)) == [t % 3 for t in range(10)]


def test_closed_loop_clients_keep_every_instance_busy():
    """Clients that send again as soon as they are answered: the worker that answered them waits for
    its share only, so the other keeps its half (before: the first worker to wake took all 8 clients
    every time and the second never ran)."""
    model = ConcurrencyProbe(delay=0.02)
    batcher = Batcher(model, max_batch_size=32, max_wait_ms=50, max_queue=100, workers=2)

    async def go():
        batcher.start()

        async def client(i):
            for _ in range(10):
                await batcher.submit([{"text_a": str(i)}])

        await asyncio.gather(*(client(i) for i in range(8)))
        await batcher.close()

    asyncio.run(go())
    assert model.most == 2 and sum(map(len, model.batches)) == 80
    assert max(map(len, model.batches)) < 8  # never one worker with every client


def test_one_instance_never_runs_two_batches_at_once():
    model = ConcurrencyProbe(delay=0.02)
    run_requests(Batcher(model, max_batch_size=2, max_wait_ms=0, max_queue=100), [[i] for i in range(10)])
    assert model.most == 1


def test_instances_split_the_cpu_threads_and_cannot_outnumber_them():
    from utils.errors import UserError

    assert ServiceConfig("x", num_threads=4, instances=2).model_threads("cpu") == 2
    assert ServiceConfig("x", num_threads=3, instances=2).model_threads("cpu") == 1
    assert ServiceConfig("x", num_threads=4).model_threads("cpu") == 4
    assert ServiceConfig("x", device="gpu", num_threads=None, instances=2).model_threads("gpu") is None
    with pytest.raises(UserError, match="instances"):
        ServiceConfig("x", device="cpu", num_threads=1, instances=2)
    with pytest.raises(UserError, match="instances"):
        ServiceConfig("x", instances=0)
    with pytest.raises(UserError, match="at most 64"):  # not a million threads on a GPU either
        ServiceConfig("x", device="gpu", instances=10 ** 6)


@pytest.mark.parametrize("found,refused", [("cpu", True), ("gpu", False)])
def test_an_unset_device_is_judged_as_the_one_the_service_will_use(monkeypatch, found, refused):
    """Without --device the service runs where infer.py would (CUDA if onnxruntime offers it): more
    instances than CPU threads is refused only when that is the CPU, and the model gets that device."""
    import utils.deploy.classifier
    from utils.errors import UserError

    monkeypatch.setattr(utils.deploy.classifier, "default_device", lambda: found)
    if refused:
        with pytest.raises(UserError, match="instances"):
            ServiceConfig("x", num_threads=1, instances=2)
    else:
        options = ServiceConfig("x", num_threads=1, instances=2).classifier_options()
        assert (options["device"], options["num_threads"]) == ("gpu", 1)
