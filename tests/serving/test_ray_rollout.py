"""serve.py --ray's swaps (utils/serving/ray_rollout.py) without a cluster: the `Rollout` actor's
logic with a fake deploy and a fake Serve status (the rollouts themselves: test_ray_serve.py)."""
import os
import shutil
import threading
import types

import pytest

from helpers import flip_byte, run_in_a_thread
from utils.serving.config import ServiceConfig
from utils.serving.ray_rollout import Rollout

OLD = {"labels": ["a", "b"], "task_type": "multi_class", "pair": False, "model_version": "news-old"}


def rollout(export, deploy, status, monkeypatch):
    """A Rollout serving `export` as news (generation 0 reported by a replica), its `shipped` a stub."""
    config = ServiceConfig(models={"news": export}, device="cpu", num_threads=1)
    actor = Rollout(config, {"news": {"path": export, "ref": "ref-0", "identity": None}}, "cpu", "/", deploy, status,
                    timeout=300)
    monkeypatch.setattr(actor, "shipped", lambda generation=None: {"generation": actor.generation,
                                                                   "models": {n: m["ref"] for n, m in
                                                                              actor.models.items()}})
    actor.replica_ready(0, {"news": OLD})
    return actor


def test_a_damaged_export_is_refused_before_anything_is_deployed(trained, tmp_path, monkeypatch):
    """A byte flipped in model.onnx: 422 naming the sha256 check and the version that still serves;
    the application is never deployed again and the served export stays the old one."""
    deployed = []
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(trained[1], "export"), broken)
    flip_byte(os.path.join(broken, "model.onnx"), mask=0xFF)
    actor = rollout(os.path.join(trained[1], "export"), lambda shipped, config: deployed.append(shipped), lambda: None,
                    monkeypatch)
    answer = actor.swap("news", broken, False)
    assert answer["error"]["status"] == 422 and "sha256 differs" in answer["error"]["message"]
    assert "still serves news-old" in answer["error"]["message"]
    assert deployed == [] and actor.models["news"]["ref"] == "ref-0" and actor.generation == 0
    assert actor.state("news")["last_swap"]["outcome"] == "refused" and actor.state("news")["loading"] is None


def test_a_second_swap_of_a_name_while_one_loads_is_refused_with_409(tmp_path, monkeypatch):
    """The first swap is held in its verification by the test (an Event): the second gets 409 at once."""
    entered, release = threading.Event(), threading.Event()

    def verify(name, path, old, allow):
        entered.set()
        release.wait()
        raise ValueError("stop here")

    actor = rollout(str(tmp_path), lambda shipped, config: None, lambda: None, monkeypatch)
    monkeypatch.setattr(actor, "verify", verify)
    first = {}
    thread = threading.Thread(target=lambda: first.setdefault("answer", actor.swap("news", "/new", False)))
    thread.start()
    entered.wait()
    second = actor.swap("news", "/other", False)
    release.set()
    thread.join()
    assert second["error"]["status"] == 409 and "is loading already (/new" in second["error"]["message"]
    assert first["answer"]["error"]["status"] == 422


def test_new_replicas_that_cannot_start_bring_the_previous_exports_back(tmp_path, monkeypatch):
    """Verification passes, but Serve reports the new deployment failed: 422 saying so, and the
    previous exports are deployed again (the second deploy carries the old files)."""
    deployed = []
    failed = types.SimpleNamespace(deployments={"ptuning": types.SimpleNamespace(
        status="DEPLOY_FAILED", message="replica error:\nptuning replica error: out of memory", replica_states={})})
    actor = rollout(str(tmp_path), lambda shipped, config: deployed.append(shipped["models"]["news"]),
                    lambda: failed, monkeypatch)
    monkeypatch.setattr(actor, "verify", lambda *args: ({"path": "/new", "ref": "ref-1", "identity": None}, None))
    answer = actor.swap("news", "/new", False)
    assert answer["error"]["status"] == 422 and "could not start" in answer["error"]["message"]
    assert "out of memory" in answer["error"]["message"]
    assert deployed == ["ref-1", "ref-0"] and actor.models["news"]["ref"] == "ref-0"
    assert actor.config.models["news"] == str(tmp_path)


def test_a_swap_answers_once_the_new_replicas_serve_and_no_old_one_runs(tmp_path, monkeypatch):
    """The answer waits for the new generation's replicas (reported by them) and for Serve to show
    none starting and no more running than reported: then 200 with the version the replicas report."""
    states = {"RUNNING": 2, "STARTING": 1}

    def status():
        return types.SimpleNamespace(deployments={"ptuning": types.SimpleNamespace(
            status="UPDATING", message="", replica_states=dict(states))})

    def deploy(shipped, config):  # Serve starts the new replica; it loads and reports; the old one stops
        def replica():
            actor.replica_ready(shipped["generation"], {"news": {**OLD, "model_version": "news-new"}})
            states.update(RUNNING=1, STARTING=0)
        threading.Thread(target=replica).start()

    actor = rollout(str(tmp_path), deploy, status, monkeypatch)
    monkeypatch.setattr(actor, "verify", lambda *args: ({"path": "/new", "ref": "ref-1", "identity": None}, None))
    answer = actor.swap("news", "/new", False)
    assert answer["outcome"] == "swapped" and answer["model_version"] == "news-new"
    assert answer["previous_version"] == "news-old" and actor.config.models["news"] == "/new"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values are Linux's")
def test_a_swaps_verification_loads_the_new_export_at_the_lowest_priority(trained, monkeypatch):
    """The Rollout actor checks a new export on a node whose replicas are serving: its load and parity
    sample run at nice 19 (as a one-process swap's), and the actor's thread gets its priority back."""
    import sys

    import utils.deploy.classifier
    from utils.deploy.priority import background_nice
    from utils.serving.registry import SWAP_NICE

    def nice():  # the background work's nice (utils/deploy/priority.py: its heavy steps run at it)
        return background_nice()

    real, seen = utils.deploy.classifier.Classifier, []
    monkeypatch.setattr(utils.deploy.classifier, "Classifier",
                        lambda *args, **options: seen.append(nice()) or real(*args, **options))
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(put=lambda files: "ref-1"))
    export = os.path.join(trained[1], "export")
    actor = rollout(export, lambda shipped, config: None, lambda: None, monkeypatch)

    def verify():
        before = nice()
        model, _ = actor.verify("news", export, OLD, True)
        return before, nice(), model["ref"]

    before, after, ref = run_in_a_thread(verify)
    assert seen == [SWAP_NICE] and ref == "ref-1"
    assert before is None and after is None
