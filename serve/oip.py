"""Open Inference Protocol v2 (the REST protocol KServe, Triton and Seldon MLServer share) for the
classifier: request parsing and answer encoding, apart from the routes (:mod:`serve.app`).

The model takes one input, ``image``: a BYTES tensor of shape ``[N]`` (or ``[N, 1]``), N encoded
images, and answers two outputs: ``class`` (BYTES ``[N, k]``, best first) and ``probability``
(FP32 ``[N, k]``); ``k`` is the request's ``parameters.top_k`` (default: the server's). In JSON a
BYTES element is a base64 string; with the binary tensor data extension (what ``tritonclient``
sends by default) the body is the JSON header (``Inference-Header-Content-Length`` bytes) followed
by each tensor's raw bytes, a BYTES element as a 4-byte little-endian length and its bytes. Outputs
come back as JSON, or binary where the request asks (``binary_data`` on an output or
``binary_data_output`` on the request).
"""

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

from serve.web import ClientError

__all__ = ["DEFAULT_NAME", "TAG", "INPUT", "OUTPUTS", "HEADER", "InferRequest", "parse_infer", "encode_infer", "model_metadata", "split_version"]

DEFAULT_NAME = "animalclf"  # the model's name when it is not a registry version (a checkpoint folder)
TAG = "Open Inference Protocol v2"
INPUT = "image"
OUTPUTS = ("class", "probability")
HEADER = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    blobs: list[bytes]
    top_k: Optional[int] = None
    id: Optional[str] = None
    binary: dict[str, bool] = field(default_factory=dict)  # requested outputs: name -> as binary


def split_version(version: str, default_name: str) -> tuple[str, str]:
    """``"animalclf/3"`` -> ``("animalclf", "3")``; a checkpoint's version names ``default_name`` and itself."""
    name, sep, number = version.rpartition("/")
    if sep and name and number.isdigit() and not version.startswith("checkpoint:"):
        return name, number
    return default_name, version


def model_metadata(name: str, version: str, max_images: int) -> dict[str, Any]:
    return {"name": name, "versions": [version], "platform": "pytorch_animalclf",
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "class", "datatype": "BYTES", "shape": [-1, -1]},
                        {"name": "probability", "datatype": "FP32", "shape": [-1, -1]}],
            "parameters": {"max_images": max_images, "top_k": "request parameter, 1 to the number of classes"}}


def _bad(message: str, status: int = 400) -> ClientError:
    return ClientError(f"inference request: {message}", status)


def _bytes_elements(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise _bad("a BYTES element's 4-byte length is cut off in the binary data")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise _bad("a BYTES element is longer than the binary data that follows it")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for d in data for x in _flat(d)]
    return [data]


def parse_infer(body: bytes, header_length: Optional[str], max_images: int) -> InferRequest:
    """An inference request (JSON, or JSON plus binary tensor data) to its images and options; any
    fault is a 400 (413 for too many images) naming it."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _bad(f"{HEADER} is {header_length!r}; it must be the JSON header's length in bytes")
        head, binary = body[:int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise _bad("the body is not JSON (send an OIP v2 request, or set "
                   f"{HEADER} when binary tensor data follows)") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise _bad(f"send exactly one input tensor, {INPUT!r} (BYTES, shape [N]: N encoded images)")
    tensor = req["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise _bad(f"input {INPUT!r} must have datatype BYTES (encoded image files)")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)
            and all(d == 1 for d in shape[1:])):
        raise _bad(f"input shape must be [N] or [N, 1], got {shape!r}")
    n = shape[0]
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("input parameters must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise _bad(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON header")
        blobs = _bytes_elements(binary[:size])
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise _bad(f"input {INPUT!r} has no data (base64 strings) and no binary_data_size")
        blobs = []
        for x in _flat(data):
            if not isinstance(x, str):
                raise _bad("in JSON, each BYTES element must be a base64 string of an image file")
            try:
                blobs.append(base64.b64decode(x, validate=True))
            except (binascii.Error, ValueError):
                raise _bad("a BYTES element is not valid base64") from None
    if len(blobs) != n:
        raise _bad(f"shape says {n} images but {len(blobs)} were sent")
    if n == 0:
        raise _bad("send at least one image")
    if n > max_images:
        raise _bad(f"{n} images sent; the limit is {max_images} per request", 413)
    rparams = req.get("parameters") or {}
    if not isinstance(rparams, dict):
        raise _bad("parameters must be an object")
    top_k = rparams.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise _bad(f"parameters.top_k must be an integer, got {top_k!r}")
    wanted = req.get("outputs")
    if wanted is not None and not isinstance(wanted, list):
        raise _bad("outputs must be a list")
    all_binary = bool(rparams.get("binary_data_output", False))
    binary_out: dict[str, bool] = {}
    for o in wanted or [{"name": name} for name in OUTPUTS]:
        if not isinstance(o, dict) or o.get("name") not in OUTPUTS:
            raise _bad(f"unknown output {o.get('name') if isinstance(o, dict) else o!r}; outputs are {list(OUTPUTS)}")
        binary_out[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", all_binary))
    rid = req.get("id")
    return InferRequest(blobs, top_k, str(rid) if rid is not None else None, binary_out)


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def encode_infer(req: InferRequest, name: str, version: str, predictions: list[list[dict]]) -> tuple[bytes, dict[str, str]]:
    """The answer body and its extra headers: JSON, or JSON plus binary outputs."""
    n, k = len(predictions), len(predictions[0]) if predictions else 0
    values = {"class": [p["class"] for row in predictions for p in row],
              "probability": [float(p["probability"]) for row in predictions for p in row]}
    outputs, chunks = [], []
    for out, binary in req.binary.items():
        t: dict[str, Any] = {"name": out, "datatype": "BYTES" if out == "class" else "FP32", "shape": [n, k]}
        if binary:
            raw = _bytes_tensor(values[out]) if out == "class" else struct.pack(f"<{len(values[out])}f", *values[out])
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = values[out]
        outputs.append(t)
    head: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if req.id is not None:
        head["id"] = req.id
    text = json.dumps(head).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER: str(len(text))}
