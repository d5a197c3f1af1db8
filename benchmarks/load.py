"""Load generator for serve.py: N concurrent HTTP clients on 127.0.0.1, closed loop.

    python benchmarks/load.py --url http://127.0.0.1:8189/models/cls_default --clients 32 \
        --requests 2000 --duration 60 --input_file ../shared/data/fewclue/tnews/test.txt

Each of `--clients` workers (one keep-alive HTTP/1.1 connection each) sends a request,
waits for the answer, sends the next: `--texts_per_request` consecutive lines of the input file
per request, cycling through the file. It stops after `--requests` requests or `--duration`
seconds, whichever comes first (requests in flight then finish and count). The body is
SimpleServing's (`{"data": {"text": [...]}}`) for /models/<name>, `{"texts": [...]}` for /predict.
Prints one JSON object: requests, texts, errors by status, texts/s and requests/s over the wall
time, latency percentiles (ms) of the successful requests. Only loopback URLs: a benchmark, not a
tool to load other people's servers.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit


def read_texts(path: str) -> List[str]:
    """Texts of a file in infer.py's layout: the first column (a gold label column is dropped)."""
    with open(path, encoding="utf-8") as fp:
        texts = [line.rstrip("\n").split("\t")[0].strip() for line in fp]
    texts = [t for t in texts if t]
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def check_loopback(url: str) -> None:
    if urlsplit(url).scheme != "http":
        raise SystemExit(f"--url must be a plain http:// URL, got {url!r}")
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--url must point at this machine (127.0.0.1, ::1 or localhost), got {host!r}")


def body_for(url: str, texts: List[str]) -> dict:
    return {"texts": texts} if urlsplit(url).path.rstrip("/").endswith("/predict") else {"data": {"text": texts}}


def percentile(sorted_values: List[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Connection:
    """One keep-alive HTTP/1.1 connection, written by hand on asyncio streams: a load generator on
    the server's own machine must cost it little CPU (httpx spent ~3 ms per request here, more than
    the service's own event loop)."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.timeout = timeout
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def post(self, body: bytes) -> Tuple[int, bytes]:
        """(status, body); raises OSError / asyncio errors (the connection is then closed)."""
        try:
            return await asyncio.wait_for(self._post(body), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _post(self, body: bytes) -> Tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            content = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                content += chunk[:-2]
        elif length is not None:
            content = await self.reader.readexactly(length)
        else:
            content, close = await self.reader.read(), True
        if close:
            self.close()
        return status, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, texts: List[str], clients: int, requests: int, duration: float,
                   texts_per_request: int = 1, timeout: float = 120.0, start_at: int = 0,
                   stop_file: Optional[str] = None, timeline: Optional[List[list]] = None) -> Dict:
    """Closed-loop load; returns the raw records' summary (see the module docstring). `stop_file`:
    stop (as at the deadline) once that file exists (looked for every 50 ms). `timeline`: a list
    each request is appended to as [wall-clock start, seconds, status, model_version]."""
    next_request = 0
    latencies: List[float] = []  # seconds, successful requests
    statuses: Dict[str, int] = {}
    versions: Dict[str, int] = {}  # 200 answers by their model_version (a swap under load: old or new)
    ok_texts = 0
    deadline = time.perf_counter() + duration

    async def watch_stop_file() -> None:
        nonlocal deadline
        while time.perf_counter() < deadline:
            if os.path.exists(stop_file):
                deadline = time.perf_counter()
                return
            await asyncio.sleep(0.05)

    async def worker(connection: Connection) -> None:
        nonlocal next_request, ok_texts
        while next_request < requests and time.perf_counter() < deadline:
            index = next_request
            next_request += 1  # one event loop: no race between the check and the increment
            first = (start_at + index * texts_per_request) % len(texts)
            batch = [texts[(first + j) % len(texts)] for j in range(texts_per_request)]
            body = json.dumps(body_for(url, batch), ensure_ascii=False).encode()
            start, version = time.perf_counter(), None
            try:
                code, content = await connection.post(body)
                status = str(code)
                if code == 200:
                    answers = json.loads(content)
                    version = str(answers.get("model_version"))
                    versions[version] = versions.get(version, 0) + 1
                    answers = answers.get("result", answers.get("predictions"))
                    if not isinstance(answers, list) or len(answers) != len(batch):
                        status = "bad_answer"  # a 200 without one answer per text is an error too
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - start
            if timeline is not None:
                timeline.append([time.time() - elapsed, round(elapsed, 4), status, version if status == "200" else None])
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                latencies.append(elapsed)
                ok_texts += len(batch)

    connections = [Connection(url, timeout) for _ in range(clients)]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        watcher = [watch_stop_file()] if stop_file else []
        await asyncio.gather(*(worker(c) for c in connections), *watcher)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        for connection in connections:
            connection.close()
    latencies.sort()
    sent = sum(statuses.values())
    ms = lambda s: None if s is None else round(1000 * s, 2)  # noqa: E731
    return {
        "url": url, "clients": clients, "texts_per_request": texts_per_request,
        "requests": sent, "ok": statuses.get("200", 0), "errors": sent - statuses.get("200", 0),
        "statuses": statuses, "versions": versions, "texts": ok_texts, "wall_s": round(wall, 3),
        "texts_per_s": round(ok_texts / wall, 2) if wall > 0 else None,
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "client_cpu_s": round(cpu, 3),  # this process's CPU: on a shared machine it is taken from the server
        "latency_ms": {"p50": ms(percentile(latencies, 50)), "p90": ms(percentile(latencies, 90)),
                       "p99": ms(percentile(latencies, 99)), "max": ms(latencies[-1] if latencies else None),
                       "mean": ms(sum(latencies) / len(latencies) if latencies else None)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8189/models/cls_default")
    parser.add_argument("--input_file", required=True, help="Texts, one a line (a trailing label column is ignored).")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent workers (default %(default)s).")
    parser.add_argument("--requests", type=int, default=2000, help="At most this many requests (default %(default)s).")
    parser.add_argument("--duration", type=float, default=60.0, help="At most this many seconds (default %(default)s).")
    parser.add_argument("--texts_per_request", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0, help="Requests sent first and not counted (default 0).")
    parser.add_argument("--start_at", type=int, default=0, help="Index of the first text used.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Per request, seconds.")
    parser.add_argument("--stop_file", help="Stop, as at --duration, once this file exists (benchmarks/swap.py).")
    parser.add_argument("--timeline", help="Write every request to this JSON file: [wall-clock start, seconds, "
                        "status, model_version] (benchmarks/swap.py: when the swaps' slow requests happen).")
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "texts_per_request"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    check_loopback(args.url)
    texts = read_texts(args.input_file)
    if args.warmup:
        asyncio.run(run_load(args.url, texts, args.clients, args.warmup, args.duration, args.texts_per_request,
                             args.timeout, start_at=args.start_at))
    timeline = [] if args.timeline else None
    result = asyncio.run(run_load(args.url, texts, args.clients, args.requests, args.duration,
                                  args.texts_per_request, args.timeout, start_at=args.start_at,
                                  stop_file=args.stop_file, timeline=timeline))
    if args.timeline:
        with open(args.timeline, "w", encoding="utf-8") as fp:
            json.dump(timeline, fp)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
