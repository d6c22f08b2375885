"""The registered model as a plain MLflow model for images: ``mlflow.pyfunc.load_model(ref).predict``
takes photos and answers class names with probabilities, with no animalclf call of one's own.

Input: a DataFrame with a column ``image`` of encoded image bytes (JPEG, PNG, WebP...). Over HTTP
(``mlflow models serve``), MLflow's own protocol sends a binary column as base64 strings::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG>"]]}, "params": {"top_k": 3}}

Output: one record per image (a list of dicts; ``pandas.DataFrame(...)`` makes it a table):
``class`` and ``probability`` (the top-1), ``top_k`` (a list of ``{"class", "probability"}``, best
first; ``params={"top_k": K}``, default 5) and ``error`` (``None``, or why that image could not be
read: ``class`` and ``probability`` are then ``None`` and ``top_k`` empty). Over HTTP that is
``{"predictions": [...]}`` with JSON nulls.

It is the :class:`~animalclf.models.predict.Predictor` that Ray Serve runs: the same bounded decode,
preprocessing (resize, autocontrast, the rotation pool, flip averaging: what ``animalclf.json``
says) and forward pass, so both answer the same to float precision. The model is logged "from
code" (this package travels as ``code_paths``): loading it unpickles nothing, and the weights are
a state dict read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc

log = logging.getLogger(__name__)

__all__ = ["ImageClassifier", "WEIGHTS_DIR", "INPUT_COLUMN", "signature", "input_example", "log_image_model"]

WEIGHTS_DIR = "animalclf"   # artifacts/<WEIGHTS_DIR>/{model.pt, animalclf.json} inside the MLflow model
INPUT_COLUMN = "image"
DEFAULT_TOP_K = 5
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[image: bytes], params={"top_k": K})`` -> ``[{class, probability, top_k, error}]``."""

    def load_context(self, context) -> None:
        from animalclf.models.predict import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts[WEIGHTS_DIR])

    def predict(self, context, model_input, params: Optional[dict[str, Any]] = None):
        import torch

        p = self.predictor
        k = int((params or {}).get("top_k") or DEFAULT_TOP_K)
        k = max(1, min(k, len(p.classes)))
        blobs = _images(model_input)
        rows: list[dict[str, Any]] = [{}] * len(blobs)
        tensors, where = [], []
        for i, data in enumerate(blobs):
            try:
                tensors.append(p.tensor(p.decode(data)))
                where.append(i)
            except Exception as e:  # noqa: BLE001 - an unreadable image is that row's answer, not the batch's
                rows[i] = {"class": None, "probability": None, "top_k": [], "error": str(e)}
        if tensors:
            probs = p.predict_tensors(torch.stack(tensors))
            for i, pr in zip(where, probs):
                top = p.top_k(pr, k)
                rows[i] = {"class": top[0]["class"], "probability": top[0]["probability"], "top_k": top, "error": None}
        return rows


def _images(model_input) -> list[bytes]:
    """The encoded images of ``model_input``: a DataFrame's ``image`` column (or its only column),
    a list of bytes, or one bytes object."""
    import pandas as pd

    if isinstance(model_input, (bytes, bytearray)):
        return [bytes(model_input)]
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN in model_input.columns:
            col = model_input[INPUT_COLUMN]
        elif len(model_input.columns) == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a DataFrame with a column {INPUT_COLUMN!r} of image bytes, got columns "
                             f"{list(model_input.columns)}")
        values = list(col)
    else:
        values = list(model_input)
    out = []
    for v in values:
        if not isinstance(v, (bytes, bytearray)):
            raise ValueError(f"column {INPUT_COLUMN!r} must hold encoded image bytes (base64 strings over HTTP), "
                             f"got {type(v).__name__}")
        out.append(bytes(v))
    return out


def signature():
    """Input: ``image`` (binary); params: ``top_k`` (long, default 5); output as :class:`ImageClassifier` says."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    entry = Object([Property("class", DataType.string), Property("probability", DataType.double)])
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        outputs=Schema([ColSpec(DataType.string, "class"), ColSpec(DataType.double, "probability"),
                        ColSpec(Array(entry), "top_k"), ColSpec(DataType.string, "error", required=False)]),
        params=ParamSchema([ParamSpec("top_k", DataType.long, DEFAULT_TOP_K)]),
    )


def input_example(size: int = 64):
    """One small synthetic JPEG in the input's shape (MLflow stores it, base64, beside the model)."""
    import pandas as pd
    from PIL import Image

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return pd.DataFrame({INPUT_COLUMN: [buf.getvalue()]})


def log_image_model(checkpoint: str | Path, registered_name: Optional[str], requirements: list[str]):
    """Log the checkpoint's weights and ``animalclf.json`` as an MLflow image model in the active run
    (registered as ``registered_name`` when given); returns MLflow's ``ModelInfo``."""
    import tempfile

    from animalclf.models.checkpoint import META_FILE, MODEL_FILE

    package = Path(__file__).resolve().parents[1]  # animalclf: the preprocessing and model code travel along
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_DIR
        weights.mkdir()
        for name in (MODEL_FILE, META_FILE):
            shutil.copy2(Path(checkpoint) / name, weights / name)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(_ENTRY), artifacts={WEIGHTS_DIR: str(weights)}, code_paths=[str(package)],
            signature=signature(), input_example=(input_example(), {"top_k": 3}), pip_requirements=requirements,
            registered_model_name=registered_name, await_registration_for=60,
        )
