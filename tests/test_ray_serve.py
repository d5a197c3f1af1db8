"""serve.py --ray: the same HTTP app as Ray Serve replicas, on a real 2-node Ray cluster; clear errors."""
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
from conftest import ROOT
from test_ray_infer import require_ray
from utils.errors import run_cli

START_TIMEOUT = 300  # seconds for serve.py --ray to deploy (about 20 s here)


def require_serve():
    require_ray()
    try:
        from ray import serve as _  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"Ray Serve's dependencies are missing ({exc}): `make install-ray`; `make test` installs them")


@pytest.fixture(scope="module")
def serve_cluster():
    """Two Ray nodes on this machine, one CPU each (resources node_a and node_b)."""
    require_serve()
    from utils.testing.ray_local import LocalRayCluster

    cluster = LocalRayCluster(["node_a", "node_b"], cpus=1, start_timeout=180)
    with cluster:
        yield cluster
    assert cluster.leftover_pids() == []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayServe:
    """serve.py --ray in a subprocess; `served` is the JSON line it prints once the replicas are up."""

    def __init__(self, cluster, *argv):
        self.port = free_port()
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
def test_two_replicas_on_two_nodes_answer_like_infer_and_drain_on_sigterm(serve_cluster, trained):
    """2 replicas (one per node: each reserves its node's only CPU): SimpleServing and /predict
    answers equal the local Classifier's, both nodes answer (X-Served-By, matched against Ray's
    node table), health/ready/labels/metrics and 4xx errors as one serve.py; SIGTERM: every
    in-flight request is answered, the application is deleted, exit 0."""
    from concurrent.futures import ThreadPoolExecutor

    from utils import Classifier

    export = os.path.join(trained[1], "export")
    texts = [f"{word}的消息第{i}条" for i, word in enumerate(["苹果", "香蕉", "足球", "股票", "电影"] * 8)]
    expected = Classifier(export, device="cpu", num_threads=1).predict(texts)

    server = RayServe(serve_cluster, "--model_path_prefix", export, "--replicas", "2", "--num_threads", "1",
                      "--device", "cpu", "--max_wait_ms", "300")  # requests wait in the batchers: see the end
    try:
        assert server.served["replicas"] == 2 and server.served["application"] == "cls_default"
        with http() as client:
            assert client.get(server.url + "/health").json() == {"status": "ok"}
            assert client.get(server.url + "/ready").status_code == 200
            labels = client.get(server.url + "/labels").json()["labels"]
            assert labels == Classifier(export, device="cpu", num_threads=1).labels

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

            # SIGTERM while requests wait in the replicas' batchers (up to 300 ms for company): the
            # application's deletion drains them, each is answered, then the process exits 0.
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(one, i) for i in range(8)]
                time.sleep(0.15)
                assert server.stop() == 0
                for future in futures:
                    future.result()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    with http() as client:  # the application is gone from the proxies
        assert client.get(server.url + "/health").status_code in (404, 503)


@pytest.mark.slow
def test_a_second_deployment_of_the_same_name_is_refused_and_a_corrupt_export_is_named(serve_cluster, trained,
                                                                                       tmp_path):
    """One application name per cluster: the second serve.py is refused (exit 2, --name) and the
    first keeps serving. An export whose model file was altered fails on the replica's sha256
    check, reported in one paragraph naming the driver's file."""
    import shutil

    export = os.path.join(trained[1], "export")
    first = RayServe(serve_cluster, "--model_path_prefix", export, "--num_threads", "1", "--device", "cpu",
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
    with open(os.path.join(broken, "model.onnx"), "r+b") as fp:  # same size, different bytes
        fp.seek(100)
        byte = fp.read(1)
        fp.seek(100)
        fp.write(bytes([byte[0] ^ 0xFF]))
    result = subprocess.run([sys.executable, "serve.py", "--ray", serve_cluster.address, "--port", str(free_port()),
                             "--model_path_prefix", broken, "--device", "cpu", "--num_threads", "1",
                             "--name", "broken"], cwd=ROOT, env=serve_cluster.env, capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert f"error: {os.path.join(broken, 'model.onnx')}: sha256 differs" in result.stderr
    assert "Traceback" not in result.stderr

    # A replica that cannot load the model (too short for the prompt): its own error, one paragraph.
    result = subprocess.run([sys.executable, "serve.py", "--ray", serve_cluster.address, "--port", str(free_port()),
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
    code = run_cli(serve.main, ["--model_path_prefix", os.path.join(trained[1], "export"), "--ray",
                                f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --ray: no Ray cluster answers at") and time.monotonic() - start < 30


def serve_http_port(cluster):
    """The port Ray Serve's proxies listen on in `cluster` (starting Serve there if it is not running)."""
    code = ("import ray, sys; from ray import serve; from ray.serve.context import _get_global_client; "
            f"ray.init(address={cluster.address!r}, logging_level='ERROR'); "
            f"serve.start(http_options={{'host': '127.0.0.1', 'port': {free_port()}}}); "
            "print(_get_global_client().http_config.port)")
    result = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_serve_run_with_the_application_builder_serves_an_export_present_on_the_nodes(serve_cluster, trained):
    """Ray Serve's own launcher (`serve run`, as a config file or KubeRay's RayService would):
    `utils.serving.ray_serve:build_app` with string arguments; the replica loads the export from its path
    on the node and answers like the local Classifier. A wrong argument is a clear ValueError."""
    from utils import Classifier
    from utils.serving.ray_serve import build_app

    with pytest.raises(ValueError, match="unknown argument 'replica'"):
        build_app({"model_path_prefix": "x", "replica": "2"})
    with pytest.raises(ValueError, match="max_batch_size: not a"):
        build_app({"model_path_prefix": "x", "max_batch_size": "many"})

    export = os.path.join(trained[1], "export")
    port = serve_http_port(serve_cluster)
    runtime_env = json.dumps({"py_modules": [os.path.join(ROOT, "utils")]})
    proc = subprocess.Popen([sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run", "--address",
                             serve_cluster.address, "--runtime-env-json", runtime_env, "--app-dir", ROOT,
                             "utils.serving.ray_serve:build_app", f"model_path_prefix={export}", "num_threads=1",
                             "device=cpu", "replicas=1", "max_batch_size=8", "name=built"],
                            cwd=ROOT, env=serve_cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        with http() as client:
            while True:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                try:
                    if client.get(url + "/ready").status_code == 200:
                        break
                except Exception:  # not listening yet
                    pass
                assert time.monotonic() < deadline, "serve run did not become ready"
                time.sleep(0.5)
            texts = ["苹果很甜", "今天的足球比赛"]
            expected = Classifier(export, device="cpu", num_threads=1).predict(texts)
            response = client.post(url + "/models/built", json={"data": {"text": texts}})
            assert response.status_code == 200, response.text
            assert [row["label"] for row in response.json()["result"]] == [p.label for p in expected]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
