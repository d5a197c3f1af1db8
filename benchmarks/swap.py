"""serve.py with several models, and zero-downtime swaps under load (issue 28).

    python benchmarks/swap.py [--export DIR] [--clients 32] [--swaps 10] [--threads 2] [--duration 20]

Without --export: bench.py's tiny keyword export (trained once, cached in benchmarks/work/). Two
copies of the export, A and B (B's manifest edited so that it is another version), in
benchmarks/work/swap/exports. Each part runs serve.py in its own process (benchmarks/bench.py's
`Server`) and benchmarks/load.py's closed-loop clients against it:

* memory: the server's RSS once ready and after one request to each model, with 1, 2 and 4
  models loaded (`--model m0=A --model m1=A ...`: each its own onnxruntime session);
* idle neighbour: texts/s of model m0 served alone, and beside a second model that gets no
  requests (alternated, `--repeats` times each);
* swaps under load: `--clients` clients on /models/cls_default for `--duration` seconds without
  swaps (steady state, before and after; before it, 10 s of the same load not counted), then from 2 s before to 1 s after the script swaps the
  model `--swaps` times back to back (POST /admin/models/cls_default: A, B, A, ...): failed requests, the versions the
  answers name (every one must be A's or B's), p99 during the swaps against steady state; every
  request of that phase in benchmarks/work/swap/timeline-*.json (load.py --timeline) and each swap's
  wall-clock start and end in the results (`swap_moments`), to see when the slow requests happen;
* `--only busy_pair` (not by default): two models, each with half the clients at once: each one's
  texts/s and p99 (how `--instances auto` shares the cores between busy models);
* `--only swaps_interleaved` (not by default): the same swaps with `--gap` s of steady load before each
  and after the last, in one load run; steady state is the requests that end between the swaps (a
  request counts for a swap from its POST to 1 s after its answer); `--sham_s S`: after each run a sham
  one (no swap, S s of load in each swap's place), the ratio a free swap would read;
  `--only ray_swaps_interleaved`: the same with serve.py --ray (as `ray_swaps` below);
* `--only neighbours` (not by default): no swap; the steady load beside a process at nice 19 doing one
  kind of a swap's work over and over (a pure-CPU loop, copying 108 MB, hashing the model file, building its
  onnxruntime session; `KIND/idle`: the same under the SCHED_IDLE policy), to see which of it raises p99
  though it only gets the CPU the model leaves;
* `--only ray_swaps` (not by default: a Ray cluster): the same with serve.py --ray on a local
  cluster of 2 one-CPU nodes, one replica: each swap a Ray Serve rollout; the clients come in through
  the head node's Serve proxy only (node_b's listens on a port of its own).

Writes benchmarks/results_swap.json and prints the table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)

from bench import PY, Server, keyword_export, log  # noqa: E402

WORK = os.path.join(ROOT, "benchmarks", "work")
ADMIN_KEY = "benchmark-admin-key-0123456789abcdef"
WARM_UP_S = 10  # seconds of load before the steady state is measured (not counted)


def prepare(export: str, work: str) -> Dict[str, str]:
    """Copies A and B of `export`; B's manifest says another creation time, so it is another version."""
    paths = {name: os.path.join(work, "exports", name) for name in ("a", "b")}
    for name, path in paths.items():
        if os.path.isdir(path):
            shutil.rmtree(path)
        shutil.copytree(export, path)
    manifest_path = os.path.join(paths["b"], "manifest.json")
    with open(manifest_path, encoding="utf-8") as fp:
        manifest = json.load(fp)
    manifest["created"] = f"{manifest.get('created', '')} (copy B)"
    with open(manifest_path, "w", encoding="utf-8") as fp:
        json.dump(manifest, fp, ensure_ascii=False, indent=2)
    return paths


def input_file(work: str) -> str:
    from utils.testing.synthetic import make_split
    import random

    path = os.path.join(work, "texts.txt")
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("\n".join(make_split(random.Random(7), 700, min_len=5, max_len=40)) + "\n")
    return path


class Models(Server):
    """serve.py with `models` ({name: export}) and `extra` flags."""

    def __init__(self, models: Dict[str, str], threads: int, extra: List[str], log_path: str):
        super().__init__("", threads, extra, log_path)
        flags = [word for name, path in models.items() for word in ("--model", f"{name}={path}")]
        self.cmd = [PY, "serve.py", *flags, "--host", "127.0.0.1", "--num_threads", str(threads), *extra]


def call(url: str, body=None, key: str = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                     headers={"content-type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=600) as response:
        return json.loads(response.read())


def load(url: str, texts: str, clients: int, duration: float, stop_file: str = None,
         timeline: str = None) -> subprocess.Popen:
    return subprocess.Popen([PY, os.path.join(ROOT, "benchmarks", "load.py"), "--url", url, "--input_file", texts,
                             "--clients", str(clients), "--requests", str(10 ** 9), "--duration", str(duration),
                             *(["--stop_file", stop_file] if stop_file else []),
                             *(["--timeline", timeline] if timeline else [])],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def load_until_stopped(url: str, texts: str, clients: int, work: str, prefix: str):
    """`load` that runs until its stop file exists, every request in a timeline file:
    `(process, stop file, timeline path)`."""
    stop = os.path.join(work, "stop-load")
    if os.path.exists(stop):
        os.remove(stop)
    timeline = os.path.join(work, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return load(url, texts, clients, 3600, stop, timeline), stop, timeline


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    return json.loads(out.strip().splitlines()[-1])


def memory(paths: Dict[str, str], threads: int, work: str) -> List[dict]:
    rows = []
    for count in (1, 2, 4):
        models = {f"m{i}": paths["a"] for i in range(count)}
        with Models(models, threads, [], os.path.join(work, f"memory-{count}.log")) as server:
            ready = server.rss_mb()
            for name in models:
                call(server.url + f"/models/{name}", {"data": {"text": ["苹果和香蕉"]}})
            rows.append({"models": count, "rss_ready_mb": round(ready, 1), "rss_after_requests_mb":
                         round(server.rss_mb(), 1)})
        log(f"memory: {rows[-1]}")
    return rows


def idle_neighbour(paths: Dict[str, str], threads: int, texts: str, clients: int, duration: float, repeats: int,
                   work: str) -> dict:
    runs = {"alone": [], "beside an idle model": []}
    for _ in range(repeats):
        for case, models in (("alone", {"m0": paths["a"]}), ("beside an idle model", {"m0": paths["a"],
                                                                                     "m1": paths["b"]})):
            with Models(models, threads, [], os.path.join(work, "idle.log")) as server:
                result = finish(load(server.url + "/models/m0", texts, clients, duration))
            runs[case].append(result["texts_per_s"])
            log(f"idle neighbour, {case}: {result['texts_per_s']} texts/s")
    return {case: {"texts_per_s": values, "median": statistics.median(values)} for case, values in runs.items()}


def busy_pair(paths: Dict[str, str], threads: int, texts: str, clients: int, duration: float, repeats: int,
              work: str) -> List[dict]:
    """Two models busy at once (`clients` / 2 closed-loop clients on each, `duration` s after 10 s not
    counted): each one's texts/s and p99, every repeat."""
    runs = []
    for _ in range(repeats):
        with Models({"m0": paths["a"], "m1": paths["b"]}, threads, [], os.path.join(work, "busy.log")) as server:
            urls = [server.url + f"/models/{name}" for name in ("m0", "m1")]
            for proc in [load(url, texts, clients // 2, WARM_UP_S) for url in urls]:
                finish(proc)
            results = [finish(proc) for proc in [load(url, texts, clients // 2, duration) for url in urls]]
        runs.append({"texts_per_s": [r["texts_per_s"] for r in results],
                     "p99_ms": [r["latency_ms"]["p99"] for r in results],
                     "p50_ms": [r["latency_ms"]["p50"] for r in results]})
        log(f"two busy models: {runs[-1]}")
    return runs


def admin_key_file(work: str) -> str:
    """The admin key file every swapping server here is started with (holds ADMIN_KEY)."""
    keys = os.path.join(work, "admin_keys.txt")
    with open(keys, "w", encoding="utf-8") as fp:
        fp.write(ADMIN_KEY + "\n")
    return keys


def swaps_under_load(paths: Dict[str, str], threads: int, texts: str, clients: int, duration: float, swaps: int,
                     work: str, measure=None) -> dict:
    """serve.py serving A as cls_default, `measure(url, paths, texts, clients, duration, swaps, work)`
    against it (measure_swaps by default)."""
    with Models({"cls_default": paths["a"]}, threads, ["--admin_key_file", admin_key_file(work)],
                os.path.join(work, "swaps.log")) as server:
        return (measure or measure_swaps)(server.url, paths, texts, clients, duration, swaps, work)


def measure_swaps(base_url: str, paths: Dict[str, str], texts: str, clients: int, duration: float, swaps: int,
                  work: str) -> dict:
    """Steady load, then `swaps` swaps A, B, A, ... under the same load, then steady load again."""
    url, admin = base_url + "/models/cls_default", base_url + "/admin/models/cls_default"
    versions = {"a": call(base_url + "/labels")["model_version"]}
    # Not counted: a fresh server's first seconds under load (first batches of each length, memory
    # arenas growing) raised the "before" p99 above the "after" one in every repeat (BENCHMARKS.md).
    finish(load(url, texts, clients, WARM_UP_S))
    before = finish(load(url, texts, clients, duration))
    log(f"steady (before): p99 {before['latency_ms']['p99']} ms, {before['texts_per_s']} texts/s")
    running, stop, timeline = load_until_stopped(url, texts, clients, work, "timeline")  # until the swaps are done
    time.sleep(2)  # the clients are at full speed
    started, outcomes, moments = time.monotonic(), [], []
    for index in range(swaps):
        name = "b" if index % 2 == 0 else "a"
        sent = time.time()
        outcome = call(admin, {"path": paths[name]}, ADMIN_KEY)
        moments.append([sent, time.time()])  # wall clock, as the timeline's
        versions[name] = outcome["model_version"]
        outcomes.append(outcome["seconds"])
    swapping = time.monotonic() - started
    time.sleep(1)  # the requests of the last swap's moment are counted
    open(stop, "w").close()
    during = finish(running)
    log(f"during {swaps} swaps ({swapping:.1f} s): p99 {during['latency_ms']['p99']} ms, errors "
        f"{during['errors']}, versions {during['versions']}")
    after = finish(load(url, texts, clients, duration))
    log(f"steady (after): p99 {after['latency_ms']['p99']} ms")
    steady_p99 = statistics.mean([before["latency_ms"]["p99"], after["latency_ms"]["p99"]])
    slow_by_tenth = slow_share_by_tenth(timeline, moments, steady_p99 / 1000)
    log(f"requests slower than steady p99, % by tenth of a swap: {slow_by_tenth}")
    unknown = {v: n for v, n in during["versions"].items() if v not in versions.values()}
    return {"clients": clients, "swaps": swaps, "swap_seconds": outcomes, "swapping_s": round(swapping, 2),
            "swap_moments": moments, "timeline": os.path.relpath(timeline, ROOT),
            "steady_load_s": duration, "before": before, "during": during, "after": after, "versions": versions,
            "answers_of_other_versions": unknown, "failed_requests": during["errors"],
            "slow_percent_by_tenth": slow_by_tenth,
            "p99_ratio": round(during["latency_ms"]["p99"] / steady_p99, 3)}


def slow_share_by_tenth(timeline: str, moments: List[List[float]], slow_s: float) -> List[float]:
    """Of the requests that end inside a swap, the % slower than `slow_s` (steady p99) in each tenth
    of the swap they end in: where in a swap (its start: the previous one's switch and this one's
    manifest, hashing and session build; its end: warm-up and the switch) the slow requests are."""
    with open(timeline, encoding="utf-8") as fp:
        requests = json.load(fp)  # [start, seconds, status, version], wall clock
    counts = [[0, 0] for _ in range(10)]
    for start, seconds, _status, _version in requests:
        end = start + seconds
        for began, ended in moments:
            if began <= end < ended:
                tenth = min(int(10 * (end - began) / (ended - began)), 9)
                counts[tenth][0] += 1
                counts[tenth][1] += seconds > slow_s
                break
    return [round(100 * slow / max(1, total), 1) for total, slow in counts]


def measure_interleaved(base_url: str, paths: Dict[str, str], texts: str, clients: int, swaps: int, gap: float,
                        work: str, sham_s: float = 0.0) -> dict:
    """The swaps of the service at `base_url` (one process's or serve.py --ray's) with the steady
    state measured between them, in one load run: `gap` s of steady load,
    a swap, `gap` s, a swap, ..., `gap` s. A request counts for the swaps if it ends from a swap's
    POST to 1 s after its answer (as the back-to-back protocol's 1 s after), for steady state if it
    ends anywhere else after the first 2 s: a machine that drifts over minutes touches both alike.
    `sham_s` > 0: no swap, `sham_s` s of the same load in its place (the protocol's own noise: the
    ratio a swap that cost nothing would read)."""
    url, admin = base_url + "/models/cls_default", base_url + "/admin/models/cls_default"
    versions = {"a": call(base_url + "/labels")["model_version"]}
    finish(load(url, texts, clients, WARM_UP_S))  # not counted, as in measure_swaps
    running, stop, timeline = load_until_stopped(url, texts, clients, work, "timeline-interleaved")
    time.sleep(2)
    counted_from, moments, seconds = time.time(), [], []
    for index in range(swaps):
        time.sleep(gap)
        name = "b" if index % 2 == 0 else "a"
        sent = time.time()
        if sham_s:
            time.sleep(sham_s)
        else:
            outcome = call(admin, {"path": paths[name]}, ADMIN_KEY)
            versions[name], seconds = outcome["model_version"], seconds + [outcome["seconds"]]
        moments.append([sent, time.time()])
    time.sleep(gap)
    open(stop, "w").close()
    whole = finish(running)
    with open(timeline, encoding="utf-8") as fp:
        windows = split_by_windows(json.load(fp), moments, counted_from, after_s=1.0)
    unknown = {v: n for v, n in whole["versions"].items() if v not in versions.values()}
    result = {"clients": clients, "swaps": swaps, "gap_s": gap, "sham_s": sham_s, "swap_seconds": seconds,
              "swap_moments": moments,
              "timeline": os.path.relpath(timeline, ROOT), "whole_run": whole, "versions": versions,
              "answers_of_other_versions": unknown, "failed_requests": whole["errors"], **windows,
              "p99_ratio": round(windows["swaps_window"]["p99_ms"] / windows["steady_window"]["p99_ms"], 3)}
    steady, during = windows["steady_window"], windows["swaps_window"]
    log(f"interleaved{' (sham)' if sham_s else ''}: steady p99 {steady['p99_ms']} ms ({steady['requests']} requests), "
        f"during swaps {during['p99_ms']} ms ({during['requests']}): {result['p99_ratio']}x; failed {whole['errors']}, "
        f"other versions {unknown}")
    return result


def split_by_windows(requests: List[list], moments: List[List[float]], counted_from: float,
                     after_s: float) -> dict:
    """Successful requests (load.py's timeline: [start, seconds, status, version]) ending at or after
    `counted_from`, split by when they end: in [swap POST, its answer + `after_s`) of some swap, or not;
    each side's count and nearest-rank p50 / p99 (load.py's), and each steady gap's p99 (its spread)."""
    from load import percentile

    swapping, steady, gaps = [], [], [[] for _ in range(len(moments) + 1)]
    for start, seconds, status, _version in requests:
        end = start + seconds
        if status != "200" or end < counted_from:
            continue
        if any(began <= end < ended + after_s for began, ended in moments):
            swapping.append(seconds)
            continue
        steady.append(seconds)
        gaps[sum(end >= began for began, _ in moments)].append(seconds)

    def summary(values: List[float]) -> dict:
        values = sorted(values)
        ms = lambda q: None if not values else round(1000 * percentile(values, q), 2)  # noqa: E731
        return {"requests": len(values), "p50_ms": ms(50), "p99_ms": ms(99)}

    return {"swaps_window": summary(swapping), "steady_window": summary(steady),
            "steady_gaps_p99_ms": [summary(gap)["p99_ms"] for gap in gaps]}


NEIGHBOUR = r"""
import hashlib, os, sys, time
(kind, _, policy), model, until = sys.argv[1].partition("/"), sys.argv[2], time.monotonic() + float(sys.argv[3])
if policy == "idle":  # SCHED_IDLE instead of nice 19 alone: a waking normal thread preempts it at once
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
if kind == "memory":
    import numpy as np
    source = np.ones(108 * 2 ** 20, np.uint8)
    target = np.empty_like(source)
while time.monotonic() < until:
    if kind == "cpu":        # the interpreter's own loop: a core's worth of work, next to no memory traffic
        sum(range(100000))
    elif kind == "memory":   # the model's size copied: memory traffic, little else
        np.copyto(target, source)
    elif kind == "sha256":   # what a swap's check does to the model file
        digest = hashlib.sha256()
        with open(model, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
    elif kind == "session":  # what a swap's load does: an onnxruntime session of the model, built and dropped
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
"""
NEIGHBOURS = ("none", "cpu", "cpu/idle", "memory", "sha256", "session", "session/idle")  # KIND/idle: SCHED_IDLE


def neighbours(paths: Dict[str, str], threads: int, texts: str, clients: int, duration: float, repeats: int,
               work: str) -> dict:
    """Steady load with a process at nice 19 beside the server doing one kind of a swap's work
    (`NEIGHBOUR`), without any swap: which of that work raises the serving model's p99 although
    it gets only the CPU the model leaves. The kinds alternate within a repeat (a drifting
    machine touches all alike); ratios are against "none" of the same repeat."""
    runs = {kind: [] for kind in NEIGHBOURS}
    model = os.path.join(paths["a"], "model.onnx")
    with Models({"cls_default": paths["a"]}, threads, [], os.path.join(work, "neighbours.log")) as server:
        url = server.url + "/models/cls_default"
        finish(load(url, texts, clients, WARM_UP_S))
        for repeat in range(repeats):
            order = NEIGHBOURS if repeat % 2 == 0 else NEIGHBOURS[:1] + NEIGHBOURS[:0:-1]
            for kind in order:
                beside = None if kind == "none" else subprocess.Popen(
                    ["nice", "-n", "19", PY, "-c", NEIGHBOUR, kind, model, str(duration + 5)], cwd=ROOT)
                time.sleep(0 if beside is None else 2)  # the neighbour is at work when the load starts
                result = finish(load(url, texts, clients, duration))
                if beside is not None:
                    beside.kill()
                    beside.wait()
                runs[kind].append({"p99_ms": result["latency_ms"]["p99"], "p50_ms": result["latency_ms"]["p50"],
                                   "texts_per_s": result["texts_per_s"]})
                log(f"neighbour {kind} (repeat {repeat + 1}): p99 {result['latency_ms']['p99']} ms, "
                    f"{result['texts_per_s']} texts/s")
    summary = {}
    for kind, values in runs.items():
        ratios = [v["p99_ms"] / none["p99_ms"] for v, none in zip(values, runs["none"])]
        summary[kind] = {"runs": values, "p99_ratio_to_none": [round(r, 3) for r in ratios],
                         "median_p99_ratio": round(statistics.median(ratios), 3)}
    return summary


def pin_nodes(processes: List[subprocess.Popen]) -> None:
    """Node i's processes, every thread of each, on CPU i (so every worker its raylet starts later too):
    the local cluster as machines of one core each, where a rollout's surge replica starting on one node
    does not run on the other node's core."""
    children: Dict[int, List[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fp:
                ppid = int(fp.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    for index, process in enumerate(processes):
        stack = [process.pid]
        while stack:
            pid = stack.pop()
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), {index})
            except OSError:
                pass  # gone meanwhile
            stack += children.get(pid, [])


def ray_swaps_under_load(paths: Dict[str, str], texts: str, clients: int, duration: float, swaps: int,
                         work: str, measure=None, pin: bool = False) -> dict:
    """serve.py --ray on a local cluster of 2 nodes of 1 CPU (one replica of 1 thread; the other
    node's CPU is the rollout's surge replica), the same measurement: each swap a Ray Serve rollout.
    `measure(url, paths, texts, clients, duration, swaps, work)`: measure_swaps by default. `pin`: node i
    on CPU i (`pin_nodes`)."""
    import signal

    from utils.testing.ray_local import LocalRayCluster, free_ports

    keys = admin_key_file(work)
    port, worker_proxy_port = free_ports(2)
    cluster = LocalRayCluster(["node_a", "node_b"], cpus=1, start_timeout=180)
    # Both "nodes" are this machine: Serve's proxy on node_b would share the head's port (SO_REUSEPORT) and the
    # kernel would split the clients' connections between the two proxies whenever a replica runs on node_b,
    # a second proxy's work on the same 2 cores that a cluster of two machines does not have (BENCHMARKS.md).
    # node_b's proxy listens on a port of its own: the clients come in through the head node's, as through
    # one machine's entry point.
    cluster.env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(worker_proxy_port)
    with cluster, open(os.path.join(work, "ray-swaps.log"), "w") as log_file:
        if pin:
            pin_nodes(cluster.processes)
        proc = subprocess.Popen([PY, "serve.py", "--ray", cluster.address, "--port", str(port), "--model",
                                 f"cls_default={paths['a']}", "--num_threads", "1", "--device", "cpu",
                                 "--admin_key_file", keys], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                                stderr=log_file, text=True)
        try:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"serve.py --ray did not start; see {log_file.name}")
            served = json.loads(line)
            result = (measure or measure_swaps)(served["url"], paths, texts, clients, duration, swaps, work)
            result["served"] = served
        finally:
            proc.send_signal(signal.SIGTERM)
            result_code = proc.wait(300)
        log(f"serve.py --ray exited {result_code}")
    return result


def table(results: dict) -> str:
    swap = results["swaps"]
    lines = ["| measurement | value | target |", "|---|---|---|"]
    for row in results["memory"]:
        lines.append(f"| RSS, {row['models']} model(s): ready / after one request each | {row['rss_ready_mb']} / "
                     f"{row['rss_after_requests_mb']} MB | |")
    idle = results["idle"]
    alone, beside = idle["alone"]["median"], idle["beside an idle model"]["median"]
    lines.append(f"| one model's texts/s alone / beside an idle one | {alone} / {beside} ({beside / alone:.2f}×) | "
                 "unchanged |")
    lines += [f"| failed requests during {swap['swaps']} swaps ({swap['during']['requests']} requests, "
              f"{swap['clients']} clients) | {swap['failed_requests']} | 0 |",
              f"| answers naming neither version | {sum(swap['answers_of_other_versions'].values())} | 0 |",
              f"| p99 steady (before / after) | {swap['before']['latency_ms']['p99']} / "
              f"{swap['after']['latency_ms']['p99']} ms | |",
              f"| p99 during swaps | {swap['during']['latency_ms']['p99']} ms (**{swap['p99_ratio']}×**) | ≤ 1.2× |",
              f"| one swap (load, sha256, checks, sample, warm-up), median | "
              f"{statistics.median(swap['swap_seconds']):.2f} s | |"]
    if "swaps_runs" in results:
        runs = results["swaps_runs"]
        lines.append(f"| every run: p99 ratio / failed requests | "
                     f"{', '.join(str(r['p99_ratio']) for r in runs)} / {sum(r['failed_requests'] for r in runs)} | |")
    return "\n".join(lines)


def interleaved_runs(args, serve_and_measure) -> tuple:
    """`args.repeats` runs of measure_interleaved, `serve_and_measure(measure)` starting the service
    for each; with --sham_s, a sham run after each real one (the same drift touches both): (real runs,
    sham runs)."""
    runs, shams = [], []
    for _ in range(args.repeats):
        for sham_s, into in ((0.0, runs), *(((args.sham_s, shams),) if args.sham_s else ())):
            def measure(url, paths, texts, clients, _duration, swaps, work, sham_s=sham_s):
                return measure_interleaved(url, paths, texts, clients, swaps, args.gap, work, sham_s)
            into.append(serve_and_measure(measure))
    log(f"interleaved, every repeat's p99 ratio: {[run['p99_ratio'] for run in runs]}; sham: "
        f"{[run['p99_ratio'] for run in shams]}")
    return runs, shams


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", help="An export directory (default: bench.py's tiny keyword export).")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of each load run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each idle-neighbour case and of the swaps.")
    parser.add_argument("--gap", type=float, default=10.0,
                        help="swaps_interleaved: seconds of steady load before each swap and after the last.")
    parser.add_argument("--sham_s", type=float, default=0.0,
                        help="swaps_interleaved: after each run, a sham run: no swap, this many seconds of load "
                             "in each swap's place (the protocol's own noise).")
    parser.add_argument("--pin_nodes", action="store_true",
                        help="ray_swaps_interleaved: node i of the local cluster on CPU i (machines of one core each).")
    parser.add_argument("--only", choices=("memory", "idle", "busy_pair", "swaps", "swaps_interleaved", "ray_swaps",
                                           "ray_swaps_interleaved", "neighbours"),
                        action="append",
                        help="ray_swaps (not run by default): the swaps under load with serve.py --ray; "
                             "neighbours (not by default): steady load beside a nice-19 process doing one kind of "
                             "a swap's work (which of it costs the serving model's p99); busy_pair (not by "
                             "default): two models, each with half the clients; swaps_interleaved (not by "
                             "default): the swaps with `--gap` s of steady load before each, steady state measured "
                             "in those gaps of the same load run.")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results_swap.json"))
    args = parser.parse_args(argv)
    work = os.path.join(WORK, "swap")
    os.makedirs(work, exist_ok=True)
    export = args.export or keyword_export(WORK)
    paths, texts = prepare(export, work), input_file(work)
    parts = args.only or ["memory", "idle", "swaps"]
    out = args.out
    results = json.load(open(out)) if os.path.isfile(out) and args.only else {}
    results.update({"export": export, "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "load_average": os.getloadavg()})
    if "memory" in parts:
        results["memory"] = memory(paths, args.threads, work)
    if "idle" in parts:
        results["idle"] = idle_neighbour(paths, args.threads, texts, args.clients, args.duration, args.repeats, work)
    if "busy_pair" in parts:
        results["busy_pair"] = busy_pair(paths, args.threads, texts, args.clients, args.duration, args.repeats, work)
    if "swaps" in parts:  # the median run by its p99 ratio (a shared machine's noise), every run kept
        runs = [swaps_under_load(paths, args.threads, texts, args.clients, args.duration, args.swaps, work)
                for _ in range(args.repeats)]
        results["swaps"] = sorted(runs, key=lambda run: run["p99_ratio"])[len(runs) // 2]
        results["swaps_runs"] = [{key: run[key] for key in ("p99_ratio", "failed_requests", "swapping_s",
                                                            "answers_of_other_versions", "slow_percent_by_tenth")}
                                 for run in runs]
    if "swaps_interleaved" in parts:
        runs, shams = interleaved_runs(args, lambda measure: swaps_under_load(
            paths, args.threads, texts, args.clients, args.duration, args.swaps, work, measure))
        results["swaps_interleaved_runs"], results["swaps_interleaved_sham_runs"] = runs, shams
    if "ray_swaps_interleaved" in parts:  # (a cluster a run)
        runs, shams = interleaved_runs(args, lambda measure: ray_swaps_under_load(
            paths, texts, args.clients, args.duration, args.swaps, work, measure, args.pin_nodes))
        results["ray_swaps_interleaved_runs"], results["ray_swaps_interleaved_sham_runs"] = runs, shams
    if "neighbours" in parts:
        results["neighbours"] = neighbours(paths, args.threads, texts, args.clients, args.duration, args.repeats, work)
        for kind, row in results["neighbours"].items():
            log(f"beside {kind}: p99 {row['median_p99_ratio']}x of none (runs {row['p99_ratio_to_none']})")
    if "ray_swaps" in parts:
        runs = [ray_swaps_under_load(paths, texts, args.clients, args.duration, args.swaps, work)
                for _ in range(args.repeats)]
        results["ray_swaps"] = sorted(runs, key=lambda run: run["p99_ratio"])[len(runs) // 2]
        results["ray_swaps_runs"] = [{key: run[key] for key in ("p99_ratio", "failed_requests", "swapping_s",
                                                                "swap_seconds", "answers_of_other_versions")}
                                     for run in runs]
        for run in runs:
            log(f"--ray: {run['failed_requests']} failed of {run['during']['requests']} during {run['swaps']} "
                f"rollouts ({run['swapping_s']} s), p99 {run['p99_ratio']}x, other versions "
                f"{run['answers_of_other_versions']}")
    with open(out, "w", encoding="utf-8") as fp:
        json.dump(results, fp, indent=2, ensure_ascii=False)
    if all(key in results for key in ("memory", "idle", "swaps")):
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
