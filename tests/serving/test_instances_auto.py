"""serve.py --instances auto (utils/serving/batcher.py `Batcher(split_model=...)`): a batch that runs
alone goes to the all-threads model, batches that run side by side go to the split model, and no
request is lost, answered twice or dropped on shutdown. Fake models; every state is held by the test
(threading.Event), never timed."""
import asyncio
import threading

import numpy as np
import pytest

from service_fakes import FakeClassifier, FakeModel, HeldModel
from utils.errors import UserError
from utils.serving.app import Service, ServiceConfig
from utils.serving.batcher import Batcher

HANG_GUARD = 120  # seconds: only turns a hang (a state never reached) into a failure


class PairHeld(FakeModel):
    """A FakeModel whose runs wait until `release`; `both` is set once two runs are in progress at
    once (what the split path is for), `active`/`most` count them."""

    def __init__(self):
        super().__init__()
        self.lock, self.active, self.most = threading.Lock(), 0, 0
        self.both, self.release = threading.Event(), threading.Event()

    def run(self, features, batch_size=32):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            if self.active == 2:
                self.both.set()
        try:
            self.release.wait()
            return super().run(features, batch_size)
        finally:
            with self.lock:
                self.active -= 1


def auto_batcher(full, split, **kwargs):
    options = dict(max_batch_size=32, max_wait_ms=0, max_queue=1000, workers=2, split_model=split)
    return Batcher(full, **{**options, **kwargs})


def texts(ids):
    return [{"text_a": str(i)} for i in ids]


def test_a_lone_batch_runs_on_the_all_threads_model():
    """One client, one request after the other: every batch runs alone, so every one gets every
    thread (with --instances 2 each would get half)."""
    full, split = FakeModel(), FakeModel()

    async def go():
        batcher = auto_batcher(full, split)
        batcher.start()
        for text in range(5):
            probs = await asyncio.wait_for(batcher.submit(texts([text])), HANG_GUARD)
            assert list(probs.argmax(1)) == [text % 3]
        await batcher.close()
        return batcher

    batcher = asyncio.run(go())
    assert full.batches == [[0], [1], [2], [3], [4]] and split.batches == []
    assert batcher.paths == {"full": 5}


def test_two_batches_waiting_run_side_by_side_on_the_split_model():
    """32 texts queued while both workers are idle: each worker takes half and both run at once on
    the split model (half the threads each), none on the all-threads one."""
    full, split = FakeModel(), PairHeld()
    threading.Thread(target=lambda: (split.both.wait(HANG_GUARD), split.release.set()), daemon=True).start()

    async def go():
        batcher = auto_batcher(full, split)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(texts([i])) for i in range(32)))
        await batcher.close()
        return batcher, results

    batcher, results = asyncio.run(go())
    assert split.both.is_set() and split.most == 2  # side by side: both runs held at once
    assert sorted(map(len, split.batches)) == [16, 16] and full.batches == []
    assert batcher.paths == {"split": 2}
    assert [list(p.argmax(1)) for p in results] == [[i % 3] for i in range(32)]


def test_a_batch_taken_while_another_runs_goes_to_the_split_model_and_a_lone_one_after_to_the_full():
    """A lone request held on the all-threads model; a second arriving meanwhile runs beside it, on
    the split model; once both are answered a lone request gets every thread again."""
    full, split = HeldModel(), FakeModel()

    async def go():
        batcher = auto_batcher(full, split)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(texts([1])))
        await asyncio.get_running_loop().run_in_executor(None, full.started.wait, HANG_GUARD)
        second = await asyncio.wait_for(batcher.submit(texts([2])), HANG_GUARD)  # while the first is held
        assert not first.done()
        full.release.set()
        await asyncio.wait_for(first, HANG_GUARD)
        third = await asyncio.wait_for(batcher.submit(texts([3])), HANG_GUARD)
        await batcher.close()
        return batcher, second, third

    batcher, second, third = asyncio.run(go())
    assert full.batches == [[1], [3]] and split.batches == [[2]]
    assert list(second.argmax(1)) == [2] and list(third.argmax(1)) == [0]
    assert batcher.paths == {"full": 2, "split": 1}


@pytest.mark.parametrize("shared", [True, False], ids=["sharing RunningBatches", "each its own"])
def test_a_lone_batch_runs_on_the_split_model_while_a_batcher_sharing_the_cores_runs_one(shared):
    """Two batchers (a swap's old and new version, or two models of one service) given one
    `RunningBatches`: while the old one's batch is held on its all-threads model, a lone batch of the
    new one goes to its split model, as a second batch of one batcher would; the next lone batch, after,
    gets every thread. Batchers that do not share it each count only their own batches (full twice)."""
    from utils.serving.batcher import RunningBatches

    old_full, new_full, new_split = HeldModel(), FakeModel(), FakeModel()
    running = RunningBatches() if shared else None

    async def go():
        old = auto_batcher(old_full, FakeModel(), running=running)
        new = auto_batcher(new_full, new_split, running=running if shared else RunningBatches())
        old.start()
        new.start()
        held = asyncio.ensure_future(old.submit(texts([1])))
        await asyncio.get_running_loop().run_in_executor(None, old_full.started.wait, HANG_GUARD)
        during = await asyncio.wait_for(new.submit(texts([2])), HANG_GUARD)  # while the old batch is held
        old_full.release.set()
        await asyncio.wait_for(held, HANG_GUARD)
        after = await asyncio.wait_for(new.submit(texts([3])), HANG_GUARD)
        await asyncio.gather(old.close(), new.close())
        return new, during, after

    new, during, after = asyncio.run(go())
    assert list(during.argmax(1)) == [2] and list(after.argmax(1)) == [0]
    if shared:
        assert new_split.batches == [[2]] and new_full.batches == [[3]] and running.count == 0
    else:
        assert new_split.batches == [] and new_full.batches == [[2], [3]]


def test_closed_loop_clients_get_every_text_answered_once_on_either_path():
    """8 closed-loop clients, 10 rounds: batches go to both models; every text is run exactly once
    over the two, and each client gets its own answer every time."""
    full, split = FakeModel(), FakeModel()
    answers = {i: 0 for i in range(8)}

    async def client(batcher, i):
        for _ in range(10):
            probs = await asyncio.wait_for(batcher.submit(texts([i])), HANG_GUARD)
            assert list(probs.argmax(1)) == [i % 3]
            answers[i] += 1

    async def go():
        batcher = auto_batcher(full, split, max_batch_size=4)
        batcher.start()
        await asyncio.gather(*(client(batcher, i) for i in range(8)))
        await batcher.close()
        return batcher

    batcher = asyncio.run(go())
    ran = sorted(t for batch in full.batches + split.batches for t in batch)
    assert ran == sorted(list(range(8)) * 10) and answers == {i: 10 for i in range(8)}
    assert sum(batcher.paths.values()) == len(full.batches) + len(split.batches)
    assert split.batches  # 8 clients, batches of 4: some ran side by side


def test_closing_drains_the_queue_and_the_held_runs_on_both_paths():
    """close() (serve.py's SIGTERM) while two split runs are held and more requests wait: new requests
    are refused, and every request already in the service is answered before the workers stop."""
    full, split = FakeModel(), PairHeld()

    async def go():
        batcher = auto_batcher(full, split, max_batch_size=4)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(texts([4 * i + j for j in range(4)]))) for i in range(6)]
        await asyncio.get_running_loop().run_in_executor(None, split.both.wait, HANG_GUARD)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)  # (one turn of the loop: close() has set `closing`)
        with pytest.raises(Exception, match="shutting down"):
            await batcher.submit(texts([99]))
        split.release.set()
        await asyncio.wait_for(closing, HANG_GUARD)
        return [w.result() for w in waiting]

    results = asyncio.run(go())
    assert [list(p.argmax(1)) for p in results] == [[(4 * i + j) % 3 for j in range(4)] for i in range(6)]
    assert sorted(t for batch in full.batches + split.batches for t in batch) == list(range(24))


def test_auto_splits_cpu_threads_only_where_there_are_two_to_split():
    """--instances auto: the all-threads session gets every thread, the split one half, two workers;
    with one thread or on a GPU there is nothing to split: one worker, no split session."""
    config = ServiceConfig("x", device="cpu", num_threads=4, instances="auto")
    assert (config.model_threads("cpu"), config.split_threads("cpu"), config.workers("cpu")) == (4, 2, 2)
    one = ServiceConfig("x", device="cpu", num_threads=1)
    assert (one.model_threads("cpu"), one.split_threads("cpu"), one.workers("cpu")) == (1, None, 1)
    gpu = ServiceConfig("x", device="gpu", num_threads=4)
    assert (gpu.split_threads("gpu"), gpu.workers("gpu")) == (None, 1)
    two = ServiceConfig("x", device="cpu", num_threads=4, instances="2")  # as the command line gives it
    assert (two.instances, two.model_threads("cpu"), two.split_threads("cpu"), two.workers("cpu")) == (2, 2, None, 2)
    for bad in ("automatic", "-1", "0", 1.5):
        with pytest.raises(UserError, match="positive integer or `auto`"):
            ServiceConfig("x", device="cpu", num_threads=4, instances=bad)


def test_without_a_split_model_every_batch_runs_on_the_one_model():
    """--instances N (no split model): the batcher's choice is not consulted; nothing counted."""
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=4, max_wait_ms=0, max_queue=100, workers=2)

    async def go():
        batcher.start()
        await asyncio.gather(*(batcher.submit(texts([i])) for i in range(10)))
        await batcher.close()

    asyncio.run(go())
    assert sorted(t for b in model.batches for t in b) == list(range(10)) and not batcher.paths
    assert np.sum([len(b) for b in model.batches]) == 10


@pytest.mark.parametrize("instances, split, workers", [(None, False, 1), (None, True, 2), ("2", False, 2)],
                         ids=["auto without a split session", "auto with one", "2"])
def test_auto_is_the_default_and_a_model_without_a_split_session_gets_one_worker(instances, split, workers):
    """`auto` is the default; a model loaded without a split session (a Ray Serve replica's: Ray
    scales by replicas) gets one worker, as two on its one all-threads session would oversubscribe
    the cores; with a split session two; --instances 2 two either way."""
    from fastapi.testclient import TestClient

    options = {} if instances is None else {"instances": instances}
    config = ServiceConfig("fake-export", device="cpu", num_threads=4, **options)
    assert config.instances == ("auto" if instances is None else 2)
    classifier = FakeClassifier(FakeModel())
    classifier.split_model = FakeModel() if split else None
    service = Service(config, classifiers={"cls_default": classifier})
    with TestClient(service.asgi()) as client:
        assert client.post("/predict", json={"texts": ["1"]}).status_code == 200
        assert service.registry.slots["cls_default"].batcher.workers == workers
