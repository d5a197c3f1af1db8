"""The Open Inference Protocol v2 (KServe / Triton's HTTP/REST protocol), the bodies of the
service's `/v2` routes (the routes themselves are `Service` methods):

    GET  /v2                              server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}                model metadata: inputs `text` (and `text_pair` for pair
                                          models), BYTES, shape [-1]; outputs `label` (BYTES),
                                          `confidence` (FP32), `probabilities` (FP32 [-1, labels])
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer
         (each also under /v2/models/{name}/versions/{version}/...: that version only, else 404)

Input tensors are JSON (`"data": ["text", ...]`) or binary (the protocol's binary tensor extension:
a JSON header of `Inference-Header-Content-Length` bytes, then each input's
`parameters.binary_data_size` bytes, BYTES elements as a 4-byte little-endian length and the
UTF-8 bytes), as Triton's clients send by default. Outputs are JSON. A multi-label model's `label`
element is the JSON list of its labels (`["a", "b"]`), `confidence` the best label's probability.
Errors are the protocol's `{"error": "message"}` with the status of the service's other routes.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .requests import RequestError

__all__ = ["infer_response", "model_metadata", "parse_infer_request", "SERVER_METADATA"]

SERVER_METADATA = {"name": "ptuning-serve", "version": "1", "extensions": ["binary_tensor_data"]}
HEADER_LENGTH = "inference-header-content-length"


def input_names(pair: bool) -> List[str]:
    return ["text", "text_pair"] if pair else ["text"]


def model_metadata(name: str, version: str, classifier) -> dict:
    inputs = [{"name": key, "datatype": "BYTES", "shape": [-1]} for key in input_names(classifier.pair)]
    outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
               {"name": "confidence", "datatype": "FP32", "shape": [-1]},
               {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classifier.labels)]}]
    return {"name": name, "versions": [version], "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": outputs, "parameters": {"labels": list(classifier.labels), "task_type": classifier.task_type}}


def split_body(body: bytes, header_length: Optional[str]) -> Tuple[dict, bytes]:
    """The request's JSON header and its binary part (empty without the binary extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, "Inference-Header-Content-Length", f"must be the JSON header's length in bytes "
                                                                       f"(at most {len(body)}), got {header_length!r}")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        header = json.loads(json_part)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "body", f"malformed JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RequestError(422, "body", f"must be a JSON object, got {type(header).__name__}")
    return header, binary


def decode_bytes_tensor(raw: bytes, field: str) -> List[str]:
    """BYTES elements of the binary extension: each a uint32 little-endian length, then its bytes."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(400, field, "binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(400, field, "binary BYTES data ends inside an element")
        texts.append(decode_text(raw[offset:offset + size], f"{field}[{len(texts)}]"))
        offset += size
    return texts


def decode_text(value: Any, field: str) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, field, "is not UTF-8") from None
    return value


def tensor_texts(tensor: Any, index: int, binary: bytes, offset: int) -> Tuple[str, List[Any], int]:
    """One input tensor: its name, its elements (flattened), and the binary offset after it."""
    field = f"inputs[{index}]"
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise RequestError(422, field, "must be a tensor object with a name")
    if tensor.get("datatype") != "BYTES":
        raise RequestError(422, f"{field}.datatype", f"must be BYTES (texts), got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or any(d != 1 for d in shape[1:])):
        raise RequestError(422, f"{field}.shape", f"must be [n] or [n, 1] (one text per row), got {shape!r}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(400, f"{field}.parameters.binary_data_size", "does not fit the binary data sent")
        data, offset = decode_bytes_tensor(binary[offset:offset + size], f"{field}.data"), offset + size
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(422, f"{field}.data", "must be a list of texts (or binary data)")
        data = list(np.asarray(data, dtype=object).reshape(-1)) if data and isinstance(data[0], list) else data
    if len(data) != shape[0]:
        raise RequestError(422, f"{field}.shape", f"says {shape[0]} texts; the data holds {len(data)}")
    return tensor["name"], data, offset


def parse_infer_request(body: bytes, header_length: Optional[str], pair: bool) -> Tuple[dict, Dict[str, list]]:
    """An infer request's JSON header and its texts by input name (`text`, `text_pair`)."""
    header, binary = split_body(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "inputs", "is required: a list of input tensors (`text`, BYTES)")
    texts, offset = {}, 0
    for index, tensor in enumerate(inputs):
        name, data, offset = tensor_texts(tensor, index, binary, offset)
        if name in texts:
            raise RequestError(422, f"inputs[{index}].name", f"input {name!r} is given twice")
        texts[name] = data
    expected = input_names(pair)
    if sorted(texts) != sorted(expected):
        raise RequestError(422, "inputs", f"this model takes the input(s) {', '.join(expected)}, got "
                                          f"{', '.join(texts)}")
    if pair and len(texts["text"]) != len(texts["text_pair"]):
        raise RequestError(422, "inputs", "text and text_pair must hold as many texts")
    return header, texts


def infer_response(name: str, version: str, header: dict, probs: np.ndarray, predictions: List[dict]) -> dict:
    """The protocol's response: `label`, `confidence`, `probabilities` (or the outputs asked for)."""
    count = len(predictions)
    labels = [p["label"] if isinstance(p["label"], str) else json.dumps(p["label"], ensure_ascii=False)
              for p in predictions]
    confidence = [float(p["confidence"]) if not isinstance(p["confidence"], list)
                  else float(max(p["confidence"], default=0.0)) for p in predictions]
    outputs = {"label": {"name": "label", "datatype": "BYTES", "shape": [count], "data": labels},
               "confidence": {"name": "confidence", "datatype": "FP32", "shape": [count], "data": confidence},
               "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                                 "data": [round(float(x), 6) for x in probs.reshape(-1)]}}
    asked = header.get("outputs")
    names = list(outputs)
    if isinstance(asked, list) and asked:
        names = [o.get("name") if isinstance(o, dict) else None for o in asked]
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise RequestError(422, "outputs", f"unknown output {unknown[0]!r} (outputs: {', '.join(outputs)})")
    response = {"model_name": name, "model_version": version, "outputs": [outputs[n] for n in names]}
    if isinstance(header.get("id"), str):
        response["id"] = header["id"]
    return response
