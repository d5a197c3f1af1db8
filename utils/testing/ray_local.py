"""A throwaway Ray cluster of several nodes on this machine: for the tests and benchmark of `infer.py --ray`.

    with LocalRayCluster(["node_a", "node_b"]) as cluster:   # 2 nodes, 1 CPU each, resource node_a / node_b
        subprocess.run([python, "infer.py", "--ray", cluster.address, ...], env=cluster.env)
        cluster.nodes()                                        # {resource: node id}

Each node is `ray start --block` in its own process group and temporary directory, with the dashboard
and usage stats off, its own ports, and token authentication (the nodes listen on the machine's
address: Ray turns 127.0.0.1 into it). `stop()` ends exactly these process groups (SIGTERM, then
SIGKILL) and any process still naming the cluster's directory, never `ray stop`, which would end
every Ray process of the user on the machine. Start and stop are bounded in time.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

__all__ = ["LocalRayCluster"]

STARTED = "Ray runtime started"


def free_ports(n: int) -> List[int]:
    """`n` distinct free ports: all bound at once, so the kernel cannot hand out one twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalRayCluster:
    """`len(resources)` nodes; node i has `cpus` CPUs and the custom resource `resources[i]` (1 unit)."""

    def __init__(self, resources: Sequence[str] = ("node_a", "node_b"), cpus: int = 1,
                 object_store_mb: int = 256, start_timeout: float = 120.0, python: str = sys.executable):
        self.resources = list(resources)
        self.cpus = cpus
        self.object_store_mb = object_store_mb
        self.start_timeout = start_timeout
        self.python = python
        self.ray = [python, "-m", "ray.scripts.scripts"]  # the `ray` command, wherever pip put its script
        # Short and in /tmp: Ray's Unix sockets live under it (108-byte path limit).
        self.root = tempfile.mkdtemp(prefix="ptuning-ray-", dir="/tmp")
        # GCS, dashboard (started even when disabled), and one dashboard agent per node: fixed defaults otherwise.
        self.port, self.dashboard_port, *self.agent_ports = free_ports(2 + len(self.resources))
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # stop at once, no 30 s drain
        self.env.pop("RAY_ADDRESS", None)
        self.processes: List[subprocess.Popen] = []

    def __enter__(self) -> "LocalRayCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def log(self, index: int) -> str:
        return os.path.join(self.root, f"node{index}.log")

    def start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        for index, resource in enumerate(self.resources):
            temp_dir = os.path.join(self.root, f"n{index}")
            cmd = [*self.ray, "start", "--block", "--num-cpus", str(self.cpus), "--resources",
                   json.dumps({resource: 1}), "--temp-dir", temp_dir, "--disable-usage-stats",
                   "--object-store-memory", str(self.object_store_mb << 20),
                   "--dashboard-agent-listen-port", str(self.agent_ports[index])]
            if index == 0:
                cmd += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--dashboard-port", str(self.dashboard_port)]
            else:
                cmd += ["--address", self.address]
            with open(self.log(index), "w") as log:
                # Own session: stop() signals this node's whole process group and nothing else.
                self.processes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                       start_new_session=True))
            self._wait_started(index, deadline)
        self._wait_nodes(deadline)

    def _wait_started(self, index: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            with open(self.log(index)) as fp:
                if STARTED in fp.read():
                    return
            if self.processes[index].poll() is not None:
                break
            time.sleep(0.2)
        with open(self.log(index)) as fp:
            tail = fp.read()[-3000:]
        raise RuntimeError(f"ray start of node {index} failed or timed out ({self.start_timeout:.0f} s):\n{tail}")

    def _wait_nodes(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if len(self.nodes(timeout=max(5.0, deadline - time.monotonic()))) == len(self.resources):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not reach {len(self.resources)} alive nodes in {self.start_timeout:.0f} s")

    def nodes(self, timeout: float = 60.0) -> Dict[str, str]:
        """`{custom resource: node id}` of the alive nodes, asked from a separate driver process."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']])); "
                "ray.shutdown()")
        result = subprocess.run([self.python, "-c", code, self.address], capture_output=True, text=True,
                                env=self.env, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"cannot list the cluster's nodes:\n{result.stderr[-3000:]}")
        nodes = json.loads(result.stdout.strip().splitlines()[-1])
        return {name: node_id for node_id, resources in nodes for name in self.resources if name in resources}

    def stop(self, timeout: float = 15.0) -> List[int]:
        """End the nodes; returns the pids of stray processes that had to be killed one by one."""
        for process in reversed(self.processes):
            self._signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in reversed(self.processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(process, signal.SIGKILL)  # whatever of the group is left
            process.wait()
        strays = self.leftover_pids()
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.processes = []
        shutil.rmtree(self.root, ignore_errors=True)
        return strays

    @staticmethod
    def _signal_group(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)  # the group is the node's: started with start_new_session
        except (ProcessLookupError, PermissionError):
            pass

    def leftover_pids(self) -> List[int]:
        """Processes whose command line names this cluster's directory (e.g. workers in a session of their own)."""
        pids = []
        needle = self.root.encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as fp:
                        if needle in fp.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids
