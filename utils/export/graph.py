"""The export's graphs: the folded inference layer, its Paddle static graph, ONNX, fp16 and int8.

The prompt encoder is folded: the soft-prompt vectors after the LSTM/MLP do not depend on the
input, so they are computed once and stored as a constant table (no LSTM in the graph, no
`encoder_ids` input). The mask position is found in the graph. Inputs: input_ids,
token_type_ids, position_ids, soft_token_ids (int64, [batch, sequence]).
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import paddle

from ..console import quiet_native_output
from ..deploy.format import INPUT_NAMES, MODEL_PREFIX, ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, OUTPUT_NAME, \
    REPRESENTATION_OUTPUT
from ..errors import UserError


class ExportError(UserError):
    """The exported model does not reproduce the trained one (or could not be produced)."""


class FoldedPromptModel(paddle.nn.Layer):
    """The inference graph: PLM + verbalizer head, the prompt encoder replaced by its output table."""

    def __init__(self, prompt_model, representation: bool = False):
        super().__init__()
        self.prompt_model = prompt_model
        self.representation = representation  # also output the text's vector (REPRESENTATION_OUTPUT)
        template = prompt_model.template
        self.mask_id = template.tokenizer.mask_token_id
        self.pad_id = template.tokenizer.pad_token_id
        table = encoded_soft_table(template, prompt_model.plm.get_input_embeddings().weight.shape[1])
        self.soft_table = self.create_parameter(table.shape, dtype="float32")
        self.soft_table.set_value(table)

    def forward(self, input_ids, token_type_ids, position_ids, soft_token_ids):
        model = self.prompt_model
        word_embeds = model.plm.get_input_embeddings()(input_ids)
        soft_embeds = paddle.nn.functional.embedding(soft_token_ids, self.soft_table)
        inputs_embeds = paddle.where((soft_token_ids > 0).unsqueeze(-1), soft_embeds, word_embeds)
        attention_mask = paddle.unsqueeze((input_ids == self.pad_id).astype("float32") * -1e4, axis=[1, 2])
        inputs = dict(input_ids=None, token_type_ids=token_type_ids, position_ids=position_ids,
                      attention_mask=attention_mask, inputs_embeds=inputs_embeds)

        def mask_positions():  # flat batch*sequence indices of the [MASK]s, for heads that read them
            index = paddle.nonzero(paddle.logical_and(input_ids == self.mask_id, soft_token_ids == 0))
            return index[:, 0] * paddle.shape(input_ids)[1] + index[:, 1]

        if self.representation:
            return model.head.export_outputs(model, inputs, mask_positions)  # (scores, representation)
        return model.head.export_scores(model, inputs, mask_positions)


def encoded_soft_table(template, hidden: int) -> paddle.Tensor:
    """Row i: the vector the template feeds the PLM for soft token i (after its encoder); row 0 unused."""
    num = int(getattr(template, "num_soft_token", 1))
    table = np.zeros([max(num, 1), hidden], dtype="float32")
    if num <= 1:  # no soft tokens (hard template or fine-tuning): the table is never read
        return paddle.to_tensor(table)
    encoded = template({key: "x" for key in template.example_keys})
    soft = np.array(encoded["soft_token_ids"])
    ids = soft[soft > 0]
    if len(set(ids.tolist())) != len(ids):
        raise ExportError("the template reuses soft tokens (`soft_id`); their encoded vectors depend on the "
                          "occurrence, so the prompt encoder cannot be folded", "template")
    batch = {"input_ids": paddle.to_tensor([encoded["input_ids"]], dtype="int64"),
             "soft_token_ids": paddle.to_tensor([encoded["soft_token_ids"]], dtype="int64"),
             "encoder_ids": paddle.to_tensor([encoded["encoder_ids"]], dtype="int64"),
             "attention_mask": paddle.zeros([1])}
    with paddle.no_grad():
        embeds = template.process_batch(batch)["inputs_embeds"][0].numpy()
    table[ids] = embeds[soft > 0]
    return paddle.to_tensor(table)


def write_graphs(layer: paddle.nn.Layer, directory: str, opset: int, input_names=INPUT_NAMES,
                 output_names=(OUTPUT_NAME,)) -> Dict[str, str]:
    """The Paddle static graph and its ONNX conversion; returns the static graph's file names."""
    with quiet_native_output("paddle.jit.save"):
        files = save_static_graph(layer, directory, input_names)
    with quiet_native_output("paddle2onnx"):
        convert_to_onnx(directory, files, opset, output_names)
    return files


def save_static_graph(layer: paddle.nn.Layer, directory: str, input_names=INPUT_NAMES) -> Dict[str, str]:
    """paddle.jit.save; returns the model/params file names Paddle wrote (PIR json or legacy pdmodel)."""
    from paddle.static import InputSpec

    spec = [InputSpec([None, None], "int64", name=name) for name in input_names]
    static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(directory, MODEL_PREFIX))
    for model_file in (MODEL_PREFIX + ".json", MODEL_PREFIX + ".pdmodel"):
        if os.path.isfile(os.path.join(directory, model_file)):
            return {"model": model_file, "params": MODEL_PREFIX + ".pdiparams"}
    raise ExportError("paddle.jit.save wrote no model file", directory)


def convert_to_onnx(directory: str, files: Dict[str, str], opset: int, output_names=(OUTPUT_NAME,)) -> str:
    """paddle2onnx, then name the outputs (`logits`, ...) and the dynamic axes `batch`/`sequence`
    (`sequence_v1`, ... for the inputs of an ensemble's other views: their lengths differ)."""
    import onnx
    import paddle2onnx
    import polygraphy.config

    # paddle2onnx turns on Polygraphy's "pip install missing dependencies" mode, which would
    # hang offline and could replace onnxruntime-gpu; a deployment tool never installs packages.
    polygraphy.config.AUTOINSTALL_DEPS = False
    path = os.path.join(directory, ONNX_FILE)
    paddle2onnx.export(os.path.join(directory, files["model"]), os.path.join(directory, files["params"]),
                       path, opset_version=opset, enable_onnx_checker=True)
    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        view = value.name.rsplit("_v", 1)[1] if value.name not in INPUT_NAMES and "_v" in value.name else ""
        dims[0].dim_param, dims[1].dim_param = "batch", "sequence" + (f"_v{view}" if view else "")
    renames = {output.name: name for output, name in zip(model.graph.output, output_names)}
    for node in model.graph.node:  # consumers too: an output may feed later nodes (cls: the pooled vector)
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for output, name in zip(model.graph.output, output_names):
        output.name = name
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for output in model.graph.output:
        if output.name == REPRESENTATION_OUTPUT:
            output.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def convert_to_fp16(directory: str, source: str = ONNX_FILE, target: str = ONNX_FP16_FILE) -> str:
    """float16 weights and compute, float32 inputs/outputs (onnxruntime's own converter); file names
    relative to `directory`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(os.path.join(directory, source)), keep_io_types=True)
    path = os.path.join(directory, target)
    onnx.save(model, path)
    return path


def quantize_int8(directory: str, source: str = ONNX_FILE, target: str = ONNX_INT8_FILE) -> str:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = os.path.join(directory, target)
    quantize_dynamic(os.path.join(directory, source), path, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    return path
