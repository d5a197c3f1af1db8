"""infer.py --ray: the local output, computed on a real 2-node Ray cluster; clear errors."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import infer
from conftest import ROOT, read_tsv
from helpers import closed_port, require_ray, tempered_export
from utils.errors import run_cli
from utils.testing.synthetic import make_split

RUN_TIMEOUT = 300  # seconds for one infer.py --ray run (about 12 s here)


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this machine, one CPU each, told apart by the custom resources node_a and node_b;
    started and stopped within bounded time, stopped even when a test fails."""
    require_ray()
    from utils.testing.ray_local import LocalRayCluster

    cluster = LocalRayCluster(["node_a", "node_b"], cpus=1, start_timeout=180)
    with cluster:
        yield cluster
    assert cluster.leftover_pids() == []


def write_lines(path, n, gold=True, seed=11):
    """`n` keyword-task lines of varied lengths (`text<TAB>gold` or only the text)."""
    lines = make_split(random.Random(seed), n // 3 + 1, min_len=1, max_len=30)[:n]
    if not gold:
        lines = [line.split("\t")[0] for line in lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def run_local(capsys, *argv):
    code = run_cli(infer.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_ray(cluster, *argv):
    result = subprocess.run([sys.executable, "infer.py", "--ray", cluster.address, *argv], cwd=ROOT,
                            env=cluster.env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result.returncode, result.stdout, result.stderr


def error_line(stderr):
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


TIMINGS = {"seconds", "texts_per_second", "first_prediction_seconds"}


@pytest.mark.slow
@pytest.mark.parametrize("gold, output, flags", [
    (True, "pred.tsv", ["--top_k", "2"]),
    (False, "pred.jsonl", ["--top_k", "3", "--file_order"]),
], ids=["tsv with gold, top 2", "jsonl, top 3, file order"])
def test_ray_writes_the_local_output_byte_for_byte_with_work_on_both_nodes(gold, output, flags, ray_cluster, trained,
                                                                          tmp_path, capsys):
    """3000 lines in chunks of 500: 6 chunks spread over the two nodes' workers; the file is the one
    infer.py writes locally, and the workers' own node ids show both nodes did some of it."""
    export = os.path.join(trained[1], "export")
    input_path = write_lines(tmp_path / "in.txt", 3000, gold=gold)
    common = ["--model_path_prefix", export, "--input_file", input_path, "--chunk_size", "500", "--batch_size", "8",
              "--device", "cpu", *flags]
    local_out, ray_out = str(tmp_path / f"local-{output}"), str(tmp_path / f"ray-{output}")
    code, stdout, err = run_local(capsys, *common, "--output_file", local_out, "--num_threads", "1")
    assert code == 0, err
    local = json.loads(stdout)
    code, stdout, err = run_ray(ray_cluster, *common, "--output_file", ray_out)
    assert code == 0, err
    summary = json.loads(stdout)

    with open(local_out, "rb") as a, open(ray_out, "rb") as b:
        local_bytes, ray_bytes = a.read(), b.read()
    assert ray_bytes == local_bytes and len(ray_bytes.splitlines()) == 3000 + (not output.endswith(".jsonl"))
    assert set(summary) == set(local) | {"ray"}
    for key in set(local) - TIMINGS - {"output_file"}:
        assert summary[key] == local[key], key
    assert summary["output_file"] == ray_out and ("accuracy" in summary) == gold

    node_ids = ray_cluster.nodes()  # {custom resource: node id}, from Ray's own node table
    assert sorted(node_ids) == ["node_a", "node_b"] and len(set(node_ids.values())) == 2
    nodes = summary["ray"]["nodes"]  # per node id that a worker reported with each chunk it returned
    assert sorted(nodes) == sorted(node_ids.values())
    assert all(n["blocks"] >= 1 for n in nodes.values())
    assert sum(n["blocks"] for n in nodes.values()) == 6 and sum(n["texts"] for n in nodes.values()) == 3000
    assert summary["ray"]["workers"] == 2


@pytest.mark.slow
def test_ray_applies_the_exports_temperature_and_rejects_the_texts_the_local_run_rejects(ray_cluster, trained,
                                                                                      tmp_path, capsys):
    """An export calibrated to T = 3 (its probabilities differ from T = 1's) and --reject_threshold /
    --other_label: the Ray workers write the local file byte for byte, so they divide the logits
    by T and reject the same rows (threshold at the median top probability: both kinds of rows)."""
    from utils import Classifier

    export = tempered_export(trained, tmp_path)
    input_path = write_lines(tmp_path / "in.txt", 600, gold=False, seed=5)
    with open(input_path, encoding="utf-8") as fp:
        texts = fp.read().splitlines()
    probs = Classifier(export, num_threads=1).predict_proba(texts)
    untempered = Classifier(os.path.join(trained[1], "export"), num_threads=1).predict_proba(texts)
    assert not np.allclose(probs, untempered, atol=1e-3)
    top = probs.max(axis=1)
    threshold = round(float(sorted(top)[len(top) // 2]), 6)
    assert 0 < threshold < 1, f"the keyword model's median top probability is {threshold}: no threshold splits them"
    common = ["--model_path_prefix", export, "--input_file", input_path, "--chunk_size", "100", "--device", "cpu",
              "--reject_threshold", str(threshold), "--other_label", "不确定"]
    code, stdout, err = run_local(capsys, *common, "--output_file", str(tmp_path / "local.tsv"), "--num_threads", "1")
    assert code == 0, err
    rejected = json.loads(stdout)["predicted_label_counts"]["不确定"]
    assert 0 < rejected < 600
    code, stdout, err = run_ray(ray_cluster, *common, "--output_file", str(tmp_path / "ray.tsv"))
    assert code == 0, err
    assert json.loads(stdout)["predicted_label_counts"]["不确定"] == rejected
    assert (tmp_path / "ray.tsv").read_bytes() == (tmp_path / "local.tsv").read_bytes()


@pytest.mark.slow
def test_ray_writes_the_local_label_sets_of_a_multi_label_export(ray_cluster, trained_multilabel, tmp_path, capsys):
    """The workers decode as the export says (sigmoids, its searched thresholds): the same file and metrics."""
    import random

    from utils.testing.synthetic import make_multilabel_split

    export = os.path.join(trained_multilabel[1], "export")
    input_path = tmp_path / "in.txt"
    input_path.write_text("\n".join(make_multilabel_split(random.Random(5), 600)) + "\n", encoding="utf-8")
    common = ["--model_path_prefix", export, "--input_file", str(input_path), "--chunk_size", "100", "--device", "cpu"]
    code, stdout, err = run_local(capsys, *common, "--output_file", str(tmp_path / "local.tsv"), "--num_threads", "1")
    assert code == 0, err
    local = json.loads(stdout)
    code, stdout, err = run_ray(ray_cluster, *common, "--output_file", str(tmp_path / "ray.tsv"))
    assert code == 0, err
    summary = json.loads(stdout)
    assert (tmp_path / "ray.tsv").read_bytes() == (tmp_path / "local.tsv").read_bytes()
    assert read_tsv(str(tmp_path / "ray.tsv"))[0] == ["text", "gold", "labels", "confidences"]
    for key in ("task_type", "micro_f1", "macro_f1", "accuracy", "predicted_label_counts"):
        assert summary[key] == local[key], key


def late_bad_line(export, input_path):
    with open(input_path, "a", encoding="utf-8") as fp:
        fp.write("这一行\t有\t太多\t列\n")


def corrupt_model(export, input_path):
    with open(os.path.join(export, "model.onnx"), "r+b") as fp:  # same size, other bytes
        fp.write(b"\x00garbage" * 64)


@pytest.mark.slow
@pytest.mark.parametrize("failure, extra, message", [
    (late_bad_line, [], "in.txt:1201: expected `text<TAB>gold label` as on line 1, found 3 tabs"),
    (corrupt_model, [], "model.onnx: sha256 differs from manifest.json (modified or corrupt); export again"),
    (None, ["--use_int8"], "--use_int8: this export has no int8 model; export it with --quantize int8"),
], ids=["bad line after 1200", "corrupt model on the workers", "no int8 model"])
def test_ray_fails_with_the_local_error_and_leaves_the_old_output(failure, extra, message, ray_cluster, trained,
                                                                   tmp_path, capsys):
    export = str(tmp_path / "export")
    shutil.copytree(os.path.join(trained[1], "export"), export)
    input_path = write_lines(tmp_path / "in.txt", 1200)
    if failure:
        failure(export, input_path)
    output = tmp_path / "out.tsv"
    output.write_text("earlier results\n", encoding="utf-8")
    common = ["--model_path_prefix", export, "--input_file", input_path, "--output_file", str(output),
              "--chunk_size", "200", "--device", "cpu", *extra]
    code, _, local_err = run_local(capsys, *common)
    assert code == 2 and message in local_err
    code, stdout, err = run_ray(ray_cluster, *common)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert error_line(err) == error_line(local_err)
    assert output.read_text(encoding="utf-8") == "earlier results\n"
    assert sorted(os.listdir(tmp_path)) == ["export", "in.txt", "out.tsv"]  # no temporary file left


# ---------------------------------------------------------------------------- without a cluster

def test_ray_flag_without_ray_installed_says_how_to_install(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    input_path = write_lines(tmp_path / "in.txt", 5)
    code, stdout, err = run_local(capsys, "--model_path_prefix", os.path.join(trained[1], "export"), "--input_file",
                                  input_path, "--output_file", str(tmp_path / "o.tsv"), "--ray", "auto")
    assert code == 2 and stdout == ""
    assert err.splitlines()[0] == "error: --ray: needs Ray: pip install -r requirements-ray.txt"
    assert not (tmp_path / "o.tsv").exists()


def test_an_address_without_a_cluster_is_refused_at_once(trained, tmp_path, capsys):
    require_ray()
    input_path = write_lines(tmp_path / "in.txt", 5)
    common = ["--model_path_prefix", os.path.join(trained[1], "export"), "--input_file", input_path, "--output_file",
              str(tmp_path / "o.tsv")]
    start = time.monotonic()
    with closed_port() as port:
        code, _, err = run_local(capsys, *common, "--ray", f"127.0.0.1:{port}")  # nothing listens there
    assert code == 2 and time.monotonic() - start < 15
    assert "error: --ray: no Ray cluster answers at " in err and "Connection refused" in err
    assert "ray start --head" in err and len(err.splitlines()) == 2  # the paragraph and the --debug hint
    for address in ("no-port", "ray://127.0.0.1:10001"):
        code, _, err = run_local(capsys, *common, "--ray", address)
        assert code == 2 and f"error: --ray: '{address}' is not `auto` or HOST:PORT" in err
    assert not (tmp_path / "o.tsv").exists()


CONNECT = """
import sys, time
sys.path.insert(0, '.')
import ray
from utils.errors import UserError
from utils.serving.ray_infer import connect
start = time.monotonic()
try:
    connect(ray, sys.argv[1], float(sys.argv[2]), {})
except UserError as exc:
    print(f"{time.monotonic() - start:.1f}", exc, sep="\\t")
"""


def test_a_port_that_is_no_ray_cluster_is_given_up_within_the_timeout():
    """Something answers TCP but is no Ray GCS: ray.init would retry for minutes; connect gives up."""
    require_ray()
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-c", CONNECT, address, "3"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
    seconds, message = result.stdout.strip().split("\t")
    assert 3 <= float(seconds) < 10
    assert message.startswith("--ray: no Ray cluster answered at ") and "within 3 s" in message


# ------------------------------------------------------------------ the scheduling, without Ray

class FakeRef:
    def __init__(self, worker, examples, finish):
        self.worker, self.examples, self.finish = worker, examples, finish


class FakeRay:
    """ray.wait/ray.get over FakeRefs: chunks finish in a scrambled order."""

    def __init__(self, seed=0):
        self.rng = random.Random(seed)
        self.outstanding = []  # refs sent and not yet fetched
        self.peak = 0

    def wait(self, refs, num_returns=1):
        ready = min(refs, key=lambda r: r.finish)
        return [ready], [r for r in refs if r is not ready]

    def get(self, ref):
        self.outstanding.remove(ref)
        probs = np.array([[len(e["text_a"]), 1.0] for e in ref.examples]) / 100
        return probs, f"node-{ref.worker.index}"


class FakeWorker:
    def __init__(self, fake_ray, index):
        self.fake_ray, self.index = fake_ray, index
        self.classify = self

    def remote(self, examples):
        ref = FakeRef(self, examples, self.fake_ray.rng.random())
        self.fake_ray.outstanding.append(ref)
        self.fake_ray.peak = max(self.fake_ray.peak, len(self.fake_ray.outstanding))
        return ref


def test_chunks_come_back_in_input_order_with_a_bounded_number_in_flight():
    from utils.serving.ray_infer import UNWRITTEN_PER_WORKER, classify_on_workers

    fake_ray = FakeRay()
    workers = [FakeWorker(fake_ray, i) for i in range(3)]
    infos = [{"node_ip": "10.0.0.1", "node_id": f"node-{i}"} for i in range(3)]
    chunks = [([{"text_a": "x" * (i % 50 + 1)} for _ in range(4)], None) for i in range(40)]
    stats = {"first_result": None, "nodes": {}}
    done = []
    results = list(classify_on_workers(fake_ray, workers, infos, stats)(iter(chunks), done.append))
    assert [r[0] for r in results] == [c[0] for c in chunks]  # input order, although finished scrambled
    for examples, _, probs in results:
        assert probs[:, 0].tolist() == [len(e["text_a"]) / 100 for e in examples]
    assert sum(done) == 160 and fake_ray.outstanding == []
    assert 3 < fake_ray.peak <= UNWRITTEN_PER_WORKER * 3  # several in flight, never more than the bound
    assert sorted(stats["nodes"]) == ["node-0", "node-1", "node-2"]
    assert sum(n["blocks"] for n in stats["nodes"].values()) == 40


def select_here_and_on_ray(ray_cluster, tmp_path, common, local_flags=()):
    """select.py with the flags `common`, here and with --ray: `({where: the TSV's rows}, {where: summary})`."""
    outputs, summaries = {}, {}
    for where, extra in (("local", list(local_flags)), ("ray", ["--ray", ray_cluster.address])):
        path = str(tmp_path / f"{where}.tsv")
        result = subprocess.run([sys.executable, *common, "--output_file", path, *extra], cwd=ROOT,
                                env=ray_cluster.env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
        with open(path, encoding="utf-8") as fp:
            outputs[where] = [line.split("\t") for line in fp.read().splitlines()]
        summaries[where] = json.loads(result.stdout)
    return outputs, summaries


def assert_same_picks(outputs, k):
    """The header and k picks; the same rank, line, text and prediction, the same score to 1e-5."""
    assert len(outputs["local"]) == 1 + k
    for local, ray in zip(outputs["local"], outputs["ray"]):
        assert local[:3] == ray[:3] and local[4:] == ray[4:]       # rank, line, text, prediction
        if local[0] != "rank":
            assert float(local[3]) == pytest.approx(float(ray[3]), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["entropy", "hybrid"])
def test_select_on_ray_picks_what_it_picks_locally(strategy, ray_cluster, trained, tmp_path):
    """select.py --ray scores the chunks on the cluster's workers (hybrid: with their mask_embedding)
    and picks the same texts, in the same order, with the same scores as on this machine."""
    export = os.path.join(trained[1], "export")
    input_path = write_lines(tmp_path / "pool.txt", 1200, gold=False, seed=5)
    common = ["select.py", "--model_path_prefix", export, "--input_file", input_path, "--k", "20",
              "--strategy", strategy, "--pool_size", "200", "--chunk_size", "300", "--device", "cpu"]
    outputs, summaries = select_here_and_on_ray(ray_cluster, tmp_path, common)
    nodes = summaries["ray"]["ray"]["nodes"]  # the ray run's: each node's worker scored some of the 4 chunks
    assert len(nodes) == 2 and all(n["blocks"] >= 1 for n in nodes.values())
    assert sum(n["texts"] for n in nodes.values()) == 1200
    assert_same_picks(outputs, 20)


@pytest.mark.slow
def test_ray_reads_long_documents_window_by_window_as_the_local_run(ray_cluster, trained_windows, tmp_path, capsys):
    """A --long_text window export: the workers split and aggregate as infer.py does locally, and the
    summary counts the same long texts and windows."""
    data_dir, out = trained_windows
    common = ["--model_path_prefix", os.path.join(out, "export"), "--input_file", os.path.join(data_dir, "test.txt"),
              "--chunk_size", "6", "--batch_size", "4", "--device", "cpu"]
    local_out, ray_out = str(tmp_path / "local.tsv"), str(tmp_path / "ray.tsv")
    code, stdout, err = run_local(capsys, *common, "--output_file", local_out, "--num_threads", "1")
    assert code == 0, err
    local = json.loads(stdout)
    code, stdout, err = run_ray(ray_cluster, *common, "--output_file", ray_out)
    assert code == 0, err
    summary = json.loads(stdout)
    with open(local_out, "rb") as a, open(ray_out, "rb") as b:
        assert a.read() == b.read()
    assert local["windows_read"] > local["texts"] == local["texts_longer_than_one_window"]
    for key in ("texts_longer_than_one_window", "windows_read", "texts_cut_by_max_windows", "accuracy"):
        assert summary[key] == local[key], key


@pytest.mark.slow
def test_select_on_ray_aggregates_long_documents_as_the_local_run(ray_cluster, trained_windows, tmp_path):
    """select.py --ray on a --long_text window export: the workers aggregate each document's windows
    (logits and vector) as select.py does locally: same picks, same scores, same window counts."""
    data_dir, out = trained_windows
    common = ["select.py", "--model_path_prefix", os.path.join(out, "export"), "--input_file",
              os.path.join(data_dir, "test.txt"), "--k", "10", "--strategy", "hybrid", "--chunk_size", "7",
              "--device", "cpu"]
    outputs, summaries = select_here_and_on_ray(ray_cluster, tmp_path, common, ["--num_threads", "1"])
    assert_same_picks(outputs, 10)
    for key in ("texts_longer_than_one_window", "windows_read", "texts_cut_by_max_windows"):
        assert summaries["ray"][key] == summaries["local"][key], key
    assert summaries["local"]["windows_read"] > summaries["local"]["texts_longer_than_one_window"] > 0
