"""Streamlit UI: classify uploaded or gallery photos through the Serve endpoint; model page.

::

    streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.headless true \
        -- --endpoint http://127.0.0.1:8000 --gallery ../shared/data/animals15

``--endpoint`` defaults to ``$ANIMALCLF_ENDPOINT`` (else http://127.0.0.1:8000) and ``--gallery``
to ``$ANIMALCLF_GALLERY`` (else ../shared/data/animals15 when it exists). The Model page reads the
MLflow store the jobs log to (``MLFLOW_TRACKING_URI``, else ``$ANIMALCLF_HOME/runs/mlflow.db``).
All HTTP to the classifier is in ``app/client.py``, MLflow reading in ``app/model_info.py``, the
Model page in ``app/model_page.py``; nothing here imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(_REPO)]:  # `streamlit run` puts app/ first; import the package `app`
    sys.path.insert(0, str(_REPO))

import argparse

import plotly.graph_objects as go
import streamlit as st

from animalclf.config import IMAGE_EXTENSIONS
from app.client import Client, EndpointError, default_endpoint, default_gallery, gallery_images
from app.model_page import model_page


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Animal classifier UI", add_help=add_help)
    p.add_argument("--endpoint", default=default_endpoint(), help="classifier base URL (default: $ANIMALCLF_ENDPOINT or http://127.0.0.1:8000)")
    p.add_argument("--gallery", default=default_gallery(), help="folder of example photos (default: $ANIMALCLF_GALLERY or ../shared/data/animals15)")
    return p


def bar_chart(predictions: list[dict]) -> go.Figure:
    preds = list(reversed(predictions))  # highest on top
    fig = go.Figure(go.Bar(x=[p["probability"] for p in preds], y=[p["class"] for p in preds], orientation="h",
                           text=[f"{p['probability']:.1%}" for p in preds], textposition="auto"))
    fig.update_layout(xaxis=dict(range=[0, 1], title="probability"), height=60 + 32 * len(preds), margin=dict(l=10, r=10, t=10, b=10))
    return fig


def show_prediction(client: Client, name: str, data: bytes, top_k: int) -> None:
    left, right = st.columns([1, 2])
    left.image(data, caption=name, width="stretch")
    try:
        answer = client.predict(data, name, top_k)
    except EndpointError as e:
        right.error(f"{name}: {e}")
        return
    top = answer["predictions"][0]
    right.markdown(f"Prediction: **{top['class']}** ({top['probability']:.1%})")
    right.plotly_chart(bar_chart(answer["predictions"]), width="stretch", key=f"chart-{name}")
    right.caption(f"latency {answer['latency_ms']:.1f} ms in the replica · model {answer['model_version']}")


def classify_page(client: Client, gallery: str | None, top_k: int) -> None:
    limit = f" (up to {client.max_bytes / 1e6:.0f} MB each)" if client.max_bytes else ""
    uploads = st.file_uploader(
        f"Upload one or several photos{limit}",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS], accept_multiple_files=True)
    picked: list[Path] = []
    images = gallery_images(gallery) if gallery else []
    if images:
        root = Path(gallery)
        labels = {str(p.relative_to(root)): p for p in images}
        chosen = st.multiselect(f"…or pick from the gallery ({gallery})", list(labels))
        picked = [labels[c] for c in chosen]
    elif gallery:
        st.info(f"No gallery images in {gallery}.")
    todo = [(u.name, u.getvalue()) for u in uploads or []] + [(str(p.relative_to(gallery)), p.read_bytes()) for p in picked]
    if not todo:
        st.info("Upload a photo or pick one from the gallery to classify it.")
        return
    for name, data in todo:
        show_prediction(client, name, data, top_k)


def main(args: argparse.Namespace) -> None:
    st.set_page_config(page_title="Animal classifier", layout="wide")
    st.title("Animal classifier")
    with st.sidebar:
        endpoint = st.text_input("Endpoint", value=args.endpoint)
        top_k = st.slider("Top-k", 1, 15, 5)
        gallery = st.text_input("Gallery folder", value=args.gallery or "") or None
    client = Client(endpoint)
    meta, meta_error = None, None
    try:
        meta = client.metadata()
        client.max_bytes = (meta.get("limits") or {}).get("max_bytes")
    except EndpointError as e:
        meta_error = str(e)
    classify, model = st.tabs(["Classify", "Model"])
    with classify:
        classify_page(client, gallery, top_k)
    with model:
        model_page(meta, meta_error)


main(get_args_parser().parse_known_args()[0])
