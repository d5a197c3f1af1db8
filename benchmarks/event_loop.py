"""serve.py's event loop: uvicorn on asyncio + h11 against uvloop + httptools (uvicorn[standard]).

    python benchmarks/event_loop.py [--repeats 3] [--requests 3000] [--clients 32]

The tiny keyword model (bench.py's `keyword_export`, so that the HTTP side is a visible share of a
request), serve.py --loop/--http with one onnxruntime thread (bench.py's `Server`), 32 closed-loop
clients of benchmarks/load.py. Per round, both
configurations side by side: requests per second, and the server process's CPU time per request
(user + system, psutil: it does not depend on what else runs on the machine as much as wall time).
Needs uvloop and httptools installed (requirements.txt's uvicorn[standard]). Results:
benchmarks/results_event_loop.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, Server, keyword_export, log  # noqa: E402

CONFIGS = (("asyncio", "h11"), ("uvloop", "httptools"))


def measure(export: str, loop: str, http: str, texts: str, clients: int, requests: int, log_path: str) -> dict:
    """serve.py --loop/--http with 1 onnxruntime thread: one load.py run after `min(300, requests)`
    requests not counted; the server's CPU over it (every thread: event loop and model)."""
    with Server(export, 1, ["--loop", loop, "--http", http, "--log_level", "warning"], log_path) as server:
        result = server.measure(texts, clients, requests, 300.0, warmup=min(300, requests))
    if result["errors"]:
        raise SystemExit(f"{result['errors']} errors with {loop}/{http}")
    cpu = result["server"]["loop_cpu_s"] + result["server"]["model_cpu_s"]
    return {"requests_per_s": result["requests_per_s"], "server_cpu_ms_per_request": 1000 * cpu / result["ok"],
            "latency_ms": result.get("latency_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "benchmarks", "work"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    export = keyword_export(args.work_dir)
    with open(os.path.join(args.work_dir, "memory-keyword", "test.txt"), encoding="utf-8") as fp:
        lines = [line.split("\t")[0] for line in fp.read().splitlines() if line.strip()]
    texts = os.path.join(args.work_dir, "event-loop-texts.txt")
    with open(texts, "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines * max(1, args.requests // max(1, len(lines)) + 1)) + "\n")
    runs = {f"{loop}+{http}": [] for loop, http in CONFIGS}
    for round_ in range(args.repeats):
        for loop, http in CONFIGS:
            result = measure(export, loop, http, texts, args.clients, args.requests,
                             os.path.join(args.work_dir, f"event-loop-{loop}.log"))
            log(f"round {round_ + 1}, {loop}+{http}: {result}")
            runs[f"{loop}+{http}"].append(result)
    medians = {name: {key: statistics.median(r[key] for r in results)
                      for key in ("requests_per_s", "server_cpu_ms_per_request")} for name, results in runs.items()}
    base, fast = medians["asyncio+h11"], medians["uvloop+httptools"]
    result = {"date": time.strftime("%Y-%m-%d"), "clients": args.clients, "requests": args.requests,
              "repeats": args.repeats, "runs": runs, "medians": medians,
              "ratios": {"requests_per_s": fast["requests_per_s"] / base["requests_per_s"],
                         "server_cpu_per_request": fast["server_cpu_ms_per_request"]
                         / base["server_cpu_ms_per_request"]}}
    with open(os.path.join(ROOT, "benchmarks", "results_event_loop.json"), "w", encoding="utf-8") as fp:
        json.dump(result, fp, indent=2)
    print(json.dumps({"medians": medians, "ratios": result["ratios"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
