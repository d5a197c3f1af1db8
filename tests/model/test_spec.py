"""The model spec (utils/model/spec.py): a Paddle-free description of a model, read and written
without importing Paddle; building the model from it is the model code's (utils/model/assembly.py)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from helpers import BLOCK_PADDLE
from utils.model.prompt import build_template, classifier_template
from utils.model.spec import ModelSpec

PLM_CONFIG = {"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "max_position_embeddings": 64}

# (head, PLM class, template, task type): one spec per kind of head
KINDS = {
    "soft": ("ErnieForMaskedLM", build_template("主题是", mask_length=1), "multi-class"),
    "manual": ("ErnieForMaskedLM", build_template("主题是", mask_length=2), "multi-class"),
    "cls": ("ErnieForSequenceClassification", classifier_template(False), "multi-class"),
    "soft-multi-label": ("ErnieForMaskedLM", build_template("主题是", mask_length=1), "multi-label"),
    "cls-multi-label": ("ErnieForSequenceClassification", classifier_template(False), "hierarchical"),
}

READ_WITHOUT_PADDLE = BLOCK_PADDLE + """
import json
from utils.model.spec import ModelSpec
spec = ModelSpec.load(sys.argv[1])
assert ModelSpec.from_dict(spec.to_dict()) == spec
decoder = spec.decoder
print(json.dumps({"method": spec.method.value, "verbalizer": spec.verbalizer, "plm_head": spec.kind.plm_head,
                  "multi_label": decoder.multi_label, "labels": decoder.names(decoder.probabilities([[0.0, 1.0]]))
                  if not decoder.multi_label else [bool(x) for x in decoder.decide(decoder.probabilities([[3.0, -3.0]]))[0]
                                                   ]}))
"""


def spec_of(head, tmp_path):
    model_class, template, task_type = KINDS[head]
    labels = ["体育", "体育##足球"] if task_type == "hierarchical" else ["体育", "财经"]
    spec = ModelSpec(head=head, template=template, labels=labels, label_words=["体育", "足球"], max_seq_length=32,
                     model_name_or_path="ernie-3.0-base-zh", model_class=model_class, plm_config=PLM_CONFIG,
                     task_type=task_type, head_options={"loss": "mlm"} if head == "manual" else {},
                     thresholds=None if task_type == "multi-class" else [0.5, 0.5])
    directory = tmp_path / head
    directory.mkdir()
    spec.save(str(directory))
    return spec, str(directory)


@pytest.mark.parametrize("head", sorted(KINDS))
def test_reading_and_writing_a_spec_imports_no_paddle(head, tmp_path):
    spec, directory = spec_of(head, tmp_path)
    result = subprocess.run([sys.executable, "-c", READ_WITHOUT_PADDLE, directory], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["method"] == ("finetune" if head.startswith("cls") else "ptuning")
    assert seen["verbalizer"] == (None if head.startswith("cls") else head.split("-")[0])
    assert seen["plm_head"] == ("sequence_classification" if head.startswith("cls") else "masked_lm")
    assert seen["multi_label"] == head.endswith("multi-label")
    assert seen["labels"] == ([True, False] if seen["multi_label"] else [spec.labels[1]])
    with open(os.path.join(directory, "ptuning_config.json"), encoding="utf-8") as fp:
        assert ModelSpec.from_dict(json.load(fp)) == spec
