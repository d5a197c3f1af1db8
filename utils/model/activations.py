"""The Decoder's activation (utils/task/decoding.py: `softmax` over the labels, or one `sigmoid` per
label) as Paddle ops, for graphs and losses that need probabilities; numpy code calls
`Decoder.probabilities`. The task type decides the name, in the Decoder only."""
import paddle.nn.functional as F

from ..task.decoding import SIGMOID, SOFTMAX

PADDLE_ACTIVATIONS = {SOFTMAX: lambda logits: F.softmax(logits, axis=-1), SIGMOID: F.sigmoid}


def activate(logits, activation: str):
    """`activation` (a Decoder's `activation`) of `logits`, in dynamic and static graphs."""
    return PADDLE_ACTIVATIONS[activation](logits)
