"""infer.py over a Ray cluster (`infer.py --ray auto|HOST:PORT`): the same output file, computed on the nodes.

The driver (the infer.py process) reads and checks the input exactly as locally (utils/dataset/inputs.py,
same chunks), sends each chunk to a worker, and writes the rows in input order through the same
writer (`utils.deploy.predictor.classify_stream`): same rows, numbers, columns and summary as without
`--ray`. Workers are Ray actors, one per node (pinned to it), each holding one `Classifier`
loaded once from the export files the driver put in Ray's object store: the nodes need the
Python environment (same Ray, onnxruntime, tokenizers, numpy), not the export, the input or this
code (shipped as a runtime_env py_module).

Needs the optional extra: `pip install -r requirements-ray.txt` (or `make install-ray`).
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np


from ..errors import UserError
from ..deploy.bundle import read_decoder, read_labels, read_manifest, resolve_export_dir, verify_file
from ..deploy.format import LABELS_FILE, MANIFEST_FILE, PREPROCESS_FILE
from ..deploy.predictor import classify_stream, pick_model_file, seconds_since_process_start
from ..deploy.preprocess import read_config

__all__ = ["classify_file_on_ray", "RayWorkers", "CONNECT_TIMEOUT", "START_TIMEOUT"]

FLAG = "--ray"
INSTALL_HINT = "needs Ray: pip install -r requirements-ray.txt"
# ray.init retries an address that does not answer as a Ray cluster for minutes; we give up sooner.
CONNECT_TIMEOUT = 60.0
# Workers wait for free CPUs/GPUs on their node: a cluster busy with other jobs is reported, not waited for.
START_TIMEOUT = 300.0
# Chunks queued per worker (one running, one ready to start), and at most this many per worker
# sent but not yet written: the driver holds a bounded number of chunks, however long the input.
QUEUED_PER_WORKER = 2
UNWRITTEN_PER_WORKER = 4


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT, FLAG) from None
    return ray


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def bad_address(address: str) -> UserError:
    return UserError(f"{address!r} is not `auto` or HOST:PORT (the head's GCS address, as `ray start --head` "
                     "prints it; Ray Client `ray://` addresses are not supported: run infer.py on a node of the "
                     "cluster or submit it with `ray job submit`)", FLAG)


def probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast where a TCP connection to `address` (HOST:PORT) cannot even be opened: ray.init
    would retry for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise bad_address(address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc.strerror or exc or type(exc).__name__}); start "
                        "one with `ray start --head` (and `ray start --address HEAD:PORT` on the other nodes) and "
                        "give the head's HOST:PORT, or `auto` on a node of the cluster", FLAG) from None


def not_the_sigterm_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def run_bounded(fn, timeout: float, name: str):
    """`fn()` in a daemon thread (never blocks the exit), waited for at most `timeout` s: its value,
    its exception, or TimeoutError. The main thread keeps its signal handlers meanwhile."""
    outcome: Dict[str, object] = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(name)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def connect(ray, address: str, timeout: float, runtime_env: dict) -> str:
    """`ray.init` on `address` ("auto" or HOST:PORT), bounded by `timeout` seconds; returns the
    address connected to. Every failure is one `UserError` naming `--ray`."""
    try:
        from ray._private.services import canonicalize_bootstrap_address  # what ray.init resolves "auto" with
    except ImportError:  # a Ray without it: ray.init's own errors only
        canonicalize_bootstrap_address = None
    if address.startswith("ray://"):
        raise bad_address(address)
    if canonicalize_bootstrap_address is not None:
        try:
            resolved = canonicalize_bootstrap_address(address)
        except ConnectionError:
            raise UserError("no running Ray cluster found from this machine (RAY_ADDRESS is not set and no "
                            "`ray start` ran here); start one with `ray start --head`, or give the head's "
                            "HOST:PORT", FLAG) from None
        except ValueError:
            raise bad_address(address) from None
        if resolved:
            probe(resolved)
            address = resolved
    # In a thread, so that the wait is bounded and ray.init leaves infer.py's SIGTERM handler alone
    # (from the main thread it installs its own); it warns about the latter, which is the point.
    logging.getLogger("ray._private.worker").addFilter(not_the_sigterm_warning)
    try:
        # log_to_driver=False: workers' output must not reach stdout, which carries the summary.
        run_bounded(lambda: ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                                     runtime_env=runtime_env), timeout, "ray-connect")
    except TimeoutError:
        raise UserError(f"no Ray cluster answered at {address} within {timeout:.0f} s (is it a Ray head's GCS "
                        "port, 6379 by default, and the same Ray version as here?)", FLAG) from None
    except Exception as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first_line(exc)}", FLAG) from None
    return address


def export_files(export_dir: str, manifest: dict, model_file: str) -> Dict[str, np.ndarray]:
    """The files a Classifier reads, as uint8 arrays (zero-copy in Ray's object store), after the
    same checks as a local run (presence, size, sha256): a damaged export is named here, before
    any worker starts (which verify them again, as every Classifier does)."""
    names = [MANIFEST_FILE, LABELS_FILE, PREPROCESS_FILE, read_config(export_dir)["tokenizer"]["vocab_file"],
             model_file]
    for name in names[1:]:
        verify_file(export_dir, manifest, name)
    return {name: np.fromfile(os.path.join(export_dir, name), dtype=np.uint8) for name in names}


def load_shipped(files: Dict[str, np.ndarray], export_dir: str, options: dict):
    """`(Classifier, None)` from export files shipped by `export_files`, or `(None, [message, path,
    line])` of the `UserError` it raised, naming the driver's `export_dir` (an actor's constructor
    error reaches the driver unreadably: actors return this instead). Verified like a local export."""
    from ..deploy.classifier import Classifier

    local_dir = tempfile.mkdtemp(prefix="ptuning-export-")
    try:
        for name, data in files.items():
            with open(os.path.join(local_dir, name), "wb") as fp:
                fp.write(memoryview(data))
        return Classifier(local_dir, **options), None
    except UserError as exc:
        return None, [exc.message.replace(local_dir, export_dir),
                      exc.path.replace(local_dir, export_dir) if exc.path else None, exc.line]
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)  # everything is in memory once the session exists


class BlockWorker:
    """A Ray actor: the export loaded once into a `Classifier`, then `classify(examples)` per chunk."""

    def __init__(self, files: Dict[str, np.ndarray], export_dir: str, options: dict):
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.sort_by_length = options.pop("sort_by_length")
        self.classifier, self.error = load_shipped(files, export_dir, options)

    def info(self) -> dict:
        info = {"node_id": self.node_id, "node_ip": self.node_ip, "pid": os.getpid(), "error": self.error}
        if self.classifier is not None:
            info.update(labels=self.classifier.labels, pair=self.classifier.pair, device=self.classifier.device,
                        threads=self.classifier.num_threads, model_file=self.classifier.model.model_file)
        return info

    def memory_mb(self) -> dict:
        """This worker's resident and private (unshared: not the object store's pages) memory."""
        import psutil

        memory = psutil.Process().memory_full_info()
        return {"worker_rss_mb": round(memory.rss / 2 ** 20), "worker_uss_mb": round(memory.uss / 2 ** 20)}

    def classify(self, examples: List[dict]):
        """`(probabilities, the node that computed them)`, as a local run computes a chunk (softmax, or
        sigmoids for a multi-label export)."""
        import ray

        logits = self.classifier.model.logits(examples, batch_size=self.classifier.batch_size,
                                              sort_by_length=self.sort_by_length, progress=False)
        return self.classifier.model.decoder.probabilities(logits), ray.get_runtime_context().get_node_id()

    def window_counts(self) -> dict:
        """--long_text: the texts longer than one input and the inputs this worker read."""
        return self.classifier.model.window_counts.as_dict()

    def outputs(self, examples: List[dict], names: List[str]):
        """`({name: array}, the node)`: the export's outputs `names` for a chunk (utils/selection)."""
        import ray

        arrays = self.classifier.model.document_outputs(examples, names, batch_size=self.classifier.batch_size,
                                                        sort_by_length=self.sort_by_length)
        return arrays, ray.get_runtime_context().get_node_id()


def plan_workers(ray, device: Optional[str], num_threads: Optional[int]):
    """`(device, [(node, cpus, gpus, threads)])`: one worker per alive node that can host it; device
    defaults to gpu when the cluster has GPUs; a CPU worker reserves (and runs with) all its node's
    CPUs, or `num_threads` of them."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if device is None:
        device = "gpu" if any(n["Resources"].get("GPU", 0) >= 1 for n in nodes) else "cpu"
    plan = []
    for node in sorted(nodes, key=lambda n: n["NodeID"]):
        cpus = int(node["Resources"].get("CPU", 0))
        if device == "gpu" and node["Resources"].get("GPU", 0) >= 1:
            plan.append((node, min(1, cpus), 1, None))
        elif device == "cpu" and cpus >= 1:
            threads = min(num_threads or cpus, cpus)
            plan.append((node, threads, 0, threads))
    if not plan:
        raise UserError(f"no alive node of the cluster has a {'GPU' if device == 'gpu' else 'CPU'} to run a worker "
                        f"({len(nodes)} node(s) alive)", FLAG)
    return device, plan


def start_workers(ray, plan, files_ref, export_dir: str, options: dict, timeout: float):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(BlockWorker)
    workers = []
    for node, cpus, gpus, threads in plan:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        workers.append(actor.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy, max_restarts=0)
                       .remote(files_ref, export_dir, dict(options, num_threads=threads)))
    try:
        infos = ray.get([w.info.remote() for w in workers], timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"the {len(workers)} worker(s) (one per node) did not all start within {timeout:.0f} s: the "
                        "nodes' CPUs/GPUs are taken by other jobs (`ray status` shows them)", FLAG) from None
    except ray.exceptions.RayError as exc:
        raise UserError(f"a worker could not start: {first_line(exc)}", FLAG) from None
    for info in infos:
        if info["error"]:
            raise UserError(*info["error"])
    return workers, infos


def classify_on_workers(ray, workers, infos, stats: dict, call=None):
    """`classify_chunks` for `classify_stream`: each chunk to the least busy worker, results
    yielded in input order; at most UNWRITTEN_PER_WORKER chunks per worker held at a time.
    `call(worker, examples)`: the remote call per chunk (default: `worker.classify.remote`); the
    second item of each chunk is passed through untouched."""
    call = call or (lambda worker, examples: worker.classify.remote(examples))

    def classify_chunks(chunks, on_texts):
        pending = collections.deque()  # [examples, gold, ref, worker, done], input order
        queued = [0] * len(workers)
        by_ref = {}
        exhausted = False
        while True:
            while not exhausted and len(pending) < UNWRITTEN_PER_WORKER * len(workers):
                w = min(range(len(workers)), key=queued.__getitem__)
                if queued[w] >= QUEUED_PER_WORKER:
                    break
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                ref = call(workers[w], chunk[0])
                queued[w] += 1
                by_ref[ref] = [chunk[0], chunk[1], ref, w, False]
                pending.append(by_ref[ref])
                del chunk
            if not pending:
                return
            if not pending[0][4]:
                ready, _ = ray.wait([entry[2] for entry in pending if not entry[4]], num_returns=1)
                for ref in ready:
                    entry = by_ref.pop(ref)
                    entry[4] = True
                    queued[entry[3]] -= 1
                continue
            examples, gold, ref, w, _ = pending.popleft()
            probs, node_id = fetch(ray, ref, infos[w])
            if stats.get("first_result") is None:
                stats["first_result"] = time.time()
            node = stats["nodes"].setdefault(node_id, {"ip": infos[w]["node_ip"], "blocks": 0, "texts": 0})
            node["blocks"] += 1
            node["texts"] += len(examples)
            on_texts(len(examples))
            yield examples, gold, probs
            del examples, gold, probs  # before the next chunk is read

    return classify_chunks


def fetch(ray, ref, info: dict):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError:
        raise  # an exception inside classify is a bug: its traceback
    except ray.exceptions.RayError as exc:  # the worker or its node is gone
        raise UserError(f"the worker on node {info['node_ip']} ({info['node_id'][:8]}) stopped: {first_line(exc)}; "
                        "nothing was written, run again", FLAG) from None


class RayWorkers:
    """The cluster side of a streamed run, as a context manager: connected, one worker per node
    holding the export, shut down on exit. `classify_chunks(call=None)` is what `classify_stream`
    (and select.py's scoring) iterates; `memory()` adds the workers' memory to `stats`."""

    def __init__(self, address: str, model_path: str, device: Optional[str] = None,
                 num_threads: Optional[int] = None, use_fp16: bool = False, use_int8: bool = False,
                 max_seq_length: Optional[int] = None, batch_size: int = 32, sort_by_length: bool = True,
                 connect_timeout: float = CONNECT_TIMEOUT, start_timeout: float = START_TIMEOUT):
        self.ray = import_ray()
        self.export_dir = resolve_export_dir(model_path)
        self.manifest = read_manifest(self.export_dir)  # a broken export is reported before any cluster is involved
        self.labels = read_labels(self.export_dir)
        self.settings = dict(address=address, device=device, num_threads=num_threads, use_fp16=use_fp16,
                             use_int8=use_int8, max_seq_length=max_seq_length, batch_size=batch_size,
                             sort_by_length=sort_by_length, connect_timeout=connect_timeout,
                             start_timeout=start_timeout)

    def __enter__(self) -> "RayWorkers":
        ray, settings = self.ray, self.settings
        # The workers import this package from the driver's copy: the nodes need only the environment.
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # all of utils/, not serving/
        self.address = connect(ray, settings["address"], settings["connect_timeout"],
                               runtime_env={"py_modules": [package_dir]})
        try:
            self.device, plan = plan_workers(ray, settings["device"], settings["num_threads"])
            self.model_file = pick_model_file(self.manifest, self.export_dir, self.device, settings["use_fp16"],
                                              settings["use_int8"])
            files_ref = ray.put(export_files(self.export_dir, self.manifest, self.model_file))
            options = dict(device=self.device, **{k: settings[k] for k in (
                "use_fp16", "use_int8", "max_seq_length", "batch_size", "sort_by_length")})
            self.workers, self.infos = start_workers(ray, plan, files_ref, self.export_dir, options,
                                                     settings["start_timeout"])
            del files_ref  # the workers have loaded it: let the object store free it
        except BaseException:
            ray.shutdown()
            raise
        self.stats = {"first_result": None, "nodes": {info["node_id"]: {"ip": info["node_ip"], "blocks": 0,
                                                                        "texts": 0} for info in self.infos}}
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()  # the workers end with this driver

    def classify_chunks(self, call=None):
        return classify_on_workers(self.ray, self.workers, self.infos, self.stats, call)

    def memory(self) -> None:
        try:  # a report, not a result: never worth failing the run for
            for info, memory in zip(self.infos, self.ray.get([w.memory_mb.remote() for w in self.workers],
                                                             timeout=60)):
                self.stats["nodes"][info["node_id"]].update(memory)
        except self.ray.exceptions.RayError:
            pass

    def add_window_counts(self, summary: dict) -> None:
        """--long_text: the workers' counts summed, as a local run reports them (infer.py's summary)."""
        from ..deploy.preprocess import read_config
        from ..task.windows import LongText

        if not LongText.from_dict(read_config(self.export_dir).get("long_text"), ValueError).active:
            return
        for counts in self.ray.get([w.window_counts.remote() for w in self.workers], timeout=60):
            for key, value in counts.items():
                summary[key] = summary.get(key, 0) + value

    def report(self, summary: dict, **fields) -> dict:
        """`summary` with the run's model, device, first result, `fields` and `ray` (address, workers, nodes)."""
        if self.stats["first_result"] is not None:
            summary["first_prediction_seconds"] = seconds_since_process_start(self.stats["first_result"])
        summary.update(model=os.path.join(self.export_dir, self.model_file), device=self.device, **fields)
        summary["ray"] = {"address": self.address, "workers": len(self.workers), "nodes": self.stats["nodes"]}
        return summary


def classify_file_on_ray(address: str, model_path: str, input_path: str, output_path: str, top_k: int = 1,
                         sort_by_length: bool = True, chunk_size: Optional[int] = None,
                         progress: Optional[bool] = None, device: Optional[str] = None,
                         num_threads: Optional[int] = None, use_fp16: bool = False, use_int8: bool = False,
                         max_seq_length: Optional[int] = None, batch_size: int = 32,
                         connect_timeout: float = CONNECT_TIMEOUT, start_timeout: float = START_TIMEOUT,
                         reject_threshold: Optional[float] = None, other_label: Optional[str] = None) -> dict:
    """`Classifier(model_path, ...).classify_file(input_path, output_path, ...)` on the Ray cluster at
    `address` ("auto" or HOST:PORT): the same file and summary, plus `ray` (address, and per node id
    its IP, the chunks and texts it classified, and its worker's memory at the end). Options as
    `Classifier`'s, except: device defaults to gpu when the cluster has GPUs, and num_threads to
    each node's CPUs."""
    cluster = RayWorkers(address, model_path, device, num_threads, use_fp16, use_int8, max_seq_length, batch_size,
                         sort_by_length, connect_timeout, start_timeout)
    from ..task.calibration import decoder_with_reject

    decoder = decoder_with_reject(read_decoder(cluster.export_dir, cluster.manifest, cluster.labels),
                                  reject_threshold, other_label)
    with cluster:
        infos = cluster.infos
        summary = classify_stream(input_path, output_path, infos[0]["labels"], infos[0]["pair"],
                                  cluster.classify_chunks(), top_k=top_k, chunk_size=chunk_size, progress=progress,
                                  batch_size=batch_size, decoder=decoder)
        cluster.add_window_counts(summary)
        cluster.memory()
    return cluster.report(summary, output_file=output_path)
