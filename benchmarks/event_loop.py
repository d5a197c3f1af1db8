"""serve.py's event loop: uvicorn on asyncio + h11 against uvloop + httptools (uvicorn[standard]).

    python benchmarks/event_loop.py [--repeats 3] [--requests 3000] [--clients 32]

The tiny keyword model (bench.py's `keyword_export`, so that the HTTP side is a visible share of a
request), one onnxruntime thread, 32 closed-loop clients of benchmarks/load.py. Per round, both
configurations side by side: requests per second, and the server process's CPU time per request
(user + system, psutil: it does not depend on what else runs on the machine as much as wall time).
Needs uvloop and httptools installed (requirements.txt's uvicorn[standard]). Results:
benchmarks/results_event_loop.json.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PY, ROOT, keyword_export, log  # noqa: E402

CONFIGS = (("asyncio", "h11"), ("uvloop", "httptools"))
SERVER = """
import sys, uvicorn
from utils.service import ServiceConfig, create_app
export, loop, http, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
uvicorn.run(create_app(ServiceConfig(export, num_threads=1)), host="127.0.0.1", port=port, loop=loop, http=http,
            log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(port: int, texts: str, clients: int, requests: int) -> dict:
    out = subprocess.run([PY, os.path.join(ROOT, "benchmarks", "load.py"), "--url",
                          f"http://127.0.0.1:{port}/models/cls_default", "--input_file", texts, "--clients",
                          str(clients), "--requests", str(requests), "--duration", "300"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(export: str, loop: str, http: str, texts: str, clients: int, requests: int) -> dict:
    import psutil

    port = free_port()
    server = subprocess.Popen([PY, "-c", SERVER, export, loop, http, str(port)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {loop}/{http} server did not become ready")
                time.sleep(0.2)
        process = psutil.Process(server.pid)
        load(port, texts, clients, min(300, requests))  # warm-up, not counted
        before = sum(process.cpu_times()[:2])
        summary = load(port, texts, clients, requests)
        cpu = sum(process.cpu_times()[:2]) - before
        if summary["errors"]:
            raise SystemExit(f"{summary['errors']} errors with {loop}/{http}")
        return {"requests_per_s": summary["requests_per_s"], "server_cpu_ms_per_request": 1000 * cpu / summary["ok"],
                "latency_ms": summary.get("latency_ms")}
    finally:
        server.terminate()
        server.wait(60)


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
            result = measure(export, loop, http, texts, args.clients, args.requests)
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
