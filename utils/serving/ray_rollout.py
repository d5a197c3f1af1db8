"""serve.py --ray's model updates: a new export for a name, verified, then rolled out by Ray Serve.

Every replica of the Serve application is the whole `Service` (every model, as one serve.py
process), so a request is answered by one replica, hence by one version of its model. A swap
(`POST /admin/models/NAME`, `POST /admin/scan`, or the watcher every `--watch_interval_s`) is
handled by `Rollout`, a Ray actor that serve.py --ray starts on its own node (the export paths
are the driver's, as for the first deployment) and that lives as long as it:

1. the new export is verified as the one-process server verifies it (`registry.py`): every
   file's sha256 against the manifest, the manifest's parity record, the label set against the
   served one's (`--allow_label_change`), the parity sample. A failure leaves the application
   untouched: 422 saying why, and the old version serves on;
2. its files go to Ray's object store, and the application is deployed again with them (the same
   `serve.run` as the first deployment): Ray Serve's rolling update starts new replicas beside the
   old ones (`max_surge_percent`: old replicas serve until their replacements are ready), then
   stops the old ones, each finishing the requests it holds;
3. the answer comes once the new replicas serve and no old one is routed to any more (each new
   replica reports to this actor that its models are loaded; Serve's status says when none of the
   old ones is RUNNING). The admin request itself may be held by an old replica: it is answered
   as that replica drains. New replicas that cannot start are reported (the application is deployed
   again with the previous exports).

One rollout at a time for the whole application (each deploys every model's files); a second
swap of a name while one loads is refused with 409, as in one process.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

from ..errors import UserError
from .config import ServiceConfig

__all__ = ["Rollout", "refused"]

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often the actor asks Serve's status while a rollout runs


def refused(status: int, field: str, message: str) -> dict:
    """An answer the replica turns into its `RequestError` (an exception would reach it as Ray's)."""
    return {"error": {"status": status, "field": field, "message": message}}


class Rollout:
    """The Ray actor behind `--ray`'s admin routes and watcher (see the module's docstring).

    `models`: name -> {"path": the driver's export path, "ref": the shipped files' ObjectRef,
    "identity": `export_identity(path)` when they were read}. `deploy(shipped, config)` starts a
    deployment of the application without waiting (ray_serve.py's), `status()` returns the
    application's Serve status (or None)."""

    def __init__(self, config: ServiceConfig, models: Dict[str, dict], device: str, cwd: str,
                 deploy: Callable[[dict, ServiceConfig], None], status: Callable[[], Any], timeout: float):
        self.config, self.models, self.device, self.cwd = config, dict(models), device, cwd
        self.deploy, self.status, self.timeout = deploy, status, timeout
        self.generation = 0
        self.announcements: Dict[str, dict] = {}
        self.ready: Dict[int, int] = {}              # generation -> replicas that loaded it
        self.metadata: Dict[int, dict] = {}          # generation -> {name: labels, task_type, pair, model_version}
        self.loading: Dict[str, dict] = {}
        self.last_swap: Dict[str, dict] = {}
        self.attempted: Dict[str, object] = {}
        self.closing = False
        self.changed = threading.Condition()
        self.deploying = threading.Lock()
        self.stopped = threading.Event()

    # Called by the driver and the replicas

    def shipped(self, generation: Optional[int] = None) -> dict:
        """The replicas' first constructor argument for this state of the models."""
        import ray

        return {"models": {name: model["ref"] for name, model in self.models.items()},
                "rollout": ray.get_runtime_context().current_actor,
                "generation": self.generation if generation is None else generation,
                "announcements": dict(self.announcements)}

    def replica_ready(self, generation: int, metadata: dict) -> None:
        with self.changed:
            self.ready[generation] = self.ready.get(generation, 0) + 1
            self.metadata.setdefault(generation, metadata)
            self.changed.notify_all()

    def watch(self, interval: float) -> None:
        """From now on, every `interval` seconds: `scan` (in a thread of this actor)."""
        def loop():
            while not self.stopped.wait(interval):
                try:
                    self.scan()
                except Exception:  # noqa: BLE001 (the watcher never dies of one scan)
                    logger.exception("scanning the exports failed")

        threading.Thread(target=loop, name="watch", daemon=True).start()

    def close(self) -> None:
        """serve.py --ray is stopping: no new swap, a rollout waiting is abandoned."""
        with self.changed:
            self.closing = True
            self.stopped.set()
            self.changed.notify_all()

    def state(self, name: str) -> dict:
        return {"loading": self.loading.get(name), "last_swap": self.last_swap.get(name)}

    # Swaps

    def scan(self) -> List[dict]:
        """Once: swap every model whose export path holds a new complete export (the watcher's step)."""
        from .registry import export_identity

        outcomes = []
        for name, model in list(self.models.items()):
            identity = export_identity(model["path"])
            if (identity is None or identity == model["identity"] or identity == self.attempted.get(name)
                    or name in self.loading or self.closing):
                continue
            self.attempted[name] = identity
            answer = self.swap(name, model["path"], self.config.allow_label_change, "watch")
            outcomes.append(self.last_swap.get(name, {"model": name, **answer}))
        return outcomes

    def swap(self, name: str, path: str, allow_label_change: bool, trigger: str = "admin") -> dict:
        """Verify the export at `path`, then roll it out as `name`: the outcome, or `refused(...)`."""
        path = os.path.join(self.cwd, path)  # (relative: to serve.py's directory, as the first exports)
        with self.changed:
            if self.closing:
                return refused(503, "service", "the service is shutting down")
            if name in self.loading:
                loading = self.loading[name]
                return refused(409, "name", f"a new export for {name!r} is loading already ({loading['path']}, for "
                                            f"{time.time() - loading['since']:.0f} s); retry once it is done")
            old = self.metadata.get(self.generation, {}).get(name)
            if old is None:
                return refused(503, "service", "the replicas are still starting; retry shortly")
            self.loading[name] = {"path": path, "since": time.time(), "trigger": trigger}
        started = time.monotonic()
        try:
            try:
                model, announcement = self.verify(name, path, old, allow_label_change)
            except Exception as exc:  # noqa: BLE001 (any failure keeps the old version: reported, never a 500)
                reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                return self.failed(name, path, "refused", reason, old["model_version"],
                                   f"the new export was refused and {name!r} still serves {old['model_version']}: ")
            with self.deploying:
                return self.roll_out(name, path, model, announcement, old, trigger, started)
        finally:
            with self.changed:
                self.loading.pop(name, None)

    def verify(self, name: str, path: str, old: dict, allow_label_change: bool):
        """The new export checked as registry.py checks a swap (sha256, parity record, labels, parity
        sample: on this node's CPU), then its files in the object store: `(model entry, announcement)`."""
        import ray

        from ..deploy.bundle import read_manifest, resolve_export_dir
        from ..deploy.classifier import Classifier
        from ..deploy.predictor import pick_model_file
        from .ray_infer import export_files
        from .registry import export_identity, load_checked

        identity = export_identity(path)  # before reading: a later rename is another export
        export_dir = resolve_export_dir(path)
        options = replace(self.config, device="cpu", device_id=0, use_fp16=False).classifier_options()
        # beside the replicas serving on this node, as one process's swaps load; the checked model is
        # not kept (the replicas load the shipped files)
        announcement = load_checked(lambda: Classifier(export_dir, **options), SimpleNamespace(**old),
                                    allow_label_change, self.config.max_batch_size)[1]
        manifest = read_manifest(export_dir)
        files = export_files(export_dir, manifest, pick_model_file(manifest, export_dir, self.device,
                                                                   self.config.use_fp16, self.config.use_int8))
        return {"path": path, "ref": ray.put(files), "identity": identity}, announcement

    def roll_out(self, name: str, path: str, model: dict, announcement: Optional[dict], old: dict, trigger: str,
                 started: float) -> dict:
        previous = (dict(self.models), self.config, dict(self.announcements), self.generation)
        self.models[name] = model
        if self.config.models:
            self.config = replace(self.config, models={**self.config.models, name: path})
        else:
            self.config = replace(self.config, model_path_prefix=path)
        if announcement:
            self.announcements[name] = {**announcement, "previous_version": old["model_version"], "at": time.time()}
        self.generation += 1
        problem = self.start_and_wait()
        if problem is not None and self.closing:  # the application is being deleted: nothing to restore
            self.models, self.config, self.announcements, self.generation = previous
            self.failed(name, path, "abandoned", problem, old["model_version"], "")
            return refused(503, "service", f"the service is shutting down: the new export for {name!r} was not "
                                           "put in service")
        if problem is not None:  # back to the exports that served (another rollout of them)
            self.models, self.config, self.announcements, _ = previous
            self.generation += 1
            self.deploy(self.shipped(), self.config)
            return self.failed(name, path, "refused", problem, old["model_version"],
                               f"the new replicas of {name!r} could not start, the previous exports are deployed "
                               f"again ({old['model_version']} serves): ")
        version = self.metadata[self.generation][name]["model_version"]
        outcome = {"model": name, "model_version": version, "previous_version": old["model_version"], "path": path,
                   "trigger": trigger, "seconds": round(time.monotonic() - started, 3), "outcome": "swapped",
                   "labels_changed": self.announcements.get(name) if announcement else None}
        self.last_swap[name] = outcome
        logger.info("%s now serves %s (was %s; %s)", name, version, old["model_version"], trigger)
        return outcome

    def start_and_wait(self) -> Optional[str]:
        """Deploy the current state and wait until its replicas serve and no older one is routed to:
        None, or why not (new replicas failing, the time limit, shutdown)."""
        generation, deadline = self.generation, time.monotonic() + self.timeout
        if self.closing:
            return "the service is shutting down"
        try:
            self.deploy(self.shipped(), self.config)
        except Exception as exc:  # noqa: BLE001 (reported to the caller)
            return f"{type(exc).__name__}: {exc}"
        while True:
            with self.changed:
                self.changed.wait(POLL_S)
                if self.closing:
                    return "the service is shutting down"
                ready = self.ready.get(generation, 0)
            status = self.status()
            if status is not None:
                deployments = list(status.deployments.values())
                failed = [d.message for d in deployments if str(getattr(d.status, "value", d.status))
                          in ("DEPLOY_FAILED", "UNHEALTHY")]
                if failed:
                    return failed[0].strip().splitlines()[-1] if failed[0].strip() else "the deployment failed"
                states = {str(getattr(k, "value", k)): v for d in deployments for k, v in d.replica_states.items()}
                if ready and not states.get("STARTING") and not states.get("UPDATING") and \
                        states.get("RUNNING", 0) <= ready:
                    return None
            if time.monotonic() > deadline:
                return f"the new replicas did not all start within {self.timeout:.0f} s"

    def failed(self, name: str, path: str, outcome: str, reason: str, version: str, prefix: str) -> dict:
        self.last_swap[name] = {"model": name, "path": path, "outcome": outcome, "reason": reason,
                                "model_version": version, "at": time.time()}
        logger.error("%s: the export at %s was %s, %s still serves: %s", name, path, outcome, version, reason)
        return refused(422, "path", prefix + reason)
