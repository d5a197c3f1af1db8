"""Serve an export over HTTP: micro-batched, SimpleServing-compatible, Paddle-free.

    python serve.py --model_path_prefix checkpoints/export --host 127.0.0.1 --port 8189

Endpoints, batching, limits and errors: utils/serving/app.py and README ("Serve over HTTP"). Flags
mirror infer.py's (`--device`, `--device_id`, `--num_threads`, `--use_int8`, `--use_fp16`,
`--max_seq_length`). Start-up: flags checked, the port bound (`--port 0`: any free one), the model
loaded and checked as infer.py does, then the port listens and one JSON line on stdout says where
(`{"url", "port", "model"}`): an export or flag infer.py would refuse ends serve.py with infer.py's
error and exit 2 before it ever listens. SIGTERM or Ctrl-C: stop accepting, finish in-flight
requests, exit.
"""
import argparse
import importlib.util
import json
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

from utils.errors import ArgumentParser, UserError, run_cli, text_flag


# uvicorn's choices; each named one needs its module (uvicorn[standard] installs both)
LOOPS = {"auto": None, "asyncio": None, "uvloop": "uvloop"}
HTTP_PARSERS = {"auto": None, "h11": "h11", "httptools": "httptools"}


def build_parser():
    parser = ArgumentParser(prog="serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path_prefix", required=True, help="Export directory (or its prefix dir/model).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default %(default)s; 0.0.0.0: all).")
    parser.add_argument("--port", type=int, default=8189,
                        help="Default %(default)s; 0: any free port (the JSON line on stdout says which).")
    parser.add_argument("--name", default="cls_default", type=text_flag, help="The model's name in POST /models/<name>.")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None,
                        help="Default: gpu when onnxruntime-gpu's CUDA provider is available, else cpu.")
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--num_threads", "--cpu_threads", dest="num_threads", type=int, default=None,
                        help="CPU threads for the model (default: physical cores).")
    parser.add_argument("--use_fp16", action="store_true", help="GPU: the export's model_fp16.onnx.")
    parser.add_argument("--use_int8", action="store_true", help="The export's model_int8.onnx.")
    parser.add_argument("--max_seq_length", "--max_length", dest="max_seq_length", type=int, default=None,
                        help="Tokens per input (default and maximum: the exported value).")
    parser.add_argument("--instances", type=int, default=1,
                        help="Model workers, each running its own batches on the one loaded model (Triton's instance "
                             "count); on CPU each gets --num_threads / instances threads. Default %(default)s: lowest "
                             "latency for a lone request; 2 on 2 cores: 4-11%% more texts/s under sustained load "
                             "(BENCHMARKS.md).")
    parser.add_argument("--max_batch_size", type=int, default=32, help="Texts per model run (default %(default)s).")
    parser.add_argument("--max_wait_ms", type=float, default=5.0,
                        help="How long a batch waits for more texts, from the oldest one's arrival or the last answers, "
                             "whichever is later (default %(default)s; no wait once every request of the last round is back).")
    parser.add_argument("--max_queue", type=int, default=2048,
                        help="Texts allowed to wait; beyond, requests get 503 + Retry-After (default %(default)s).")
    parser.add_argument("--max_texts_per_request", type=int, default=256)
    parser.add_argument("--max_chars_per_text", type=int, default=8192)
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--loop", default="auto", choices=list(LOOPS),
                        help="uvicorn's event loop (default auto: uvloop when installed, as requirements.txt does).")
    parser.add_argument("--http", default="auto", choices=list(HTTP_PARSERS),
                        help="uvicorn's HTTP parser (default auto: httptools when installed).")
    ray = parser.add_argument_group("Ray Serve (pip install -r requirements-ray.txt; utils/serving/ray_serve.py)")
    ray.add_argument("--ray", metavar="auto|HOST:PORT", default=None,
                     help="Serve as a Ray Serve deployment on this Ray cluster (`auto`: the one on this node); "
                          "--host/--port are then those of Ray Serve's HTTP proxies.")
    ray.add_argument("--replicas", default=None, metavar="N|auto",
                     help="Replicas, each one model and one micro-batcher (default 1; `auto`: Ray's autoscaling).")
    ray.add_argument("--autoscaling_config", default=None, metavar="JSON",
                     help="Ray Serve AutoscalingConfig fields, passed through, e.g. "
                          "'{\"min_replicas\": 1, \"max_replicas\": 8, \"target_ongoing_requests\": 32}'.")
    ray.add_argument("--max_ongoing_requests", type=int, default=None,
                     help="Requests one replica holds at once (default: 4 x --max_batch_size, so batches fill).")
    ray.add_argument("--route_prefix", default="/", help="Where the app's endpoints start on the proxies (default /).")
    return parser


def bind_port(host: str, port: int) -> socket.socket:
    """The socket serve.py will listen on, bound (not listening yet): a taken or impossible address
    is a clear error before the model loads, and the port stays ours while it loads."""
    if not 0 <= port < 65536:
        raise UserError(f"must be in 0..65535 (0: any free port), got {port}", "--port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve {host!r}: {exc.strerror}", "--host") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}", "--port") from None
    return listener


def main(argv):
    args = build_parser().parse_args(argv)
    from utils.deploy.bundle import resolve_export_dir
    from utils.serving.app import ServiceConfig, create_app

    export_dir = resolve_export_dir(args.model_path_prefix)  # a wrong path fails now, not after start-up
    config = ServiceConfig(model_path_prefix=export_dir, name=args.name, device=args.device, device_id=args.device_id,
                           num_threads=args.num_threads, use_fp16=args.use_fp16, use_int8=args.use_int8,
                           max_seq_length=args.max_seq_length, instances=args.instances,
                           max_batch_size=args.max_batch_size,
                           max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                           max_texts_per_request=args.max_texts_per_request,
                           max_chars_per_text=args.max_chars_per_text)
    if args.ray:
        for flag in ("loop", "http"):
            if getattr(args, flag) != "auto":
                raise UserError("is for serve.py's own uvicorn; with --ray, Ray Serve's HTTP proxies serve", f"--{flag}")
        return serve_on_ray(args, config)
    for flag in ("replicas", "autoscaling_config", "max_ongoing_requests"):
        if getattr(args, flag) is not None:
            raise UserError("only with --ray", f"--{flag}")
    for flag, module in (("loop", LOOPS[args.loop]), ("http", HTTP_PARSERS[args.http])):
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"{module} is not installed (pip install 'uvicorn[standard]')", f"--{flag}")
    with bind_port(args.host, args.port) as listener:
        from utils.deploy.classifier import Classifier

        # Loaded and checked before the port listens, exactly as infer.py loads it: an export or flag
        # it refuses is the same one-paragraph error here, and exit 2, never a service answering 503.
        classifier = Classifier(export_dir, **config.classifier_options())
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(
            create_app(config, classifier=classifier), log_level=args.log_level, loop=args.loop, http=args.http,
            timeout_graceful_shutdown=30, access_log=args.log_level == "debug"))
        listener.listen(server.config.backlog)  # connections from now on wait for uvicorn, then are served
        port = listener.getsockname()[1]
        reach = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)  # (a wildcard: this machine)
        url = f"http://{f'[{reach}]' if ':' in reach else reach}:{port}"
        print(f"serving {os.path.abspath(export_dir)} as {args.name!r} on {url} (docs: /docs; ready: /ready)",
              file=sys.stderr)
        print(json.dumps({"url": url, "port": port, "model": args.name}), flush=True)
        # uvicorn drains on SIGTERM/Ctrl-C, then re-raises the signal through the handler it found:
        # make that a clean exit, since the drain succeeded.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: sys.exit(0))
        server.run(sockets=[listener])
    return 0


def serve_on_ray(args, config) -> int:
    from utils.serving.ray_serve import RayServeOptions, parse_autoscaling, serve_on_ray as deploy

    if args.device_id:
        raise UserError("does not apply with --ray: Ray assigns each replica its GPU", "--device_id")
    if not 0 < args.port < 65536:
        raise UserError(f"must be in 1..65535, got {args.port}", "--port")
    replicas = args.replicas
    if replicas not in (None, "auto"):
        try:
            replicas = int(replicas)
        except ValueError:
            raise UserError(f"must be a positive integer or `auto`, got {replicas!r}", "--replicas") from None
    autoscaling = parse_autoscaling(args.autoscaling_config) if args.autoscaling_config is not None else None
    if replicas is None and autoscaling is None:
        replicas = 1
    options = RayServeOptions(args.ray, replicas, autoscaling, args.route_prefix, args.max_ongoing_requests)

    def ready(served):
        if urlsplit(served["url"]).port != args.port:
            print(f"note: Ray Serve was already running on this cluster: its proxies keep the address they started "
                  f"with, not --host {args.host} --port {args.port} (`serve shutdown` to change it)", file=sys.stderr)
        print(f"serving {config.model_path_prefix} as {args.name!r} on {served['url']} with Ray Serve "
              f"({served['replicas']} replica(s), cluster {served['address']}; docs: /docs; ready: /ready); "
              "SIGTERM or Ctrl-C deletes the application", file=sys.stderr)
        print(json.dumps(served), flush=True)

    deploy(config, options, args.host, args.port, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
