"""The export directory's format: file names, ONNX input/output names, format version.

The one definition shared by the writer (utils/export/pipeline.py, with Paddle) and the readers
(utils/deploy/bundle.py, utils/deploy/preprocess.py, utils/deploy/predictor.py, without Paddle); it imports
nothing, so every side can use it.
"""

FORMAT_VERSION = 1  # the `format` field of manifest.json and preprocess.json

MANIFEST_FILE = "manifest.json"  # sizes and sha256 of every file, inputs/outputs, parity results
LABELS_FILE = "labels.json"  # [{id, label, word}, ...]: labels in logit order
PREPROCESS_FILE = "preprocess.json"  # the template as token-id parts, for the Paddle-free preprocessing
TEMPLATE_FILE = "template.json"  # the template as trained
VOCAB_FILE = "vocab.txt"  # the tokenizer's vocabulary (paddlenlp's save_pretrained names it)

MODEL_PREFIX = "model"  # Paddle static graph: model.json (or model.pdmodel) + model.pdiparams
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
ONNX_INT8_FILE = "model_int8.onnx"

# ONNX graph inputs (int64, [batch, sequence]) in the order of the model's forward(), and its output.
INPUT_NAMES = ("input_ids", "token_type_ids", "position_ids", "soft_token_ids")
OUTPUT_NAME = "logits"
MEMBER_OUTPUT = "member_logits"  # an ensemble's second output: [members, batch, labels], each member's logits
# The text's vector, last output of exports made since it exists (older ones lack it: readers check
# the manifest's `outputs`): [batch, hidden], the PLM's hidden state at the [MASK]s averaged over
# them (the `cls` head: its pooled vector); an ensemble's is its members' L2-normalised vectors
# concatenated and scaled by 1/sqrt(members). Fetched only by name (utils/selection), never by infer.py.
REPRESENTATION_OUTPUT = "mask_embedding"

# An ensemble whose members read texts through different templates (or lengths) has one set of the
# four inputs per template: a *view*. View 0 uses INPUT_NAMES, view i the same names + `_v<i>`.


def view_suffix(index: int) -> str:
    return "" if index == 0 else f"_v{index}"


def view_input_names(index: int) -> tuple:
    return tuple(name + view_suffix(index) for name in INPUT_NAMES)
