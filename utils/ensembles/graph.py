"""The ensemble's inference graph (`EnsembleModel`: every member folded, probabilities averaged) and
`combine`, its numpy twin that the parity gate's reference uses."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import paddle

from ..export.graph import FoldedPromptModel
from ..model.activations import activate
from ..task.decoding import SIGMOID
from .plan import EnsemblePlan

# Probabilities are kept this far from 0 and 1 before the log / logit, so the outputs stay finite.
MULTI_CLASS_FLOOR = 1e-30
MULTI_LABEL_EPS = 1e-7


def combine(member_probs: Sequence[np.ndarray], activation: str) -> np.ndarray:
    """numpy twin of `EnsembleModel`'s output: log mean softmax, or logit of the mean sigmoid."""
    mean = np.mean(np.asarray(member_probs, dtype=np.float64), axis=0)
    if activation == SIGMOID:
        p = np.clip(mean, MULTI_LABEL_EPS, 1 - MULTI_LABEL_EPS)
        return np.log(p) - np.log1p(-p)
    return np.log(np.maximum(mean, MULTI_CLASS_FLOOR))


def load_models(plan: EnsemblePlan) -> list:
    """Every member's prompt model from its checkpoint (already verified by `plan_ensemble`)."""
    from ..model.assembly import rebuild_from_checkpoint

    return [rebuild_from_checkpoint(member.path, verify=False)[0] for member in plan.members]


class EnsembleModel(paddle.nn.Layer):
    """The inference graph: every member folded (utils/export/graph.py), each member's logits divided by
    its temperature (`temperatures`, 1 when not given), probabilities averaged. Outputs `logits` (log
    mean softmax, or logit of the mean sigmoid) and each member's logits, stacked; with
    `representation`, also the text's vector: each member's (utils/model/heads.py `export_outputs`)
    L2-normalised, concatenated, divided by sqrt(members) (unit length; members may differ in hidden
    size; squared distances are the mean of the members' squared distances)."""

    def __init__(self, models, views: Sequence[int], activation: str, temperatures: Sequence[float] = (),
                 representation: bool = False):
        super().__init__()
        self.representation = representation
        self.members = paddle.nn.LayerList([FoldedPromptModel(model, representation) for model in models])
        self.views = list(views)
        self.activation = activation  # the Decoder's: softmax over the labels, or a sigmoid each
        self.temperatures = [float(t) for t in temperatures] or [1.0] * len(models)

    # One parameter per input, spelled out: paddle.jit cannot trace *args, and the graph's inputs
    # are the first 4 x (number of views) of them (the rest stay None). plan.MAX_VIEWS bounds it.
    def forward(self, input_ids, token_type_ids, position_ids, soft_token_ids, input_ids_v1=None,
                token_type_ids_v1=None, position_ids_v1=None, soft_token_ids_v1=None, input_ids_v2=None,
                token_type_ids_v2=None, position_ids_v2=None, soft_token_ids_v2=None, input_ids_v3=None,
                token_type_ids_v3=None, position_ids_v3=None, soft_token_ids_v3=None, input_ids_v4=None,
                token_type_ids_v4=None, position_ids_v4=None, soft_token_ids_v4=None, input_ids_v5=None,
                token_type_ids_v5=None, position_ids_v5=None, soft_token_ids_v5=None, input_ids_v6=None,
                token_type_ids_v6=None, position_ids_v6=None, soft_token_ids_v6=None, input_ids_v7=None,
                token_type_ids_v7=None, position_ids_v7=None, soft_token_ids_v7=None):
        inputs = [input_ids, token_type_ids, position_ids, soft_token_ids, input_ids_v1, token_type_ids_v1,
                  position_ids_v1, soft_token_ids_v1, input_ids_v2, token_type_ids_v2,
                  position_ids_v2, soft_token_ids_v2, input_ids_v3, token_type_ids_v3,
                  position_ids_v3, soft_token_ids_v3, input_ids_v4, token_type_ids_v4,
                  position_ids_v4, soft_token_ids_v4, input_ids_v5, token_type_ids_v5,
                  position_ids_v5, soft_token_ids_v5, input_ids_v6, token_type_ids_v6,
                  position_ids_v6, soft_token_ids_v6, input_ids_v7, token_type_ids_v7,
                  position_ids_v7, soft_token_ids_v7]
        all_logits, vectors, total = [], [], None
        for member, view, temperature in zip(self.members, self.views, self.temperatures):
            logits = member(*inputs[4 * view:4 * view + 4])
            if self.representation:
                logits, vector = logits
                vectors.append(normalized(vector) / float(np.sqrt(len(self.members))))
            all_logits.append(logits)
            if temperature != 1.0:
                logits = logits / temperature
            probs = activate(logits, self.activation)
            total = probs if total is None else total + probs
        mean = total / len(self.members)
        if self.activation == SIGMOID:
            p = paddle.clip(mean, MULTI_LABEL_EPS, 1 - MULTI_LABEL_EPS)
            # one log: with log(p) - log(1 - p), Paddle Inference's inplace pass overwrote p with
            # log(p) before 1 - p was computed (wrong outputs, caught by the parity gate)
            combined = paddle.log(p / (1 - p))
        else:
            combined = paddle.log(paddle.clip(mean, min=MULTI_CLASS_FLOOR))
        if self.representation:
            return combined, paddle.stack(all_logits), paddle.concat(vectors, axis=-1)
        return combined, paddle.stack(all_logits)


def normalized(vector):
    """Each row of `[batch, hidden]` divided by its L2 norm (written out: plain ops for the ONNX graph)."""
    return vector / paddle.sqrt((vector * vector).sum(axis=-1, keepdim=True) + 1e-12)
