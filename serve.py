"""Serve exports over HTTP: micro-batched, SimpleServing-compatible, Open Inference Protocol v2, Paddle-free.

    python serve.py --model_path_prefix checkpoints/export --host 127.0.0.1 --port 8189
    python serve.py --model news=exports/news --model intent=exports/intent --api_key_file keys.txt \\
        --admin_key_file admin_keys.txt --watch_interval_s 10

Endpoints, batching, limits and errors: utils/serving/app.py and README ("Serve over HTTP"). Flags:
infer.py's runtime group (`--device`, `--device_id`, `--num_threads`, `--use_int8`, `--use_fp16`,
`--max_seq_length`; utils/flags/runtime.py). Start-up: flags checked, the port bound (`--port 0`:
any free one), the models loaded and checked as infer.py does, then the port listens and one JSON
line on stdout says where (`{"url", "port", "model", "models"}`): an export or flag infer.py would refuse
ends serve.py with infer.py's error and exit 2 before it ever listens. SIGTERM or Ctrl-C: stop
accepting, abandon a swap being loaded, finish in-flight requests, exit. Several models, swaps
and keys: docs/how-to/serve-production.md.
"""
import json
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

from utils.errors import UserError, run_cli


def bind_port(host: str, port: int) -> socket.socket:
    """The socket serve.py will listen on, bound (not listening yet): a taken or impossible address
    is a clear error before the model loads, and the port stays ours while it loads."""
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
    from utils.flags.parser import parse_flags
    from utils.flags.runtime import ServeArguments

    (args,) = parse_flags(ServeArguments, argv, "serve.py", __doc__)
    config = service_config(args)
    if args.ray:
        return serve_on_ray(args, config)
    with bind_port(args.host, args.port) as listener:
        from utils.serving.app import Service

        service = Service(config)  # the key files are read (and refused) here, before any model loads
        warn_without_keys(args)
        # Loaded and checked before the port listens, exactly as infer.py loads them: an export or flag
        # it refuses is the same one-paragraph error here, and exit 2, never a service answering 503.
        for name, export_dir in config.exports.items():
            service.preloaded[name] = service.registry.load(export_dir)  # (--instances auto: its split session too)
        run_uvicorn(args, service, listener, config)
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_without_keys(args) -> None:
    if not args.api_key_file and args.host not in LOOPBACK:
        print(f"warning: serving on {args.host} without --api_key_file: anyone who can reach this port can use "
              "the models (docs/how-to/serve-production.md)", file=sys.stderr)


def service_config(args):
    """The service's settings from the flags (checked by ServiceConfig, the same for serve.py and Ray
    Serve's build_app), every export path resolved now: a wrong path fails before anything loads."""
    import dataclasses

    from utils.deploy.bundle import resolve_export_dir
    from utils.serving.app import ServiceConfig

    device, device_id = args.placement()
    config = ServiceConfig(model_path_prefix=None if args.models else args.model_path_prefix, name=args.name,
                           device=device, device_id=device_id, num_threads=args.num_threads, use_fp16=args.use_fp16,
                           use_int8=args.use_int8, max_seq_length=args.max_seq_length, instances=args.instances,
                           max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                           max_queue=args.max_queue, max_texts_per_request=args.max_texts_per_request,
                           max_chars_per_text=args.max_chars_per_text, label_studio_prefix=args.label_studio_prefix,
                           models=args.models, api_key_file=args.api_key_file, admin_key_file=args.admin_key_file,
                           allow_label_change=args.allow_label_change, watch_interval_s=args.watch_interval_s)
    if config.models:
        return dataclasses.replace(config, models={name: resolve_export_dir(path)
                                                   for name, path in config.models.items()})
    return dataclasses.replace(config, model_path_prefix=resolve_export_dir(config.model_path_prefix))


def run_uvicorn(args, service, listener, config) -> None:
    import logging

    import uvicorn

    from utils.serving.auth import RedactKeys

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/Ctrl-C: a swap being loaded is abandoned at once
            service.begin_shutdown_threadsafe()
            super().handle_exit(sig, frame)

    logging.getLogger("uvicorn.access").addFilter(RedactKeys())  # (a key sent in a URL never reaches a log)
    server = Server(uvicorn.Config(
        service.asgi(), log_level=args.log_level.value, loop=args.loop.value,
        http=args.http.value, timeout_graceful_shutdown=30, access_log=args.log_level == "debug"))
    listener.listen(server.config.backlog)  # connections from now on wait for uvicorn, then are served
    port = listener.getsockname()[1]
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)  # (a wildcard: this machine)
    url = f"http://{f'[{reach}]' if ':' in reach else reach}:{port}"
    names = list(config.exports)
    for name, export_dir in config.exports.items():
        print(f"serving {os.path.abspath(export_dir)} as {name!r} on {url}", file=sys.stderr)
    print(f"docs: {url}/docs; ready: {url}/ready", file=sys.stderr)
    print(json.dumps({"url": url, "port": port, "model": names[0], "models": names}), flush=True)
    # uvicorn drains on SIGTERM/Ctrl-C, then re-raises the signal through the handler it found:
    # make that a clean exit, since the drain succeeded.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: sys.exit(0))
    server.run(sockets=[listener])


def serve_on_ray(args, config) -> int:
    from utils.serving.ray_serve import RayServeOptions, parse_autoscaling, serve_on_ray as deploy

    autoscaling = parse_autoscaling(args.autoscaling_config) if args.autoscaling_config is not None else None
    options = RayServeOptions(args.ray, args.replica_count, autoscaling, args.route_prefix, args.max_ongoing_requests)
    warn_without_keys(args)

    def ready(served):
        if urlsplit(served["url"]).port != args.port:
            print(f"note: Ray Serve was already running on this cluster: its proxies keep the address they started "
                  f"with, not --host {args.host} --port {args.port} (`serve shutdown` to change it)", file=sys.stderr)
        for name, export_dir in config.exports.items():
            print(f"serving {os.path.abspath(export_dir)} as {name!r} on {served['url']}", file=sys.stderr)
        print(f"with Ray Serve ({served['replicas']} replica(s) of application {served['application']!r}, cluster "
              f"{served['address']}; docs: /docs; ready: /ready); SIGTERM or Ctrl-C deletes the application",
              file=sys.stderr)
        print(json.dumps(served), flush=True)

    deploy(config, options, args.host, args.port, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
