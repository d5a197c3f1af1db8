"""Several models in one service and their zero-downtime swaps (utils/serving/registry.py): routing
by name, versions in answers and metrics, a swap while requests are held in the old model, a
damaged or tampered export, a swap while another loads, another label set, the watcher. Every
state is held by the test (Events the fake models and loads wait on), never by timing."""
import os
import shutil
import threading

import pytest

from conftest import until
from helpers import flip_byte, run_in_a_thread
from service_fakes import FakeClassifier, FakeModel, HeldModel
from utils.serving.app import Service, ServiceConfig

ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture
def admin_file(tmp_path):
    path = tmp_path / "admin_keys.txt"
    path.write_text(ADMIN_KEY + "\n", encoding="utf-8")
    return str(path)


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def loads(monkeypatch):
    """What the service loads for each export path: {path: a function returning a classifier}."""
    import utils.deploy.classifier

    table = {}

    def load(path, **options):
        return table[path]()

    monkeypatch.setattr(utils.deploy.classifier, "Classifier", load)
    return table


def fake(path, **kwargs):
    return lambda: FakeClassifier(FakeModel(**kwargs), export_dir=path)


def client_for(config, **classifiers):
    from fastapi.testclient import TestClient

    return TestClient(Service(config, classifiers=classifiers or None).asgi())


def labels_of(response):
    return [p["label"] for p in response.json()["predictions"]]


def test_two_models_are_routed_by_name_with_their_versions_labels_readiness_and_metrics(admin_file):
    config = ServiceConfig(models={"news": "exports/news", "intent": "exports/intent"}, admin_key_file=admin_file)
    news = FakeClassifier(FakeModel(tag="news-1"))
    intent = FakeClassifier(FakeModel(tag="intent-1", shift=1, labels=("x", "y", "z")))
    with client_for(config, news=news, intent=intent) as client:
        by_name = client.post("/predict", json={"texts": ["1", "2"], "model": "intent"}).json()
        assert by_name["model"] == "intent" and by_name["model_version"].startswith("intent-")
        assert [p["label"] for p in by_name["predictions"]] == ["z", "x"]
        simple = client.post("/models/news", json={"data": {"text": ["1"]}}).json()
        assert simple["result"][0]["label"] == "b" and simple["model_version"].startswith("news-")
        missing = client.post("/predict", json={"texts": ["1"]})
        assert missing.status_code == 422 and missing.json()["error"]["field"] == "model"
        unknown = client.post("/predict", json={"texts": ["1"], "model": "sports"})
        assert unknown.status_code == 404 and "'news', 'intent'" in unknown.json()["error"]["message"]
        assert client.post("/models/sports", json={"data": {"text": ["1"]}}).status_code == 404
        for wrong in (3, ["news"], {"name": "news"}):  # a name of the wrong type is the caller's error, not a 404
            typed = client.post("/predict", json={"texts": ["1"], "model": wrong})
            assert typed.status_code == 422 and "must be a string" in typed.json()["error"]["message"], wrong
        assert client.get("/labels", params={"model": "intent"}).json()["labels"] == ["x", "y", "z"]
        assert client.get("/labels").status_code == 422  # which one?
        ready = client.get("/ready").json()
        assert ready["model"] == "news" and set(ready["models"]) == {"news", "intent"}
        assert client.get("/ready", params={"model": "intent"}).json()["models"] == {"intent": by_name["model_version"]}
        assert client.get("/models/intent/labels").json() == client.get("/labels", params={"model": "intent"}).json()
        assert client.get("/models/intent/ready").json() == client.get("/ready", params={"model": "intent"}).json()
        for route in ("/models/sports/labels", "/models/sports/ready"):  # by path as by field: a name it lacks
            missing_name = client.get(route)
            assert missing_name.status_code == 404 and missing_name.json()["error"]["field"] == "name", route
        status = client.get("/models/intent").json()
        assert status["path"] == "exports/intent" and status["loading"] is None
        metrics = client.get("/metrics").text
    for line in (f'ptuning_model_info{{model="intent",version="{by_name["model_version"]}"}} 1.0',
                 f'ptuning_model_texts_total{{model="intent",version="{by_name["model_version"]}"}} 2.0',
                 'ptuning_model_ready{model="news"} 1.0', 'ptuning_model_queue_texts{model="intent"} 0.0'):
        assert line in metrics, line


@pytest.mark.parametrize("body, field, message", [
    ({}, "path", "is required"), ({"path": ""}, "path", "is required"), ({"path": 5}, "path", "must be a string"),
    ({"path": ["exports/v2"]}, "path", "must be a string"), ({"path": "exports/v2", "bogus": 1}, "bogus", "unknown field"),
    ([], "body", "must be a JSON object")], ids=["no path", "empty path", "number", "list", "unknown field", "list body"])
def test_an_admin_swap_body_is_checked_field_by_field_before_anything_loads(body, field, message, admin_file, loads):
    """A wrong admin body is a 422 naming its field, and no load starts (the old version serves on)."""
    with client_for(ServiceConfig("exports/v1", admin_key_file=admin_file),
                    cls_default=FakeClassifier(FakeModel(tag="v1"))) as client:
        answer = client.post("/admin/models/cls_default", headers=ADMIN, json=body)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
        assert message in answer.json()["error"]["message"]
        status = client.get("/models/cls_default").json()
        assert status["loading"] is None and status["last_swap"] is None  # (a load that failed would be named)


def swap_in_thread(client, name, path, answers, **body):
    thread = threading.Thread(target=lambda: answers.append(client.post(f"/admin/models/{name}", headers=ADMIN,
                                                                        json={"path": path, **body})))
    thread.start()
    return thread


def test_a_swap_serves_new_requests_on_the_new_version_while_a_held_request_finishes_on_the_old(admin_file, loads):
    """A request is held inside the old model; the swap loads, checks and warms up the new export
    and puts it in service: new requests get the new version's answers (on the second worker); the
    held request, released, gets the old version's (its rows and its model_version), and then the old
    version retires."""
    old_model = HeldModel(tag="v1")
    loads["exports/v2"] = fake("exports/v2", tag="v2", shift=1)
    config = ServiceConfig("exports/v1", admin_key_file=admin_file, max_wait_ms=0, instances="2")
    with client_for(config, cls_default=FakeClassifier(old_model)) as client:
        service = client.app.state.service
        old_version = client.get("/labels").json()["model_version"]
        held = []
        thread = threading.Thread(target=lambda: held.append(client.post("/predict", json={"texts": ["1"]})))
        thread.start()
        assert old_model.started.wait(60)
        swapped = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": "exports/v2"})
        assert swapped.status_code == 200, swapped.text
        outcome = swapped.json()
        assert outcome["previous_version"] == old_version and outcome["model_version"] != old_version
        new = client.post("/predict", json={"texts": ["1", "2"]}).json()
        assert new["model_version"] == outcome["model_version"] and labels_of_json(new) == ["c", "a"]
        old_slot = [s for s in service.registry._retiring]  # the old version waits for its last request
        assert len(old_slot) == 1 and not old_slot[0].done()
        old_model.release.set()
        thread.join()
        assert held[0].status_code == 200
        assert held[0].json()["model_version"] == old_version and labels_of(held[0]) == ["b"]
        until(lambda: not service.registry._retiring, "the old version retired")
        metrics = client.get("/metrics").text
    assert f'ptuning_model_info{{model="cls_default",version="{outcome["model_version"]}"}} 1.0' in metrics
    assert f'ptuning_model_info{{model="cls_default",version="{old_version}"}}' not in metrics
    assert 'ptuning_model_swaps_total{model="cls_default",outcome="swapped"} 1.0' in metrics


def test_both_versions_share_one_queue_so_with_one_worker_a_new_request_waits_as_between_requests(
        admin_file, loads):
    """One worker, a request held in the old version, a swap: the new version's first request queues
    behind the held batch in the name's one queue (as any request waits for a busy worker), runs once
    it is released, and is answered by the new version; the held one by the old."""
    old_model = HeldModel(tag="v1")
    ran_after_release = []

    class Recording(FakeModel):
        def run(self, features, batch_size=32):
            ran_after_release.append(old_model.release.is_set())
            return super().run(features, batch_size)

    loads["exports/v2"] = lambda: FakeClassifier(Recording(tag="v2", shift=1), export_dir="exports/v2")
    config = ServiceConfig("exports/v1", admin_key_file=admin_file, max_wait_ms=0, instances="1")
    with client_for(config, cls_default=FakeClassifier(old_model)) as client:
        service = client.app.state.service
        answers = {}
        held = threading.Thread(target=lambda: answers.update(old=client.post("/predict", json={"texts": ["1"]})))
        held.start()
        try:
            assert old_model.started.wait(60)
            swapped = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": "exports/v2"})
            assert swapped.status_code == 200, swapped.text
            new = threading.Thread(target=lambda: answers.update(new=client.post("/predict", json={"texts": ["1"]})))
            new.start()
            until(lambda: service.registry.slots["cls_default"].batcher.queued == 1, "the new request queued")
        finally:
            old_model.release.set()
        held.join()
        new.join()
    assert ran_after_release == [False, False, True]  # the parity sample's two runs in the swap, then the request
    assert labels_of(answers["old"]) == ["b"] and labels_of(answers["new"]) == ["c"]
    versions = {which: answer.json()["model_version"] for which, answer in answers.items()}
    assert versions["new"] == swapped.json()["model_version"] != versions["old"]


def test_a_replaced_version_is_freed_once_its_requests_are_answered(admin_file, loads):
    """Versions share the name's batcher, which must not keep any of them alive: after v2 replaced v1
    and v3 replaced v2 (each answering a request), no reference to v1's or v2's model is left."""
    import gc
    import weakref

    models = {}

    def load(tag, shift):
        def make():
            models[tag] = weakref.ref(model := FakeModel(tag=tag, shift=shift))
            return FakeClassifier(model, export_dir=f"exports/{tag}")
        return make

    for tag, shift in (("v2", 1), ("v3", 2)):
        loads[f"exports/{tag}"] = load(tag, shift)
    config = ServiceConfig("exports/v1", admin_key_file=admin_file, max_wait_ms=0)
    first = FakeModel(tag="v1")
    models["v1"] = weakref.ref(first)
    with client_for(config, cls_default=FakeClassifier(first)) as client:
        service = client.app.state.service
        del first
        for tag, label in (("v1", "b"), ("v2", "c"), ("v3", "a")):
            if tag != "v1":
                swapped = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": f"exports/{tag}"})
                assert swapped.status_code == 200, swapped.text
            assert labels_of_json(client.post("/predict", json={"texts": ["1"]}).json()) == [label]
        until(lambda: not service.registry._retiring, "the old versions retired")
        gc.collect()
        assert models["v1"]() is None and models["v2"]() is None and models["v3"]() is not None


def test_a_new_version_runs_on_the_split_path_while_the_old_one_still_runs_a_batch(admin_file, loads):
    """--instances auto: the swap's new version's first batch, taken while the old version's is held on
    the other worker, goes to the split path (half the threads: both
    versions on every thread would oversubscribe the cores); once the old one retired, a lone batch
    gets every thread again."""
    old_model = HeldModel(tag="v1")
    old = FakeClassifier(old_model)
    old.split_model = old_model  # --instances auto: two workers, a split path
    loads["exports/v2"] = fake("exports/v2", tag="v2", shift=1)
    config = ServiceConfig("exports/v1", admin_key_file=admin_file, max_wait_ms=0, device="cpu", num_threads=2)
    with client_for(config, cls_default=old) as client:
        service = client.app.state.service
        held = []
        thread = threading.Thread(target=lambda: held.append(client.post("/predict", json={"texts": ["1"]})))
        thread.start()
        try:
            assert old_model.started.wait(60)
            swapped = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": "exports/v2"})
            assert swapped.status_code == 200, swapped.text
            new = service.registry.slots["cls_default"].batcher
            assert labels_of_json(client.post("/predict", json={"texts": ["1"]}).json()) == ["c"]
            assert new.paths == {"full": 1, "split": 1}  # the old version's held batch, the new one's
        finally:
            old_model.release.set()  # (a failure above must not leave the service draining a held request)
        thread.join()
        assert held[0].status_code == 200 and labels_of(held[0]) == ["b"]
        until(lambda: not service.registry._retiring, "the old version retired")
        assert labels_of_json(client.post("/predict", json={"texts": ["1"]}).json()) == ["c"]
        assert new.paths == {"full": 2, "split": 1} and service.registry.running_batches.count == 0


def labels_of_json(body):
    return [p["label"] for p in body["predictions"]]


def test_a_second_swap_while_one_loads_is_409_and_the_first_completes(admin_file, loads):
    loading, release = threading.Event(), threading.Event()

    def held_load():
        loading.set()
        release.wait()
        return FakeClassifier(FakeModel(tag="v2"), export_dir="exports/v2")

    loads["exports/v2"] = held_load
    loads["exports/v3"] = fake("exports/v3", tag="v3")
    config = ServiceConfig("exports/v1", admin_key_file=admin_file)
    with client_for(config, cls_default=FakeClassifier(FakeModel(tag="v1"))) as client:
        first = []
        thread = swap_in_thread(client, "cls_default", "exports/v2", first)
        assert loading.wait(60)
        second = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": "exports/v3"})
        assert second.status_code == 409, second.text
        assert "is loading already (exports/v2" in second.json()["error"]["message"]
        assert client.get("/models/cls_default").json()["loading"]["path"] == "exports/v2"
        assert client.post("/predict", json={"texts": ["1"]}).status_code == 200  # the old one serves meanwhile
        release.set()
        thread.join()
        assert first[0].status_code == 200 and first[0].json()["path"] == "exports/v2"
        assert 'outcome="conflict"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("problem", ["nan", "fails", "labels", "task"])
def test_a_swap_that_fails_its_checks_leaves_the_old_version_serving_and_says_why(problem, admin_file, loads):
    def broken():
        if problem == "fails":
            raise RuntimeError("onnxruntime: cannot allocate")
        if problem == "task":
            from utils.task.decoding import Decoder

            model = FakeModel(tag="v2")
            model.decoder = Decoder("multi-label", model.labels)
            return FakeClassifier(model)
        return FakeClassifier(FakeModel(tag="v2", nan=problem == "nan", labels=("x", "y") if problem == "labels"
                                        else ("a", "b", "c")), export_dir="exports/v2")

    loads["exports/v2"] = broken
    with client_for(ServiceConfig("exports/v1", admin_key_file=admin_file),
                    cls_default=FakeClassifier(FakeModel(tag="v1"))) as client:
        before = client.get("/labels").json()["model_version"]
        refused = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": "exports/v2"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "path"
        message = refused.json()["error"]["message"]
        assert f"'cls_default' still serves {before}" in message
        assert {"nan": "the parity sample failed", "fails": "RuntimeError: onnxruntime: cannot allocate",
                "labels": "--allow_label_change", "task": "task_type"}[problem] in message
        after = client.post("/predict", json={"texts": ["1"]}).json()
        assert after["model_version"] == before and labels_of_json(after) == ["b"]
        last = client.get("/models/cls_default").json()["last_swap"]
        assert last["outcome"] == "refused" and last["model_version"] == before
        assert 'ptuning_model_swaps_total{model="cls_default",outcome="refused"} 1.0' in client.get("/metrics").text


def test_another_label_set_is_swapped_in_only_when_allowed_and_announced_in_labels(admin_file, loads):
    loads["exports/v2"] = fake("exports/v2", tag="v2", labels=("x", "y", "z", "w"))
    with client_for(ServiceConfig("exports/v1", admin_key_file=admin_file),
                    cls_default=FakeClassifier(FakeModel(tag="v1"))) as client:
        before = client.get("/labels").json()
        assert client.post("/admin/models/cls_default", headers=ADMIN,
                           json={"path": "exports/v2"}).status_code == 422
        allowed = client.post("/admin/models/cls_default", headers=ADMIN,
                              json={"path": "exports/v2", "allow_label_change": True})
        assert allowed.status_code == 200, allowed.text
        labels = client.get("/labels").json()
        assert labels["labels"] == ["x", "y", "z", "w"]
        changed = labels["labels_changed"]
        assert changed["changed"] == "labels" and changed["previous"]["labels"] == ["a", "b", "c"]
        assert changed["previous_version"] == before["model_version"]
        assert labels_of_json(client.post("/predict", json={"texts": ["1"]}).json()) == ["y"]


def test_a_tampered_or_damaged_real_export_is_refused_by_its_sha256_and_a_good_one_swapped_in(
        trained, tmp_path, admin_file):
    """Real exports: a copy whose ONNX file has one byte flipped is refused (sha256 differs from the
    manifest) and the old one keeps answering; an intact copy is then swapped in."""
    from fastapi.testclient import TestClient

    export = os.path.join(trained[1], "export")
    tampered, intact = str(tmp_path / "tampered"), str(tmp_path / "intact")
    shutil.copytree(export, tampered)
    shutil.copytree(export, intact)
    flip_byte(os.path.join(tampered, "model.onnx"))
    service = Service(ServiceConfig(export, num_threads=1, admin_key_file=admin_file))
    with TestClient(service.asgi()) as client:
        until(lambda: client.get("/ready").status_code == 200, "loaded")
        tokenizer = service.registry.slots["cls_default"].classifier.model.preprocessor.tokenizer
        expected = client.post("/predict", json={"texts": ["我爱吃苹果"]}).json()
        refused = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": tampered})
        assert refused.status_code == 422 and "sha256" in refused.json()["error"]["message"]
        assert client.post("/predict", json={"texts": ["我爱吃苹果"]}).json() == expected
        swapped = client.post("/admin/models/cls_default", headers=ADMIN, json={"path": intact})
        assert swapped.status_code == 200, swapped.text
        answer = client.post("/predict", json={"texts": ["我爱吃苹果"]}).json()
        assert answer["predictions"] == expected["predictions"]  # the same model, now from the copy
        assert client.get("/models/cls_default").json()["path"] == intact
        # the same vocabulary: the swap took the served tokenizer instead of building one beside the model
        assert service.registry.slots["cls_default"].classifier.model.preprocessor.tokenizer is tokenizer


def test_the_watcher_swaps_in_an_export_that_lands_by_a_rename_and_tries_a_broken_one_once(
        trained, tmp_path, admin_file):
    """An export served from `current`: a new one renamed onto it (as export.py lands one) is found
    by one scan and swapped in; a scan with nothing new does nothing; a damaged one renamed there is
    refused once (the old one serves) and not retried until another lands."""
    from fastapi.testclient import TestClient

    export = os.path.join(trained[1], "export")
    current = str(tmp_path / "current")
    shutil.copytree(export, current)

    def land(damaged=False):
        staging = str(tmp_path / "staging")
        shutil.copytree(export, staging)
        if damaged:
            flip_byte(os.path.join(staging, "model.onnx"))
        shutil.rmtree(current)  # (export.py moves the old one aside; either way one rename lands the new)
        os.rename(staging, current)

    app = Service(ServiceConfig(current, num_threads=1, admin_key_file=admin_file)).asgi()
    with TestClient(app) as client:
        until(lambda: client.get("/ready").status_code == 200, "loaded")
        first = client.get("/labels").json()["model_version"]
        assert client.post("/admin/scan", headers=ADMIN).json() == {"swaps": []}
        land()
        swaps = client.post("/admin/scan", headers=ADMIN).json()["swaps"]
        assert [(s["outcome"], s["trigger"]) for s in swaps] == [("swapped", "watch")]
        assert swaps[0]["previous_version"] == first  # (same files: the manifest's bytes are the same)
        assert client.post("/admin/scan", headers=ADMIN).json() == {"swaps": []}
        land(damaged=True)
        swaps = client.post("/admin/scan", headers=ADMIN).json()["swaps"]
        assert [s["outcome"] for s in swaps] == ["refused"] and "sha256" in swaps[0]["reason"]
        assert client.post("/admin/scan", headers=ADMIN).json() == {"swaps": []}  # not retried
        assert client.post("/predict", json={"texts": ["苹果"]}).status_code == 200


def test_sigterm_during_a_swap_abandons_it_and_the_request_in_flight_finishes_on_the_old_version(trained,
                                                                                                 tmp_path):
    """serve.py (its model held by the test): a request is held in the model and a swap's load is
    held too. SIGTERM: the swap is answered 503 at once (the new model is never served), the port
    closes, the held request is answered by the old version when let go of, and serve.py exits 0
    although the load never ended (its thread does not hold the exit)."""
    import socket
    import signal

    import httpx

    from test_service import HANG_GUARD, HELD, serving

    admin = tmp_path / "admin.txt"
    admin.write_text(ADMIN_KEY + "\n", encoding="utf-8")
    export = os.path.join(trained[1], "export")
    with serving(export, tmp_path, "--admin_key_file", str(admin), "--max_wait_ms", "0",
                 script=HELD) as (server, port, url):
        version = httpx.get(url + "/labels", timeout=60).json()["model_version"]
        answers = {}
        threads = [threading.Thread(target=lambda: answers.update(predict=httpx.post(
            url + "/predict", json={"texts": ["1"]}, timeout=HANG_GUARD)))]
        threads[0].start()
        assert server.stdout.readline().split() == ["run", "1"]
        threads.append(threading.Thread(target=lambda: answers.update(swap=httpx.post(
            url + "/admin/models/cls_default", json={"path": str(tmp_path / "held-load")}, headers=ADMIN,
            timeout=HANG_GUARD))))
        threads[1].start()
        assert server.stdout.readline().split() == ["run", "load"]
        server.send_signal(signal.SIGTERM)
        threads[1].join()
        swap = answers["swap"]
        assert swap.status_code == 503 and "was not put in service" in swap.json()["error"]["message"]
        for line in server.stderr:  # uvicorn says this once it has closed the port
            if "Waiting for connections to close" in line:
                break
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD).close()
        server.stdin.write("go on\n")
        server.stdin.flush()
        threads[0].join()
        assert answers["predict"].status_code == 200
        assert answers["predict"].json()["model_version"] == version
        assert server.wait(timeout=HANG_GUARD) == 0


@pytest.mark.parametrize("flags, error", [
    (["--model", "news"], "error: --model: must be NAME=EXPORT_DIR, got 'news'"),
    (["--model", "a=E", "--model", "a=E"], "error: --model: 'a' is given twice"),
    (["--model", "a b=E"], "error: --model: must be a non-empty name without '/'"),
    (["--model", "a=E", "--model_path_prefix", "E"], "error: --model: give --model_path_prefix (one model) or --model"),
    (["--model", "a=E", "--name", "b"], "error: --name: names the --model_path_prefix model"),
    ([], "error: --model_path_prefix: give the export directory"),
    (["--model", "a=E", "--ray", "auto", "--loop", "asyncio"], "error: --loop: is for serve.py's own uvicorn"),
    (["--model_path_prefix", "E", "--api_key_file", "k", "--ray", "auto"], "error: --api_key_file: no such file"),
    (["--model_path_prefix", "E", "--watch_interval_s", "-1"], "error: --watch_interval_s: must be zero (off) or more"),
], ids=["no =", "twice", "bad name", "both forms", "--name", "none", "--ray", "keys with --ray", "negative watch"])
def test_serve_refuses_model_flags_it_cannot_serve(flags, error, trained, capsys):
    import serve
    from utils.errors import run_cli

    export = os.path.join(trained[1], "export")
    flags = [export if word == "E" else word.replace("=E", "=" + export) for word in flags]
    assert run_cli(serve.main, [*flags, "--port", "8000" if "--ray" in flags else "0"]) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(error)


def test_serve_py_serves_several_models_named_by_model_flags(trained, tmp_path):
    """serve.py --model a=E --model b=E: its JSON line names both, each answers at /models/NAME and in
    /predict by name, each with its own version (the same files: the same digest, another name)."""
    import httpx

    from test_service import serving

    export = os.path.join(trained[1], "export")
    with serving(None, tmp_path, "--model", f"fruit={export}", "--model", f"news={export}") as (server, port, url):
        fruit = httpx.post(url + "/models/fruit", json={"data": {"text": ["苹果"]}}, timeout=60).json()
        news = httpx.post(url + "/predict", json={"texts": ["苹果"], "model": "news"}, timeout=60).json()
        assert fruit["result"][0]["label"] == news["predictions"][0]["label"]
        assert fruit["model_version"].startswith("fruit-") and news["model_version"].startswith("news-")
        assert httpx.get(url + "/ready", timeout=60).json()["models"].keys() == {"fruit", "news"}
        assert httpx.post(url + "/predict", json={"texts": ["苹果"]}, timeout=60).status_code == 422  # which?


def test_a_swap_loads_and_warms_up_as_background_work_at_the_lowest_priority(admin_file, monkeypatch):
    """A swap's load and parity sample run as background work at nice SWAP_NICE (utils/deploy/priority.py:
    its session builds, hashing and runs niced; tests/deploy/test_priority.py), and the thread leaves it."""
    import utils.serving.registry as registry
    from utils.deploy.priority import background_nice

    seen = []

    class Recording(FakeModel):
        def run(self, features, batch_size=32):
            seen.append(("run", len(features), background_nice()))
            return super().run(features, batch_size)

    def load():
        seen.append(("load", 0, background_nice()))
        return FakeClassifier(Recording())

    classifier, _ = run_in_a_thread(lambda: registry.load_checked(load, FakeClassifier(FakeModel()), False, 32))
    assert seen == [("load", 0, registry.SWAP_NICE), ("run", 1, registry.SWAP_NICE), ("run", 8, registry.SWAP_NICE)]
    assert run_in_a_thread(background_nice) is None
