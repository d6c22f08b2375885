"""The classifier's HTTP contract as pydantic models: what ``/openapi.json`` (and ``/docs``) shows
for every route, request body, ``top_k``, answer and error, so clients can be generated from it.

The handlers read bodies themselves (within limits, see :mod:`serve.web`), so the request bodies
are declared here as OpenAPI fragments (:data:`IMAGE_BODY`, :data:`IMAGES_BODY`,
:data:`INFER_BODY`) rather than as parameters FastAPI would parse.
"""

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Prediction", "PredictResponse", "BatchItem", "BatchResponse", "ErrorResponse", "Health", "Metadata",
    "error_responses", "IMAGE_BODY", "IMAGES_BODY", "INFER_BODY", "TOP_K_DOC",
    "InferTensor", "InferResponse", "ModelMetadata", "TensorMetadata", "ServerMetadata", "Ready", "Live",
]

TOP_K_DOC = "How many classes to return, best first (1 to the number of classes; default: the server's top_k)."


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class", description="Class name", examples=["Zebra"])
    probability: float = Field(ge=0, le=1, description="Softmax probability", examples=[0.991])


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="Top-k classes, best first")
    model_version: str = Field(description="The model version that answered (e.g. animalclf/3)")
    latency_ms: float = Field(ge=0, description="Time spent inside the replica")


class BatchItem(BaseModel):
    predictions: list[Prediction]


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="One entry per image, in the order sent")
    model_version: str
    latency_ms: float = Field(ge=0)


class ErrorResponse(BaseModel):
    """Every error this service answers, whatever the status (the proxy's own 503/408 included)."""

    error: str = Field(description="What went wrong and how to fix it", examples=["not an image: send a JPEG, PNG..."])


class Health(BaseModel):
    status: Literal["ready"]


class Metadata(BaseModel):
    """The public view; with the API key, where the model came from and the settings too."""

    model_config = ConfigDict(extra="allow")

    classes: list[str]
    arch: str
    model_version: str
    preprocess: dict[str, Any]
    limits: dict[str, Any]
    top_k_default: int
    api_key_required: bool


_WHY = {
    400: "The request is malformed (not an image, bad top_k, bad multipart or inference body).",
    401: "An API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
    404: "No such route, or no such model (inference protocol).",
    405: "Method not allowed on this route.",
    408: "The body did not arrive in time, or the request took longer than the proxy's timeout.",
    413: "Body, image or number of images over the limit (see /metadata limits).",
    415: "Unsupported media type (batch needs multipart/form-data).",
    422: "The image is readable but not usable (e.g. too many pixels or an extreme aspect ratio).",
    500: "A bug on our side (logged); nothing was wrong with the request.",
    503: "Overloaded, not ready, or the request hit its deadline: retry after the Retry-After seconds.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, all with the one error shape."""
    return {c: {"model": ErrorResponse, "description": _WHY[c]} for c in codes}


_BINARY = {"type": "string", "format": "binary"}
IMAGE_BODY = {"requestBody": {"required": True, "description": "One image: a multipart field 'file', or the raw bytes.",
                              "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                                             "properties": {"file": _BINARY}}},
                                          "application/octet-stream": {"schema": _BINARY},
                                          "image/jpeg": {"schema": _BINARY}, "image/png": {"schema": _BINARY}}}}
IMAGES_BODY = {"requestBody": {"required": True, "description": "Several images: one multipart part each, field 'files'.",
                               "content": {"multipart/form-data": {"schema": {
                                   "type": "object", "required": ["files"],
                                   "properties": {"files": {"type": "array", "items": _BINARY, "minItems": 1}}}}}}}


# ---------------------------------------------------------------------------------------------
# Open Inference Protocol v2 (KServe, Triton, Seldon MLServer): the REST shapes we use
# ---------------------------------------------------------------------------------------------
class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Optional[dict[str, Any]] = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Ready(BaseModel):
    ready: bool


class Live(BaseModel):
    live: bool


class InferTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: Optional[dict[str, Any]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[InferTensor]


_TENSOR_IN = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "enum": ["BYTES"]},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "data": {"type": "array", "items": {"type": "string"}, "description": "base64-encoded images"},
    "parameters": {"type": "object"}}}
INFER_BODY = {"requestBody": {"required": True, "description": (
    "An inference request: one BYTES input tensor of shape [N] holding N encoded images (base64 strings in "
    "JSON, or raw with the binary tensor data extension: Inference-Header-Content-Length); optional "
    "parameters.top_k; outputs 'class' (BYTES [N, k]) and 'probability' (FP32 [N, k])."),
    "content": {"application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object", "properties": {"top_k": {"type": "integer", "minimum": 1}}},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": _TENSOR_IN},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}}}}},
                "application/octet-stream": {"schema": _BINARY}}}}
