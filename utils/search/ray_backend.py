"""search.py --ray: the trials' runs as Ray tasks on a cluster, driven by Optuna's ask/tell.

Not Ray Tune: `import ray.tune` fails in this environment. Ray 2.60's Tune imports Ray AIR, which imports
Ray Data, which needs pyarrow >= 17, and paddlenlp 2.8.1 needs pyarrow < 17 (requirements.txt). So the driver
keeps the study (the same `TrialLoop` as a local search: the same storage, pruning, resume) and runs
`--parallel` trials at once in threads; each run of a trial is one Ray task (`num_cpus=1`) that runs train.py
in a subprocess on whichever node has a free CPU, exactly as a local run does, and returns its metrics. A
run's dev metric reaches the pruner as soon as its task ends, so a bad trial's later runs are never sent.

The task runs the driver's `python` and `train.py` paths and writes into the search's folder: both must be at
the same path on every node (one machine, or a shared file system), as with multirun's folders.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import UserError
from ..serving.ray_infer import CONNECT_TIMEOUT, connect, import_ray
from ..training import multirun

FLAG = "--ray"


def train_on_node(run: multirun.Run, command: List[str]) -> Dict[str, object]:
    """The Ray task's body: train.py in a subprocess on the node (multirun's `run_training`)."""
    import socket

    try:
        seconds = multirun.run_training(run, command)
    except UserError as exc:  # the driver raises it again, with the log's tail
        return {"error": [exc.message, exc.path]}
    return {"seconds": seconds, "metrics": multirun.collect_metrics(run.output_dir), "node": socket.gethostname()}


class RayCluster:
    """A connection to the cluster: `execute(run, command)` as a task, `run_workers` the trial threads."""

    def __init__(self, address: str, output_dir: str):
        self.ray = import_ray()
        self.address, self.output_dir = address, output_dir
        self.task = None
        self.nodes: Dict[str, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> "RayCluster":
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # all of utils/
        connect(self.ray, self.address, CONNECT_TIMEOUT, runtime_env={"py_modules": [package_dir]})
        self.task = self.ray.remote(num_cpus=1, max_retries=0)(train_on_node)
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def execute(self, run: multirun.Run, command: List[str]) -> Tuple[float, Dict[str, float]]:
        result = self.ray.get(self.task.remote(run, command))
        if "error" in result:
            message, path = result["error"]
            raise UserError(message, path)
        with self.lock:
            self.nodes[result["node"]] = self.nodes.get(result["node"], 0) + 1
        return result["seconds"], result["metrics"]

    def run_workers(self, work: Callable[[], None], parallel: Optional[int]) -> None:
        """`parallel` (default: the cluster's CPUs) threads each running `work`; the first error is raised."""
        count = parallel or self.cpus()
        errors: List[BaseException] = []

        def target():
            try:
                work()
            except BaseException as exc:  # raised again in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=target, name=f"trial-{i}", daemon=True) for i in range(count)]
        sys.stderr.write(f"[ray] {count} trial(s) at once on the cluster at {self.address}\n")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        sys.stderr.write(f"[ray] runs per node: {self.nodes}\n")
