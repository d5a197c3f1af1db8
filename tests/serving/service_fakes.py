"""Stand-ins for the model behind utils/serving/app.py, so that service tests hold the service in a
known state instead of sleeping: `FakeModel` answers at once (or after `delay`), `HeldModel`'s runs
wait until the test sets `release`.

Run as a script it is serve.py (its flags, checks, port, uvicorn and signals) with a `HeldModel`
for a model: each run prints `run N` (N texts) on stdout, after serve.py's JSON line, and waits for
a line on stdin (tests/serving/test_service.py holds requests in flight that way); a swap to an
export path named `held-load` prints `run load` and never finishes loading."""
import asyncio
import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeModel:
    """Stands in for ExportedClassifier: a text's row is one-hot at `(int(text) + shift) % 3`; records
    batches. `tag` makes its manifest (so its model_version) its own; `labels` its label set."""

    def __init__(self, delay=0.0, fail_on=None, length=lambda text: 1, shift=0, tag="v1", labels=("a", "b", "c"),
                 nan=False):
        from utils.task.decoding import Decoder

        self.batches, self.delay, self.fail_on, self.length = [], delay, fail_on, length
        self.shift, self.nan = shift, nan
        self.labels = list(labels)
        self.decoder = Decoder("multi-class", self.labels)
        self.manifest = {"max_seq_length": 512, "created": tag}

    def encoder(self, max_seq_length=None):
        return self

    def with_threads(self, num_threads):  # --instances auto's split path: the same fake
        return self

    def split(self, examples):  # one input per text (a truncate model's)
        return list(examples), [None] * len(examples)

    def documents(self, logits, pieces):
        return logits

    def encode(self, examples):
        return [{"input_ids": [int(e["text_a"])] * self.length(int(e["text_a"]))} for e in examples]

    def run(self, features, batch_size=32):
        time.sleep(self.delay)
        ids = [f["input_ids"][0] for f in features]
        if self.fail_on in ids:
            raise RuntimeError("this text breaks the model")
        self.batches.append(ids)
        logits = np.full((len(ids), len(self.labels)), -10.0, dtype=np.float32)
        logits[np.arange(len(ids)), (np.array(ids, dtype=int) + self.shift) % len(self.labels)] = 10.0
        return logits * np.nan if self.nan else logits


class HeldModel(FakeModel):
    """A FakeModel whose runs wait until `release` is set; `started` is set (and `on_start(texts)`
    called) as each begins. A run on the event loop's thread fails at once instead of blocking
    the loop (and the test) for good."""

    def __init__(self, on_start=None, **kwargs):
        super().__init__(**kwargs)
        self.started, self.release, self.on_start = threading.Event(), threading.Event(), on_start

    def run(self, features, batch_size=32):
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread, as it should be
            pass
        else:
            raise AssertionError("the model ran on the event loop's thread")
        if self.on_start is not None:
            self.on_start(len(features))
        self.started.set()
        self.release.wait()
        return super().run(features, batch_size)


class FakeClassifier:
    """What the service uses of a `utils.Classifier`, around a fake model."""

    pair, device, thresholds = False, "cpu", None

    def __init__(self, model, export_dir="fake-export"):
        self.model, self.labels, self.export_dir = model, model.labels, export_dir

    @property
    def task_type(self):
        return self.model.decoder.task_type


def serve_held(argv) -> int:
    """serve.py's main with every model a HeldModel released by a line on stdin."""
    import serve
    import utils.deploy.classifier
    from utils.errors import run_cli

    printing = threading.Lock()  # runs start on several instances' threads: one whole line at a time

    def say_run(texts):
        with printing:
            print(f"run {texts}", flush=True)

    model = HeldModel(on_start=say_run)
    threading.Thread(target=lambda: (sys.stdin.readline(), model.release.set()), daemon=True).start()

    def load(export_dir, **options):  # serve.py's loads; a swap to a path named held-load never ends
        if os.path.basename(export_dir) == "held-load":
            say_run("load")  # ("run load": the swap's load has started)
            threading.Event().wait()
        return FakeClassifier(model, export_dir)

    utils.deploy.classifier.Classifier = load
    return run_cli(serve.main, argv)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(serve_held(sys.argv[1:]))
