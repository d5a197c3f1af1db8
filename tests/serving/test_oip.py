"""The Open Inference Protocol v2 routes (utils/serving/oip.py) with a real client of that protocol,
Triton's (`tritonclient[http]`), against serve.py in its own process: health, metadata, BYTES
inputs sent binary (the client's default) and as JSON, the answers equal /predict's, API keys, and
the protocol's errors."""
import os

import numpy as np
import pytest

from test_service import serving

KEY = "oip-test-key-0123456789"


@pytest.fixture(scope="module")
def export_dir(trained):
    return os.path.join(trained[1], "export")


def test_triton_client_infers_texts_with_the_answers_of_predict(export_dir, tmp_path):
    import httpx
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n", encoding="utf-8")
    texts = ["我爱吃苹果", "香蕉很甜", "葡萄", "今天的新闻"]
    headers = {"Authorization": f"Bearer {KEY}"}
    with serving(export_dir, tmp_path, "--api_key_file", str(keys)) as (_, port, url):
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()  # open: orchestrators' probes
        assert client.is_model_ready("cls_default", headers=headers)
        metadata = client.get_model_metadata("cls_default", headers=headers)
        assert [i["name"] for i in metadata["inputs"]] == ["text"] and metadata["inputs"][0]["datatype"] == "BYTES"
        expected = httpx.post(url + "/predict", json={"texts": texts}, headers=headers).json()
        assert metadata["versions"] == [expected["model_version"]]
        for binary in (True, False):
            tensor = triton.InferInput("text", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
            outputs = [triton.InferRequestedOutput(name, binary_data=False)
                       for name in ("label", "confidence", "probabilities")]
            result = client.infer("cls_default", [tensor], outputs=outputs, request_id="r1",
                                  headers=dict(headers))  # (a copy: the client adds its own headers to it)
            labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
            assert labels == [p["label"] for p in expected["predictions"]]
            np.testing.assert_allclose(result.as_numpy("confidence"),
                                       [p["confidence"] for p in expected["predictions"]], atol=1e-5)
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (len(texts), 3)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
            response = result.get_response()
            assert response["model_version"] == expected["model_version"] and response["id"] == "r1"
        version = expected["model_version"]  # the protocol's versioned routes: that version, or 404
        assert client.is_model_ready("cls_default", model_version=version, headers=headers)
        assert client.get_model_metadata("cls_default", model_version=version, headers=headers)["name"] == "cls_default"
        pinned = client.infer("cls_default", [tensor], model_version=version, outputs=outputs, headers=dict(headers))
        assert pinned.get_response()["model_version"] == version
        with pytest.raises(InferenceServerException, match="serves version"):
            client.infer("cls_default", [tensor], model_version="cls_default-000000000000", headers=dict(headers))
        with pytest.raises(InferenceServerException, match="serves version"):
            client.get_model_metadata("cls_default", model_version="7", headers=headers)
        with pytest.raises(InferenceServerException, match="API key is missing"):
            client.infer("cls_default", [tensor])
        with pytest.raises(InferenceServerException, match="no model 'sports'"):
            client.infer("sports", [tensor], headers=dict(headers))
        wrong = triton.InferInput("text", [1], "FP32")
        wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        with pytest.raises(InferenceServerException, match="must be BYTES"):
            client.infer("cls_default", [wrong], headers=dict(headers))
        client.close()


def test_oip_bodies_are_checked_field_by_field():
    from utils.serving.oip import decode_bytes_tensor, parse_infer_request
    from utils.serving.requests import RequestError

    header = b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}]}'
    binary = b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert parse_infer_request(header + binary, str(len(header)), pair=False)[1] == {"text": ["ab", "c"]}
    pairs = (b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [["a"]]},'
             b' {"name": "text_pair", "shape": [1], "datatype": "BYTES", "data": ["b"]}]}')
    assert parse_infer_request(pairs, None, pair=True)[1] == {"text": ["a"], "text_pair": ["b"]}
    for body, length, field in (
            (b"{", None, "body"),
            (b'{"inputs": []}', None, "inputs"),
            (b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}', None,
             "inputs[0].shape"),
            (b'{"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', None, "inputs"),
            (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},'
             b' {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["b"]}]}', None, "inputs[1].name"),
            (header + binary[:-1], str(len(header)), "inputs[0].parameters.binary_data_size"),
            (header + binary, "9999", "Inference-Header-Content-Length")):
        with pytest.raises(RequestError) as caught:
            parse_infer_request(body, length, pair=False)
        assert caught.value.field == field, body
    with pytest.raises(RequestError, match="not UTF-8"):
        decode_bytes_tensor(b"\x01\x00\x00\x00\xff", "inputs[0].data")
