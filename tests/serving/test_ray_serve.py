"""serve.py --ray: the same HTTP app as Ray Serve replicas, on a real 2-node Ray cluster; clear errors."""
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import serve
from conftest import ROOT, metric_value, until
from helpers import closed_port, flip_byte, require_ray, run_in_a_thread, tempered_export
from utils.errors import run_cli

START_TIMEOUT = 300  # seconds for serve.py --ray to deploy (about 20 s here)


def require_serve():
    require_ray()
    try:
        from ray import serve as _  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"Ray Serve's dependencies are missing ({exc}): `make install-ray`; `make test` installs them")


@pytest.fixture(scope="module")
def serve_cluster(tmp_path_factory):
    """Two Ray nodes on this machine, one CPU each (resources node_a and node_b). A replica that loads
    the export at `cluster.held_export` stops there (utils/rundir/checkpoints.py `reached`) after
    writing its pid to `cluster.held_pid`: a rollout held half-way, for as long as the test wants."""
    require_serve()
    from utils.rundir.checkpoints import PAUSE_ENV
    from utils.testing.ray_local import LocalRayCluster

    cluster = LocalRayCluster(["node_a", "node_b"], cpus=1, start_timeout=180)
    held = tmp_path_factory.mktemp("held")
    cluster.held_export, cluster.held_pid = str(held / "export"), str(held / "replica.pid")
    cluster.env[PAUSE_ENV] = f"replica loading {cluster.held_export}={cluster.held_pid}"
    with cluster:
        yield cluster
    assert cluster.leftover_pids() == []


@pytest.fixture(scope="module")
def serve_port():
    """The port of Ray Serve's proxies on this module's cluster (Serve keeps the one it started with),
    held for the module by a socket bound with SO_REUSEPORT and not listening: no other process can
    take it, the proxies bind it beside (with SO_REUSEPORT too), and only they get its connections."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class RayServe:
    """serve.py --ray in a subprocess; `served` is the JSON line it prints once the replicas are up."""

    def __init__(self, cluster, port, *argv):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "serve.py", "--ray", cluster.address, "--port", str(self.port),
                                      *argv], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        line = {}
        reader = threading.Thread(target=lambda: line.setdefault("line", self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not line.get("line"):
            self.proc.kill()
            raise AssertionError(f"serve.py --ray did not come up: {''.join(self.stderr)[-3000:]}")
        self.served = json.loads(line["line"])
        self.url = self.served["url"]

    def stop(self, timeout=120):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def http():
    import httpx

    return httpx.Client(timeout=60, trust_env=False)  # loopback: never through a proxy


@pytest.mark.slow
def test_two_replicas_on_two_nodes_answer_like_infer_with_the_exports_temperature(serve_cluster, serve_port, trained,
                                                                                  tmp_path):
    """2 replicas (one per node: each reserves its node's only CPU) of an export calibrated to T = 3:
    SimpleServing and /predict answers equal the local Classifier's (whose confidences differ from
    T = 1's: the replicas apply the temperature), both nodes answer (X-Served-By, matched against
    Ray's node table), health/ready/labels/metrics and 4xx errors as one serve.py; SIGTERM deletes
    the application and serve.py exits 0."""
    from concurrent.futures import ThreadPoolExecutor

    from utils import Classifier

    export = tempered_export(trained, tmp_path)
    texts = [f"{word}的消息第{i}条" for i, word in enumerate(["苹果", "香蕉", "足球", "股票", "电影"] * 8)]
    expected = Classifier(export, device="cpu", num_threads=1).predict(texts)
    untempered = Classifier(os.path.join(trained[1], "export"), device="cpu", num_threads=1).predict(texts)
    assert max(abs(a.confidence - b.confidence) for a, b in zip(expected, untempered)) > 1e-3

    server = RayServe(serve_cluster, serve_port, "--model_path_prefix", export, "--replicas", "2", "--num_threads",
                      "1", "--device", "cpu")
    try:
        assert server.served["replicas"] == 2 and server.served["application"] == "cls_default"
        with http() as client:
            assert client.get(server.url + "/health").json() == {"status": "ok"}
            assert client.get(server.url + "/ready").status_code == 200
            labels = client.get(server.url + "/labels").json()
            assert labels["labels"] == Classifier(export, device="cpu", num_threads=1).labels
            assert labels["temperature"] == 3.0

            def one(i):
                if i % 2:
                    response = client.post(server.url + "/models/cls_default", json={"data": {"text": [texts[i]]}})
                else:
                    response = client.post(server.url + "/predict", json={"texts": [texts[i]]})
                assert response.status_code == 200, (response.status_code, response.text)
                rows = response.json()["result" if i % 2 else "predictions"]
                return i, rows[0], response.headers["x-served-by"]

            served_by = set()
            with ThreadPoolExecutor(8) as pool:
                for _ in range(3):  # the proxy spreads requests over the replicas
                    for i, row, by in pool.map(one, range(len(texts))):
                        assert row["label"] == expected[i].label
                        assert row["confidence"] == pytest.approx(expected[i].confidence, abs=1e-5)
                        served_by.add(by.split("/")[0])
            node_ids = serve_cluster.nodes()
            assert len(served_by) == 2
            assert {n[:12] for n in node_ids.values()} == served_by

            bad = client.post(server.url + "/predict", json={"texts": []})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "texts"
            assert client.post(server.url + "/models/other", json={"data": {"text": ["x"]}}).status_code == 404
            assert "ptuning_requests_total" in client.get(server.url + "/metrics").text
        assert server.stop() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    with http() as client:  # the application is gone from the proxies
        assert client.get(server.url + "/health").status_code in (404, 503)


def chunked_post(port, path, body, first):
    """POST `body` in two chunks: the first `first` bytes now (the request is then in the service,
    waiting for the rest), the rest when the returned function is called, which returns the
    response's status and JSON."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b"%x\r\n%s\r\n" % (first, body[:first]))

    def finish():
        rest = body[first:]
        connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
        connection.close()
        return status, answer

    return finish


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_in_a_replica_then_exits_0(serve_cluster, serve_port, trained):
    """Four requests held in the replica by the test (their bodies half sent; /metrics' requests in
    progress says when all are in) when serve.py gets SIGTERM: the application's route goes at once
    (Ray's proxy answers new requests 404), yet each held request is answered in full once its body
    ends, and serve.py exits 0."""
    from utils import Classifier

    export = os.path.join(trained[1], "export")
    texts = ["苹果很甜", "香蕉的消息", "葡萄和足球", "今天的股票"]
    expected = Classifier(export, device="cpu", num_threads=1).predict(texts)
    server = RayServe(serve_cluster, serve_port, "--model_path_prefix", export, "--replicas", "1", "--num_threads",
                      "1", "--device", "cpu")
    try:
        held = [chunked_post(serve_port, "/predict", json.dumps({"texts": [text]}).encode(), 5) for text in texts]
        with http() as client:
            until(lambda: metric_value(client.get(server.url + "/metrics").text, "ptuning_requests_in_progress")
                  == len(held) + 1, "the held requests in the replica")  # (+ 1: the scrape itself)
            server.proc.send_signal(signal.SIGTERM)
            until(lambda: client.get(server.url + "/ready").status_code == 404, "the application's route removed")
        answers = [finish() for finish in held]
        assert [status for status, _ in answers] == [200] * len(texts), answers
        assert [answer["predictions"][0]["label"] for _, answer in answers] == [p.label for p in expected]
        assert server.proc.wait(START_TIMEOUT) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


@pytest.mark.slow
def test_a_second_deployment_of_the_same_name_is_refused_and_a_corrupt_export_is_named(serve_cluster, serve_port,
                                                                                       trained, tmp_path):
    """One application name per cluster: the second serve.py is refused (exit 2, --name) and the
    first keeps serving. An export whose model file was altered fails on the replica's sha256
    check, reported in one paragraph naming the driver's file."""
    import shutil

    export = os.path.join(trained[1], "export")
    first = RayServe(serve_cluster, serve_port, "--model_path_prefix", export, "--num_threads", "1", "--device", "cpu",
                     "--name", "first")
    try:
        second = subprocess.run([sys.executable, "serve.py", "--ray", serve_cluster.address, "--port",
                                 str(first.port), "--model_path_prefix", export, "--name", "first",
                                 "--device", "cpu"], cwd=ROOT, env=serve_cluster.env, capture_output=True,
                                text=True, timeout=START_TIMEOUT)
        assert second.returncode == 2
        assert "error: --name: the cluster already serves an application 'first'" in second.stderr
        assert "Traceback" not in second.stderr
        with http() as client:
            assert client.post(first.url + "/predict", json={"texts": ["苹果"]}).status_code == 200
    finally:
        assert first.stop() == 0

    broken = str(tmp_path / "export")
    shutil.copytree(export, broken)
    flip_byte(os.path.join(broken, "model.onnx"), mask=0xFF)  # same size, different bytes
    result = subprocess.run([sys.executable, "serve.py", "--ray", serve_cluster.address, "--port", str(serve_port),
                             "--model_path_prefix", broken, "--device", "cpu", "--num_threads", "1",
                             "--name", "broken"], cwd=ROOT, env=serve_cluster.env, capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert f"error: {os.path.join(broken, 'model.onnx')}: sha256 differs" in result.stderr
    assert "Traceback" not in result.stderr

    # A replica that cannot load the model (too short for the prompt): its own error, one paragraph.
    result = subprocess.run([sys.executable, "serve.py", "--ray", serve_cluster.address, "--port", str(serve_port),
                             "--model_path_prefix", export, "--device", "cpu", "--num_threads", "1",
                             "--max_seq_length", "4", "--name", "short"], cwd=ROOT, env=serve_cluster.env,
                            capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert "error: --ray: the replicas could not start: " in result.stderr and "max_seq_length" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3, result.stderr


@pytest.mark.parametrize("flags, flag, message", [
    (["--replicas", "2", "--autoscaling_config", '{"min_replicas": 1, "max_replicas": 2}'], "--replicas",
     "not both"),
    (["--replicas", "0"], "--replicas", "positive integer"),
    (["--replicas", "two"], "--replicas", "positive integer"),
    (["--autoscaling_config", "{min: 1}"], "--autoscaling_config", "not JSON"),
    (["--autoscaling_config", "[1]"], "--autoscaling_config", "JSON object"),
    (["--autoscaling_config", '{"max_replica": 4}'], "--autoscaling_config", "AutoscalingConfig"),
    (["--autoscaling_config", '{"min_replicas": 5, "max_replicas": 2}'], "--autoscaling_config",
     "AutoscalingConfig"),
    (["--device_id", "1"], "--device_id", "Ray assigns"),
    (["--route_prefix", "api"], "--route_prefix", "start with '/'"),
    (["--max_ongoing_requests", "0"], "--max_ongoing_requests", "positive integer"),
], ids=["replicas and autoscaling", "zero replicas", "replicas not a number", "autoscaling not JSON",
        "autoscaling not an object", "autoscaling unknown field", "autoscaling min above max", "device_id",
        "route prefix", "max_ongoing_requests"])
def test_bad_ray_serve_flags_are_refused_before_any_cluster_is_contacted(flags, flag, message, trained, capsys):
    """Each mistake: one `error: FLAG: ...` paragraph, exit 2, and no Ray connection tried (the
    address is one where nothing listens, which would otherwise be the error)."""
    require_serve()
    code = run_cli(serve.main, ["--model_path_prefix", os.path.join(trained[1], "export"), "--ray", "127.0.0.1:9",
                                *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {flag}: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--replicas", "2"), ("--autoscaling_config", "{}"),
                                         ("--max_ongoing_requests", "8")])
def test_ray_serve_flags_without_ray_are_refused(flag, value, trained, capsys):
    code = run_cli(serve.main, ["--model_path_prefix", os.path.join(trained[1], "export"), flag, value])
    assert code == 2 and capsys.readouterr().err.startswith(f"error: {flag}: only with --ray")


def test_no_cluster_at_the_address_is_one_paragraph_within_seconds(trained, capsys):
    require_serve()
    start = time.monotonic()
    with closed_port() as port:
        code = run_cli(serve.main, ["--model_path_prefix", os.path.join(trained[1], "export"), "--ray",
                                    f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --ray: no Ray cluster answers at") and time.monotonic() - start < 30


def start_serve(cluster, port):
    """Ray Serve started on `cluster` with its proxies on `port` (`serve run` would start it on 8000)."""
    code = ("import ray, sys; from ray import serve; from ray.serve.context import _get_global_client; "
            f"ray.init(address={cluster.address!r}, logging_level='ERROR'); "
            f"serve.start(http_options={{'host': '127.0.0.1', 'port': {port}}}); "
            "print(_get_global_client().http_config.port)")
    result = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) == port  # (a Serve already running keeps its port)


# Ray Serve's `serve` command, with Ctrl-C's default handler as in a terminal: a child inherits an
# ignored SIGINT (a background job's), and Python then leaves it ignored.
SERVE_CLI = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from ray.serve.scripts import cli; cli()"


@contextlib.contextmanager
def serve_run(cluster, port, export, *args):
    """`serve run utils.serving.ray_serve:build_app model_path_prefix=EXPORT ARGS` on `cluster` (Serve started
    on `port` first), its stdout and stderr merged; killed if still running after, or after
    START_TIMEOUT seconds (a hang guard)."""
    start_serve(cluster, port)
    runtime_env = json.dumps({"py_modules": [os.path.join(ROOT, "utils")]})
    proc = subprocess.Popen([sys.executable, "-c", SERVE_CLI, "run", "--address", cluster.address,
                             "--runtime-env-json", runtime_env, "--app-dir", ROOT, "utils.serving.ray_serve:build_app",
                             f"model_path_prefix={export}", "num_threads=1", "device=cpu", "replicas=1", *args],
                            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    guard = threading.Timer(START_TIMEOUT, proc.kill)
    guard.start()
    try:
        yield proc
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def output_until(proc, text):
    """The process's output up to the first line holding `text` (all of it if the process ends first)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


def test_a_replica_answers_every_route_as_serve_py_does_and_names_its_node_and_pid(monkeypatch):
    """A Ray Serve replica is the `Service` serve.py runs: the app Serve builds from it (no cluster
    here: `ray` is a stand-in, the model a fake) answers every route, good requests and bad, exactly
    as `create_app`'s, and each of its responses names the node and process in X-Served-By."""
    import types

    from fastapi.testclient import TestClient

    import utils.deploy.classifier
    from service_fakes import FakeClassifier, FakeModel
    from utils.serving.app import ServiceConfig, create_app
    from utils.serving.ray_serve import ServiceReplica

    node = types.SimpleNamespace(get_node_id=lambda: "0123456789abcdef")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_runtime_context=lambda: node))
    monkeypatch.setattr(utils.deploy.classifier, "Classifier", lambda export, **options: FakeClassifier(FakeModel()))
    config = ServiceConfig("/models/export", device="cpu", num_threads=1, max_texts_per_request=4)
    replica = ServiceReplica({"path": config.model_path_prefix}, dataclasses.asdict(config))
    requests = [("GET", "/health", None), ("GET", "/ready", None), ("GET", "/labels", None),
                ("POST", "/predict", {"texts": ["1", "2"], "top_k": 2}), ("POST", "/predict", {"texts": ["1"] * 5}),
                ("POST", "/models/cls_default", {"data": {"text": ["3"]}, "parameters": {"max_seq_len": 0}}),
                ("POST", "/models/cls_default", {"data": {"text": ["3"]}}), ("GET", "/nowhere", None)]
    answers = {}
    for name, app in (("serve.py", create_app(config, classifier=FakeClassifier(FakeModel()))),
                      ("replica", replica.__serve_build_asgi_app__())):
        with TestClient(app) as client:
            answers[name] = [client.request(method, path, json=body) for method, path, body in requests]
    assert [(r.status_code, r.json()) for r in answers["replica"]] == [(r.status_code, r.json())
                                                                       for r in answers["serve.py"]]
    assert [r.status_code for r in answers["replica"]] == [200, 200, 200, 200, 413, 422, 200, 404]
    assert {r.headers["x-served-by"] for r in answers["replica"]} == {f"0123456789ab/{os.getpid()}"}


@pytest.mark.parametrize("num_threads, threads", [(None, 1), (2, 2)])
def test_a_replica_runs_onnxruntime_on_the_cpus_it_reserved_with_one_worker(num_threads, threads, monkeypatch):
    """A CPU replica's model runs on the CPUs the deployment reserves for it (--num_threads, default 1),
    not on every core of its node; under `--instances auto` (the default) it makes no second session
    (Ray scales by replicas), so its batcher has one worker."""
    import types

    from fastapi.testclient import TestClient

    import utils.deploy.classifier
    from service_fakes import FakeClassifier, FakeModel
    from utils.serving.app import ServiceConfig
    from utils.serving.ray_serve import RayServeOptions, ServiceReplica, deployment_for

    loaded = []
    node = types.SimpleNamespace(get_node_id=lambda: "0123456789abcdef")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_runtime_context=lambda: node))
    monkeypatch.setattr(utils.deploy.classifier, "Classifier",
                        lambda export, **options: loaded.append(options) or FakeClassifier(FakeModel()))
    config = ServiceConfig("/models/export", device="cpu", num_threads=num_threads)
    replica = ServiceReplica({"path": config.model_path_prefix}, dataclasses.asdict(config))
    with TestClient(replica.__serve_build_asgi_app__()) as client:
        assert client.post("/predict", json={"texts": ["1"]}).status_code == 200
        assert replica.registry.slots["cls_default"].batcher.workers == 1
    assert [options["num_threads"] for options in loaded] == [threads]
    serve = types.SimpleNamespace(deployment=lambda **settings: lambda cls: settings, ingress=lambda: lambda cls: cls)
    assert deployment_for(serve, config, RayServeOptions("auto"), "cpu")["ray_actor_options"]["num_cpus"] == threads


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values are Linux's")
def test_a_replica_loads_and_warms_up_at_the_lowest_priority_then_serves_at_its_own(monkeypatch):
    """A rollout's new replica starts beside the replicas serving on the same CPUs: its model load and
    its warm-up (the parity sample, so its first requests do not meet a cold session) run at nice 19,
    and the replica's thread is back at its own priority before it serves."""
    import types

    import utils.deploy.classifier
    from service_fakes import FakeClassifier, FakeModel
    from utils.serving.app import ServiceConfig
    from utils.serving.ray_serve import ServiceReplica
    from utils.deploy.priority import background_nice
    from utils.serving.registry import SWAP_NICE

    def nice():  # the background work's nice (utils/deploy/priority.py: its heavy steps run at it)
        return background_nice()

    class Recording(FakeModel):
        def run(self, features, batch_size=32):
            seen.append(("run", len(features), nice()))
            return super().run(features, batch_size)

    seen = []
    node = types.SimpleNamespace(get_node_id=lambda: "0123456789abcdef")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_runtime_context=lambda: node))
    monkeypatch.setattr(utils.deploy.classifier, "Classifier",
                        lambda export, **options: seen.append(("load", 0, nice())) or FakeClassifier(Recording()))
    config = ServiceConfig("/models/export", device="cpu", num_threads=1)

    def start():
        before = nice()
        ServiceReplica({"path": config.model_path_prefix}, dataclasses.asdict(config))
        return before, nice()

    before, after = run_in_a_thread(start)
    assert seen == [("load", 0, SWAP_NICE), ("run", 1, SWAP_NICE), ("run", 8, SWAP_NICE)]
    assert before is None and after is None


def test_the_application_builder_refuses_bad_arguments_before_any_replica_starts():
    """`build_app` (serve run, Serve config files): a wrong argument is a ValueError naming it, as
    serve.py names the flag, before any replica is asked for."""
    require_serve()
    from utils.serving.ray_serve import build_app

    for args, message in (({"replica": "2"}, "unknown argument 'replica'"),
                          ({"max_batch_size": "many"}, "max_batch_size: not a"),
                          ({"num_threads": "0"}, "--num_threads: must be positive, got 0"),
                          ({"max_seq_length": "-5"}, "--max_seq_length: must be positive, got -5"),
                          ({"instances": "many"}, "--instances: must be a positive integer or `auto`")):
        with pytest.raises(ValueError, match=message):
            build_app({"model_path_prefix": "x", **args})
    for instances in ("auto", "2"):  # serve.py's two forms, as `serve run` passes them: strings
        assert type(build_app({"model_path_prefix": "x", "instances": instances})).__name__ == "Application"


@pytest.mark.slow
def test_serve_run_with_the_application_builder_serves_an_export_present_on_the_nodes_and_stops_on_ctrl_c(
        serve_cluster, serve_port, trained):
    """Ray Serve's own launcher (`serve run`, as a config file or KubeRay's RayService would):
    `utils.serving.ray_serve:build_app` with string arguments; the replica loads the export from its path
    on the node and answers like the local Classifier. Ctrl-C stops `serve run` (Ray's handler:
    it shuts Ray Serve down on the cluster, the application with it) and it exits 0."""
    import httpx

    from utils import Classifier

    export = os.path.join(trained[1], "export")
    with serve_run(serve_cluster, serve_port, export, "max_batch_size=8", "name=built") as proc:
        output = output_until(proc, "is ready at")
        assert "is ready at" in output, output[-3000:]
        url = f"http://127.0.0.1:{serve_port}"
        with http() as client:
            until(lambda: client.get(url + "/ready").status_code == 200,  # both nodes' proxies know the route
                  "the application ready on the proxies")
            texts = ["苹果很甜", "今天的足球比赛"]
            expected = Classifier(export, device="cpu", num_threads=1).predict(texts)
            response = client.post(url + "/models/built", json={"data": {"text": texts}})
            assert response.status_code == 200, response.text
            assert [row["label"] for row in response.json()["result"]] == [p.label for p in expected]
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate()[0]
        assert proc.returncode == 0 and "Got KeyboardInterrupt, shutting down" in rest, rest[-3000:]
    with http() as client:  # Serve is shut down: no proxy listens, or none routes there
        try:
            assert client.get(url + "/ready").status_code in (404, 503)
        except httpx.ConnectError:
            pass


@pytest.mark.slow
def test_serve_run_of_an_export_that_cannot_load_never_serves_and_ends_with_its_error(serve_cluster, serve_port,
                                                                                     trained, tmp_path):
    """`serve run` of an export whose model file was altered: every replica fails its sha256 check
    in its constructor, so none is ever healthy; Serve gives the application up and `serve run`
    ends (Ray's way: a traceback and exit 0), its output naming the file with our error."""
    import shutil

    broken = str(tmp_path / "export")
    shutil.copytree(os.path.join(trained[1], "export"), broken)
    flip_byte(os.path.join(broken, "model.onnx"), mask=0xFF)  # same size, different bytes
    with serve_run(serve_cluster, serve_port, broken) as proc:
        output = proc.communicate()[0]
    assert "is ready at" not in output
    assert f"ptuning replica error: {os.path.join(broken, 'model.onnx')}: sha256 differs from manifest.json" in output, \
        output[-3000:]


# Several models, keys, OIP and swaps under --ray (utils/serving/ray_rollout.py)

USER_KEY, ADMIN_KEY = "ray-user-key-0123456789", "ray-admin-key-0123456789"


def key_files(tmp_path):
    (tmp_path / "keys.txt").write_text(USER_KEY + "\n", encoding="utf-8")
    (tmp_path / "admin_keys.txt").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    return ["--api_key_file", str(tmp_path / "keys.txt"), "--admin_key_file", str(tmp_path / "admin_keys.txt")]


def rounded(value):
    """A JSON answer with its floats to 5 decimals (replicas and one process batch alike, not bit for bit)."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


@pytest.mark.slow
def test_several_models_under_ray_answer_by_name_as_one_serve_py_does_behind_api_keys(serve_cluster, serve_port,
                                                                                      trained, tmp_path):
    """serve.py --ray --model plain=E --model tempered=T with key files: every route answers by model
    name exactly as serve.py without --ray answers the same requests (the same JSON: labels,
    confidences, model_version), OIP v2 infer through Triton's client included; without a key 401,
    the user key on the admin route 401, /health open."""
    import numpy as np
    import tritonclient.http as triton
    from fastapi.testclient import TestClient
    from tritonclient.utils import InferenceServerException

    from utils import Classifier
    from utils.serving.app import Service, ServiceConfig

    export, tempered = os.path.join(trained[1], "export"), tempered_export(trained, tmp_path)
    texts = ["苹果很甜", "今天的足球比赛", "香蕉的消息", "股票"]
    requests = [("POST", "/models/plain", {"data": {"text": texts}}),
                ("POST", "/models/tempered", {"data": {"text": texts}, "parameters": {"top_k": 2}}),
                ("POST", "/predict", {"texts": texts, "model": "tempered"}),
                ("POST", "/predict", {"texts": texts}),  # 422: which model?
                ("GET", "/labels?model=tempered", None), ("GET", "/ready", None)]
    user = {"Authorization": f"Bearer {USER_KEY}"}
    config = ServiceConfig(models={"plain": export, "tempered": tempered}, device="cpu", num_threads=1)
    local = Service(config, classifiers={name: Classifier(path, **config.classifier_options())
                                         for name, path in config.exports.items()})
    with TestClient(local.asgi()) as client:
        expected = [(r.status_code, rounded(r.json())) for r in
                    (client.request(method, path, json=body) for method, path, body in requests)]
    assert [status for status, _ in expected] == [200, 200, 200, 422, 200, 200]

    server = RayServe(serve_cluster, serve_port, "--model", f"plain={export}", "--model", f"tempered={tempered}",
                      "--num_threads", "1", "--device", "cpu", *key_files(tmp_path))
    try:
        with http() as client:
            answers = [client.request(method, server.url + path, json=body, headers=user)
                       for method, path, body in requests]
            assert [(r.status_code, rounded(r.json())) for r in answers] == expected
            assert client.get(server.url + "/health").status_code == 200  # open
            assert client.post(server.url + "/models/plain", json={"data": {"text": texts}}).status_code == 401
            refused = client.post(server.url + "/admin/models/plain", json={"path": tempered}, headers=user)
            assert refused.status_code == 401 and "admin key" in refused.json()["error"]["message"]

        triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{serve_port}")
        assert triton_client.is_server_ready()
        tensor = triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=object))
        result = triton_client.infer("tempered", [tensor], headers=dict(user))
        predictions = expected[2][1]["predictions"]
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert labels == [p["label"] for p in predictions]
        np.testing.assert_allclose(result.as_numpy("confidence"), [p["confidence"] for p in predictions], atol=1e-5)
        assert result.get_response()["model_version"] == expected[2][1]["model_version"]
        with pytest.raises(InferenceServerException, match="API key is missing"):
            triton_client.infer("tempered", [tensor])
    finally:
        assert server.stop() == 0  # (also after a failure: the application is deleted, the next test can deploy)


@pytest.mark.slow
def test_an_admin_swap_under_ray_rolls_out_the_new_version_and_a_damaged_export_never_rolls_out(
        serve_cluster, serve_port, trained, tmp_path):
    """--model news=E (a copy of the export), one replica: POST /admin/models/news with the tempered
    export answers 200 once Ray Serve has rolled the application out (new replica up, the old one
    drained): its model_version is the new export's and every answer from then on carries it, with
    the tempered confidences. An export with a flipped byte is refused with 422 (its sha256) before
    any rollout, and the new version keeps answering. A new export renamed into the served path is
    found by POST /admin/scan (the watcher's step) and rolled out the same way."""
    import shutil

    from utils import Classifier
    from utils.serving.ml_backend import model_version

    export = str(tmp_path / "served")
    shutil.copytree(os.path.join(trained[1], "export"), export)
    tempered = tempered_export(trained, tmp_path)
    old, new = (model_version("news", Classifier(path, device="cpu", num_threads=1).model)
                for path in (export, tempered))
    expected = Classifier(tempered, device="cpu", num_threads=1).predict(["苹果很甜"])[0]
    admin, user = {"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": f"Bearer {USER_KEY}"}
    server = RayServe(serve_cluster, serve_port, "--model", f"news={export}", "--num_threads", "1", "--device", "cpu",
                      "--name", "swaps", *key_files(tmp_path))

    def versions(count=4):
        answers = [client.post(server.url + "/predict", json={"texts": ["苹果很甜"], "model": "news"}, headers=user)
                   for _ in range(count)]
        assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
        return {r.json()["model_version"] for r in answers}, answers[-1].json()["predictions"][0]

    try:
        with http() as client:
            assert versions()[0] == {old}
            swapped = client.post(server.url + "/admin/models/news", json={"path": tempered}, headers=admin)
            assert swapped.status_code == 200, swapped.text
            assert swapped.json()["model_version"] == new and swapped.json()["previous_version"] == old
            seen, prediction = versions()
            assert seen == {new} and prediction["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
            status = client.get(server.url + "/models/news", headers=user).json()
            assert status["model_version"] == new and status["last_swap"]["outcome"] == "swapped"

            broken = str(tmp_path / "broken")
            shutil.copytree(export, broken)
            flip_byte(os.path.join(broken, "model.onnx"), mask=0xFF)
            refused = client.post(server.url + "/admin/models/news", json={"path": broken}, headers=admin)
            assert refused.status_code == 422, refused.text
            message = refused.json()["error"]["message"]
            assert "sha256 differs" in message and f"still serves {new}" in message
            assert versions()[0] == {new}

            landing = str(tmp_path / "landing")
            shutil.copytree(export, landing)
            os.rename(tempered, str(tmp_path / "replaced"))
            os.rename(landing, tempered)  # as export.py lands an export: one rename
            scanned = client.post(server.url + "/admin/scan", headers=admin)
            assert scanned.status_code == 200, scanned.text
            assert [(s["outcome"], s["model_version"]) for s in scanned.json()["swaps"]] == [("swapped", old)]
            assert versions()[0] == {old}
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_sigterm_during_a_rollout_abandons_it_the_old_version_answers_and_no_replica_is_left(
        serve_cluster, serve_port, trained, tmp_path):
    """A swap held half-way on the real cluster: its new replica has started and stopped in its load (the
    test's pause point), the old replica still answers with the old version. SIGTERM: the admin request
    is answered 503 (the new export is never put in service), serve.py exits 0, and the held replica's
    process is gone (the module's cluster then checks no Ray worker is left)."""
    import shutil

    from utils import Classifier
    from utils.serving.ml_backend import model_version

    export = str(tmp_path / "served")
    shutil.copytree(os.path.join(trained[1], "export"), export)
    shutil.copytree(tempered_export(trained, tmp_path), serve_cluster.held_export)
    old = model_version("news", Classifier(export, device="cpu", num_threads=1).model)
    admin, user = {"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": f"Bearer {USER_KEY}"}
    server = RayServe(serve_cluster, serve_port, "--model", f"news={export}", "--num_threads", "1", "--device", "cpu",
                      "--name", "held", *key_files(tmp_path))
    swap = {}

    def post_swap():
        with http() as client:
            swap["response"] = client.post(server.url + "/admin/models/news", json={"path": serve_cluster.held_export},
                                           headers=admin, timeout=START_TIMEOUT)

    poster = threading.Thread(target=post_swap)
    try:
        poster.start()
        until(lambda: os.path.exists(serve_cluster.held_pid), "the new replica held in its load")
        pid = int(open(serve_cluster.held_pid, encoding="utf-8").read())
        with http() as client:
            answer = client.post(server.url + "/predict", json={"texts": ["苹果很甜"], "model": "news"}, headers=user)
            assert answer.status_code == 200 and answer.json()["model_version"] == old, answer.text
            assert client.get(server.url + "/models/news", headers=user).json()["loading"]["path"] == \
                serve_cluster.held_export
        server.proc.send_signal(signal.SIGTERM)
        poster.join(START_TIMEOUT)
        assert swap["response"].status_code == 503, swap["response"].text
        assert "shutting down" in swap["response"].json()["error"]["message"]
        assert server.proc.wait(START_TIMEOUT) == 0
        until(lambda: not pid_alive(pid), "the held replica's process gone")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
