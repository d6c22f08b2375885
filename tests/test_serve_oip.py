"""Open Inference Protocol v2 bodies: what tritonclient really sends (JSON and the binary tensor
data extension) parses to the images; answers decode with tritonclient's own reader; faults are
one-line 4xx. The live routes are tested against Ray Serve in tests/test_serve_app.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serve import oip
from serve.web import ClientError

IMAGES = [b"\xff\xd8first", b"\x89PNGsecond\x00\xff", b"third"]
PREDS = [[{"class": "Zebra", "probability": 0.9}, {"class": "Horse", "probability": 0.05}],
         [{"class": "Cat", "probability": 0.6}, {"class": "Lion", "probability": 0.3}],
         [{"class": "Bear", "probability": 0.5}, {"class": "Panda", "probability": 0.4}]]


def triton_body(binary: bool, outputs=None, top_k=None) -> tuple[bytes, int | None]:
    """The body tritonclient.http builds for an infer call (its own request builder)."""
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.http._utils import _get_inference_request

    x = InferInput(oip.INPUT, [len(IMAGES)], "BYTES")
    x.set_data_from_numpy(np.array(IMAGES, dtype=np.object_), binary_data=binary)
    outs = [InferRequestedOutput(name, binary_data=b) for name, b in outputs] if outputs else None
    return _get_inference_request([x], "req-1", outs, 0, False, False, 0, None, {"top_k": top_k} if top_k else None)


def test_binary_extension_request_as_tritonclient_sends_it():
    body, header = triton_body(binary=True, top_k=2)
    assert header is not None  # the binary extension is in use
    req = oip.parse_infer(body, str(header), max_images=8)
    assert req.blobs == IMAGES and req.top_k == 2 and req.id == "req-1"
    assert req.binary == {"class": True, "probability": True}  # no outputs named: all binary


def test_binary_answer_reads_back_with_tritonclient():
    from tritonclient.http import InferResult

    body, header = triton_body(binary=True)
    req = oip.parse_infer(body, str(header), max_images=8)
    content, headers = oip.encode_infer(req, "animalclf", "3", PREDS)
    result = InferResult.from_response_body(content, header_length=int(headers[oip.HEADER]))
    classes = result.as_numpy("class")
    assert classes.shape == (3, 2) and [c.decode() for c in classes[:, 0]] == ["Zebra", "Cat", "Bear"]
    assert np.allclose(result.as_numpy("probability"), [[0.9, 0.05], [0.6, 0.3], [0.5, 0.4]])
    assert result.get_response()["model_version"] == "3" and result.get_response()["id"] == "req-1"


def test_json_request_and_json_outputs():
    from tritonclient.http import InferResult

    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3, 1],
                           "data": [[base64.b64encode(b).decode()] for b in IMAGES]}],
               "outputs": [{"name": "class"}, {"name": "probability", "parameters": {"binary_data": False}}]}
    req = oip.parse_infer(json.dumps(payload).encode(), None, max_images=8)
    assert req.blobs == IMAGES and req.top_k is None and req.binary == {"class": False, "probability": False}
    content, headers = oip.encode_infer(req, "animalclf", "3", PREDS)
    assert oip.HEADER not in headers
    answer = json.loads(content)
    assert answer["outputs"][0] == {"name": "class", "datatype": "BYTES", "shape": [3, 2],
                                    "data": ["Zebra", "Horse", "Cat", "Lion", "Bear", "Panda"]}
    assert InferResult.from_response_body(content).as_numpy("probability").shape == (3, 2)


_HEAD = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 50}}]}'


@pytest.mark.parametrize("body, header, status, words", [
    (b"not json", None, 400, "not JSON"),
    (b'{"inputs": []}', None, 400, "exactly one input"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}', None, 400, "BYTES"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 3], "data": []}]}', None, 400, "shape"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', None, 400, "base64"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}', None, 400, "shape says 2"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [9], "data": ' + json.dumps(["aGk="] * 9).encode()
     + b"}]}", None, 413, "limit is 8"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "outputs": [{"name": "x"}]}',
     None, 400, "unknown output"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "parameters": {"top_k": "3"}}',
     None, 400, "top_k"),
    (_HEAD + b"XYZ", str(len(_HEAD)), 400, "binary_data_size"),
    (b'{}', "99", 400, "Inference-Header-Content-Length"),
])
def test_faults_are_one_line_4xx(body, header, status, words):
    with pytest.raises(ClientError) as e:
        oip.parse_infer(body, header, max_images=8)
    assert e.value.status == status and words in str(e.value) and "\n" not in str(e.value)


def test_cut_binary_element_is_a_400():
    body, header = triton_body(binary=True)
    with pytest.raises(ClientError, match="longer than the binary data|cut off|binary_data_size"):
        oip.parse_infer(body[:-3], str(header), max_images=8)


def test_versions_and_metadata():
    assert oip.split_version("animalclf/12", "x") == ("animalclf", "12")
    assert oip.split_version("checkpoint:best", "animalclf") == ("animalclf", "checkpoint:best")
    meta = oip.model_metadata("animalclf", "12", 16)
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == list(oip.OUTPUTS)
