"""serve.py --ray: the same HTTP service (utils/serving/app.py) as a Ray Serve deployment of N replicas.

    python serve.py --model_path_prefix checkpoints/export --ray auto --replicas 4 --port 8000
    python serve.py ... --ray HEAD:6379 --autoscaling_config '{"min_replicas": 1, "max_replicas": 8}'

Every replica is a `Service` holding every model (`--model NAME=DIR`, repeatable, or one
`--model_path_prefix`: same endpoints, API keys, micro-batching, limits and errors as one
serve.py), each loaded once from the export files this process put in Ray's object store: the
nodes need the Python environment, not the export or this code (a runtime_env py_module), as
with `infer.py --ray`. Ray Serve's proxies route HTTP to the replicas. This
process stays in the foreground like `serve run`: it owns the shipped files (a replica restarted
by Ray reloads them) and on SIGTERM or Ctrl-C deletes the application, which drains every
replica (our lifespan: in-flight and queued requests finish), then exits 0. Swaps (the admin
routes, `--watch_interval_s`) are rollouts of the application by Ray Serve: ray_rollout.py.

Needs the optional extra: `pip install -r requirements-ray.txt` (Ray Serve).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from dataclasses import asdict, replace
from typing import Any, Dict, Optional


from ..errors import UserError
from ..deploy.bundle import read_manifest, resolve_export_dir
from ..deploy.predictor import pick_model_file
from .ray_infer import (CONNECT_TIMEOUT, FLAG, START_TIMEOUT, connect, export_files, first_line, load_shipped,
                        run_bounded)
from .app import Service
from .config import ServiceConfig
from ..rundir.checkpoints import reached
from .registry import low_priority, parity_sample
from .requests import RequestError

__all__ = ["RayServeOptions", "build_app", "parse_autoscaling", "serve_on_ray"]

INSTALL_HINT = "needs Ray Serve: pip install -r requirements-ray.txt"
# Ray's default max_ongoing_requests (5) would cap a replica's micro-batches at 5 texts: let each
# replica hold enough requests to fill batches, and queue the rest in Ray (bounded, then 503).
ONGOING_PER_BATCH = 4
# Starts the message of a replica that could not load the export, so the driver can find it in
# Serve's status (which holds the replica's traceback).
REPLICA_ERROR = "ptuning replica error:"
SURGE_PERCENT = 25  # of the replicas, rounded up: at least one more replica during a rollout


class RayServeOptions:
    """The Ray side of serve.py --ray: where, how many replicas, how they scale, what they reserve."""

    def __init__(self, address: str, replicas: Any = 1, autoscaling: Optional[dict] = None,
                 route_prefix: str = "/", max_ongoing_requests: Optional[int] = None,
                 connect_timeout: float = CONNECT_TIMEOUT, start_timeout: float = START_TIMEOUT):
        if autoscaling is not None and replicas not in (None, "auto"):
            raise UserError("give either a number of --replicas or --autoscaling_config, not both", "--replicas")
        if replicas not in (None, "auto") and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                               or replicas <= 0):
            raise UserError(f"must be a positive integer or `auto`, got {replicas!r}", "--replicas")
        if not route_prefix.startswith("/"):
            raise UserError(f"must start with '/', got {route_prefix!r}", "--route_prefix")
        if max_ongoing_requests is not None and max_ongoing_requests <= 0:
            raise UserError(f"must be a positive integer, got {max_ongoing_requests}", "--max_ongoing_requests")
        self.address, self.replicas, self.autoscaling = address, replicas, autoscaling
        self.route_prefix, self.max_ongoing_requests = route_prefix, max_ongoing_requests
        self.connect_timeout, self.start_timeout = connect_timeout, start_timeout


def import_serve():
    try:
        from ray import serve
    except ImportError as exc:  # no Ray, or Ray core without the serve extra
        raise UserError(f"{INSTALL_HINT} ({exc.name or exc} is missing)", FLAG) from None
    return serve


def parse_autoscaling(text: str) -> dict:
    """`--autoscaling_config`: a JSON object of Ray Serve's AutoscalingConfig fields, passed
    through (min_replicas, max_replicas, target_ongoing_requests, upscale_delay_s, ...),
    checked by Ray's own model so that a typo is refused here, not by the cluster."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"not JSON: {exc}", "--autoscaling_config") from None
    if not isinstance(value, dict):
        raise UserError(f"must be a JSON object of Ray Serve AutoscalingConfig fields, got {text!r}",
                        "--autoscaling_config")
    import_serve()
    from ray.serve.config import AutoscalingConfig

    fields = set(getattr(AutoscalingConfig, "model_fields", None) or AutoscalingConfig.__fields__)
    unknown = sorted(set(value) - fields)
    if unknown:  # Ray's model ignores them: a typo would silently keep the default
        raise UserError(f"not a Ray Serve AutoscalingConfig field: {unknown[0]!r} (fields: {', '.join(sorted(fields))})",
                        "--autoscaling_config")
    try:
        AutoscalingConfig(**value)
    except Exception as exc:  # pydantic's ValidationError
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        message = " ".join(lines)[:300] or type(exc).__name__
        raise UserError(f"not a valid Ray Serve AutoscalingConfig: {message}", "--autoscaling_config") from None
    return value


class ServiceReplica(Service):
    """One replica: every model loaded from the shipped files, then the `Service` around them (its
    routes, batchers, lifespan: what serve.py serves), built by Serve through `__serve_build_asgi_app__`.
    Its swaps are rollouts of the application (ray_rollout.py), asked of the `Rollout` actor."""

    def __init__(self, shipped: dict, config: dict):
        import ray

        config = ServiceConfig(**config)
        if config.num_threads is None and config._device() == "cpu":
            # the CPUs Ray reserved for this replica (deployment_for), not every core of its node: N
            # replicas on a node would otherwise each run onnxruntime on all of its cores
            config = replace(config, num_threads=replica_cpus(config))
        options = config.classifier_options(device_id=0)  # Ray gives the replica its GPU as device 0
        # A rollout's new replica starts beside the replicas serving on the same CPUs: its load and warm-up
        # (the parity sample: its first requests do not meet a cold session) take only what they leave.
        for path in config.exports.values():  # tests hold a rollout's new replica here (PTUNING_TEST_PAUSE)
            reached(f"replica loading {path}", path)
        with low_priority():
            classifiers = {name: self.load_model(ray, shipped, name, path, options)
                           for name, path in config.exports.items()}
            for classifier in classifiers.values():
                parity_sample(classifier, config.max_batch_size)
        self.rollout, self.generation = shipped.get("rollout"), shipped.get("generation", 0)
        self.announcements = shipped.get("announcements") or {}
        context = ray.get_runtime_context()
        # The replica does not watch: the Rollout actor does, where serve.py --ray runs.
        super().__init__(replace(config, watch_interval_s=0.0), served_by=f"{context.get_node_id()[:12]}/{os.getpid()}",
                         classifiers=classifiers)
        if self.rollout is not None:  # (the rollout waits for every new replica's word)
            self.rollout.replica_ready.remote(self.generation, self.models_metadata())

    @staticmethod
    def load_model(ray, shipped: dict, name: str, path: str, options: dict):
        if "models" in shipped:  # from serve.py --ray: nested in a dict, as Serve passes init args as they are
            files = ray.get(shipped["models"][name])
            classifier, error = load_shipped(files, path, options)
            del files
        else:  # from a Serve config file (build_app): the export is on every node, e.g. a volume
            from ..deploy.classifier import Classifier

            try:
                classifier, error = Classifier(path, **options), None
            except UserError as exc:
                classifier, error = None, [exc.message, exc.path, exc.line]
        if error is not None:  # fails the replica: serve.run reports it, with this message
            raise RuntimeError(f"{REPLICA_ERROR} {error[1] + ': ' if error[1] else ''}{error[0]}")
        return classifier

    def models_metadata(self) -> dict:
        """What a swap checks a new export against, and the versions this replica serves."""
        from .ml_backend import model_version

        return {name: {"labels": list(c.labels), "task_type": c.task_type, "pair": c.pair,
                       "model_version": model_version(name, c.model)} for name, c in self.preloaded.items()}

    def start(self) -> None:
        super().start()
        for name, announcement in self.announcements.items():  # a rollout that brought another label set
            if name in self.registry.slots:
                self.registry.slots[name].labels_changed = announcement

    def __serve_build_asgi_app__(self):
        return self.asgi()

    # Swaps: rollouts of the whole application by the Rollout actor

    async def swap(self, name: str, path: str, allow_label_change: bool) -> dict:
        self.slot(name, "name")  # an unknown name first
        return answer(await self.rollout_actor().swap.remote(name, path, allow_label_change))

    async def scan(self):
        return answer(await self.rollout_actor().scan.remote())

    async def swap_state(self, name: str) -> dict:
        if self.rollout is None:
            return {"loading": None, "last_swap": None}
        return await self.rollout.state.remote(name)

    def rollout_actor(self):
        if self.rollout is None:
            raise RequestError(501, "path", "this application was deployed by Serve's own launcher (build_app): "
                                            "deploy it again with the new export's path (`serve deploy`), which Ray "
                                            "Serve rolls out replica by replica")
        return self.rollout


def answer(result):
    """A `Rollout` answer: the result, or its refusal as the route's error."""
    if isinstance(result, dict) and "error" in result:
        error = result["error"]
        raise RequestError(error["status"], error["field"], error["message"])
    return result


def build_app(args: Dict[str, Any]):
    """A Ray Serve application builder, for Serve's own launchers where no serve.py runs:

        serve run utils.serving.ray_serve:build_app model_path_prefix=/models/export replicas=2 num_threads=2
        # or in a Serve config file / KubeRay RayService:
        #   import_path: utils.serving.ray_serve:build_app
        #   args: {model_path_prefix: /models/export, autoscaling_config: {min_replicas: 1, max_replicas: 4}}

    `args`: `ServiceConfig`'s fields (model_path_prefix required; strings from `serve run` are
    converted) plus `replicas`, `autoscaling_config` and `max_ongoing_requests` as serve.py takes
    them. The export must be at `model_path_prefix` on every node (an image or a volume):
    each replica verifies and loads it there. Mistakes raise ValueError naming the argument."""
    import dataclasses

    serve = import_serve()
    fields = {f.name: f for f in dataclasses.fields(ServiceConfig)}
    ray_keys = {"replicas", "autoscaling_config", "max_ongoing_requests", "route_prefix"}
    unknown = sorted(set(args) - set(fields) - ray_keys)
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; allowed: {', '.join(sorted(set(fields) | ray_keys))}")
    if "model_path_prefix" not in args:
        raise ValueError("model_path_prefix is required (the export directory, present on every node)")

    def convert(name: str, value: Any) -> Any:
        if not isinstance(value, str) or name in ("model_path_prefix", "name", "device", "label_studio_prefix",
                                                  "instances"):  # instances: N or auto, ServiceConfig reads both
            return value
        if value.lower() in ("none", "null", ""):
            return None
        kind = str(fields[name].type)
        try:
            if "bool" in kind:
                return {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            return float(value) if "float" in kind else int(value)
        except (KeyError, ValueError):
            raise ValueError(f"{name}: not a {kind}: {value!r}") from None

    try:
        config = ServiceConfig(**{k: convert(k, v) for k, v in args.items() if k in fields})
        autoscaling = args.get("autoscaling_config")
        if isinstance(autoscaling, str):
            autoscaling = parse_autoscaling(autoscaling)
        elif autoscaling is not None:
            autoscaling = parse_autoscaling(json.dumps(autoscaling))
        replicas = args.get("replicas")
        if isinstance(replicas, str) and replicas != "auto":
            replicas = int(replicas) if replicas.isdigit() else replicas
        if replicas is None and autoscaling is None:
            replicas = 1
        max_ongoing = args.get("max_ongoing_requests")
        options = RayServeOptions("", replicas, autoscaling, args.get("route_prefix", "/"),
                                  int(max_ongoing) if max_ongoing is not None else None)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    device = config.device or "cpu"  # no cluster to ask here: GPU replicas are asked for with device=gpu
    return deployment_for(serve, replace(config, device=device), options, device).bind(
        {"path": config.model_path_prefix}, asdict(replace(config, device=device)))


def plan_device(ray, device: Optional[str]) -> str:
    if device is None:
        return "gpu" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    return device


def replica_cpus(config: ServiceConfig) -> int:
    """The CPUs a replica reserves and, on CPU, the onnxruntime threads it runs: --num_threads, default 1."""
    return config.num_threads or 1


def deployment_for(serve, config: ServiceConfig, options: RayServeOptions, device: str):
    """The Serve deployment: replicas, autoscaling, resources, and request bounds from the flags."""
    threads = replica_cpus(config)
    settings: Dict[str, Any] = {
        "name": "ptuning",
        "ray_actor_options": {"num_cpus": 1 if device == "gpu" else threads, "num_gpus": 1 if device == "gpu" else 0},
        "max_ongoing_requests": options.max_ongoing_requests or ONGOING_PER_BATCH * config.max_batch_size,
        # Requests Ray holds for busy replicas; beyond, Ray answers 503 (our own queue bound per replica
        # is --max_queue texts): never a queue that grows without limit.
        "max_queued_requests": config.max_queue,
        "graceful_shutdown_timeout_s": 30,
        # Rollouts (a swap deploys the application again): new replicas start beside the old ones, which
        # serve until their replacements are ready (one replica's worth of extra CPUs/GPUs meanwhile).
        "max_surge_percent": SURGE_PERCENT,
    }
    if options.autoscaling is not None:
        settings["autoscaling_config"] = options.autoscaling
    else:
        settings["num_replicas"] = options.replicas
    return serve.deployment(**settings)(serve.ingress()(ServiceReplica))


def existing_app(serve, name: str) -> Optional[str]:
    """The status of the Serve application called `name` on the cluster, if there is one."""
    try:
        applications = serve.status().applications
    except Exception:  # Serve not started on this cluster yet
        return None
    app = applications.get(name)
    return None if app is None else str(getattr(app.status, "value", app.status))


def bounded(fn, timeout: float, what: str):
    """`run_bounded`, a timeout reported as what did not finish."""
    try:
        return run_bounded(fn, timeout, "ray-serve")
    except TimeoutError:
        raise UserError(f"{what} did not finish within {timeout:.0f} s (`ray status`: are the replicas' CPUs/GPUs "
                        "taken by other jobs?)", FLAG) from None


def deploy_error(serve, name: str, exc: BaseException) -> str:
    """Why the replicas did not start: a replica's own `error: ...` line (from the application's
    status, where Serve keeps the replicas' failures), else Ray's first line."""
    texts = [str(exc)]
    try:
        app = serve.status().applications[name]
        texts += [app.message] + [d.message for d in app.deployments.values()]
    except Exception:  # the status is a hint, never worth a second failure
        pass
    for text in texts:
        for line in reversed((text or "").splitlines()):  # the exception's line comes after its source line
            if f"RuntimeError: {REPLICA_ERROR} " in line:
                return line.split(f"RuntimeError: {REPLICA_ERROR} ", 1)[1].strip().rstrip("'\"")
    return first_line(exc)


def serve_on_ray(config: ServiceConfig, options: RayServeOptions, host: str, port: int,
                 stop: Optional[threading.Event] = None, on_ready=None) -> dict:
    """Deploy `config` (every model of it) as the Serve application `config.name` on the cluster at
    `options.address`, with a `Rollout` actor on this node for its swaps and watcher, serve until
    `stop` is set (default: SIGTERM or Ctrl-C), then delete it (draining replicas). Returns what
    was served: address, url, replicas with their nodes."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT, FLAG) from None
    serve = import_serve()
    import logging

    # Serve's INFO chatter and its warning that a running Serve keeps its HTTP address: serve.py says it.
    logging.getLogger("ray.serve").setLevel(logging.ERROR)
    config = checked_locally(config)  # a broken export or key file is reported before any cluster is involved
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # all of utils/, not serving/
    address = connect(ray, options.address, options.connect_timeout, runtime_env={"py_modules": [package_dir]})
    deployed, rollout = False, None
    try:
        device = plan_device(ray, config.device)
        config = replace(config, device=device)
        status = existing_app(serve, config.name)
        if status is not None:
            raise UserError(f"the cluster already serves an application {config.name!r} ({status}); give another "
                            f"--name, or stop the serve.py that deployed it (if it was killed: `serve delete "
                            f"{config.name}` with RAY_ADDRESS set to this cluster)", "--name")
        bounded(lambda: serve.start(http_options={"host": host, "port": port}), options.connect_timeout,
                "starting Ray Serve")
        rollout = start_rollout_actor(ray, config, options, device)
        shipped = ray.get(rollout.shipped.remote())
        try:
            deployed = True
            bounded(lambda: serve.run(application(config, options, device, shipped), name=config.name,
                                      route_prefix=options.route_prefix), options.start_timeout,
                    f"deploying {config.name!r}")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"the replicas could not start: {deploy_error(serve, config.name, exc)}", FLAG) from None
        shipped = None  # drop the object refs: the replicas have their own copies
        if config.watch_interval_s:
            rollout.watch.remote(config.watch_interval_s)
        served = describe(serve, config.name, address, options.route_prefix)
        if on_ready is not None:
            on_ready(served)
        wait(stop)
        return served
    finally:
        if rollout is not None:
            with contextlib.suppress(Exception):
                ray.get(rollout.close.remote(), timeout=10)
        if deployed:
            try:
                serve.delete(config.name)  # drains: each replica's lifespan finishes its requests
            except Exception as exc:  # the cluster is gone: nothing left to drain
                print(f"warning: could not delete {config.name!r} from the cluster: {first_line(exc)}",
                      file=sys.stderr)
        ray.shutdown()


def checked_locally(config: ServiceConfig) -> ServiceConfig:
    """Every export's manifest read and its path, like the key files', made absolute: the replicas
    and the Rollout actor see the driver's paths (key files: the same path on every node)."""
    from .auth import KeyFile

    exports = {name: os.path.abspath(resolve_export_dir(path)) for name, path in config.exports.items()}
    for path in exports.values():
        read_manifest(path)
    for flag in ("api_key_file", "admin_key_file"):
        if getattr(config, flag):
            KeyFile(getattr(config, flag), f"--{flag}")  # missing, unreadable or empty: exit 2 now
            config = replace(config, **{flag: os.path.abspath(getattr(config, flag))})
    if config.models:
        return replace(config, models=exports)
    return replace(config, model_path_prefix=exports[config.name])


def start_rollout_actor(ray, config: ServiceConfig, options: RayServeOptions, device: str):
    """The `Rollout` actor on this node (it reads export paths as this process does), given every
    model's files in the object store (this process owns them, the actor those of later rollouts:
    both live until the application is deleted)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .ray_rollout import Rollout
    from .registry import export_identity

    models = {}
    for name, path in config.exports.items():
        manifest = read_manifest(path)
        identity = export_identity(path)
        files = export_files(path, manifest, pick_model_file(manifest, path, device, config.use_fp16,
                                                             config.use_int8))
        models[name] = {"path": path, "ref": ray.put(files), "identity": identity}
        del files
    actor = ray.remote(Rollout).options(
        num_cpus=0, max_concurrency=8, scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False))
    return actor.remote(config, models, device, os.getcwd(), functools.partial(redeploy, options=options),
                        functools.partial(application_status, name=config.name), options.start_timeout)


def application(config: ServiceConfig, options: RayServeOptions, device: str, shipped: dict):
    """The Serve application: the deployment, bound to the shipped models and the service's settings."""
    serve = import_serve()
    return deployment_for(serve, config, options, device).bind(shipped, asdict(config))


def redeploy(shipped: dict, config: ServiceConfig, options: RayServeOptions) -> None:
    """Deploy the application again with these models (the Rollout actor's step 2): returns once Serve
    has the new target; Ray Serve rolls the replicas out meanwhile."""
    from ray.serve.api import _run

    _run(application(config, options, config.device, shipped), name=config.name, route_prefix=options.route_prefix,
         _blocking=False)


def application_status(name: str):
    """The Serve status of the application `name` (None when Serve cannot say)."""
    serve = import_serve()
    try:
        return serve.status().applications.get(name)
    except Exception:  # noqa: BLE001 (asked again)
        return None


def describe(serve, name: str, address: str, route_prefix: str) -> dict:
    """The URL Serve's proxies listen on, and the replicas running."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    replicas = 0
    try:  # a report, never worth failing for
        for deployment in serve.status().applications[name].deployments.values():
            replicas += deployment.replica_states.get("RUNNING", 0)
    except Exception:
        pass
    return {"address": address, "url": f"http://{host}:{http.port}{route_prefix.rstrip('/')}", "application": name,
            "replicas": replicas}


def wait(stop: Optional[threading.Event]) -> None:
    """Until `stop` is set, or SIGTERM / SIGINT arrive (then this returns, for a clean delete)."""
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
