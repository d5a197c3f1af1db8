"""Optional: the real FewCLUE files in ../shared parse with the strict readers (skipped when absent)."""
import os

import pytest

from conftest import shared_path
from utils.dataset.folder import load_dataset_dir, read_examples


@pytest.mark.parametrize("task, n_labels", [("tnews", 15), ("eprstmt", 2)])
def test_fewclue_task_parses(task, n_labels):
    data_dir = shared_path("data", "fewclue", task)
    ds = load_dataset_dir(data_dir, need_test=True)
    assert len(ds.labels.labels) == n_labels
    assert ds.train and ds.dev and ds.test and ds.data and not ds.is_pair
    assert set(range(n_labels)) == {e["labels"] for e in ds.test}
    splits = os.path.join(data_dir, "splits")
    for name in sorted(os.listdir(splits)):
        examples = read_examples(os.path.join(splits, name), labelled=True, label_to_id=ds.labels.label_to_id)
        assert examples, name
