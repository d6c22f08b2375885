"""Streamlit UI: classify uploaded or gallery photos through the Serve endpoint; model page.

::

    streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.headless true \
        -- --endpoint http://127.0.0.1:8000 --gallery ../shared/data/animals15

``--endpoint`` defaults to ``$ANIMALCLF_ENDPOINT`` (else http://127.0.0.1:8000) and ``--gallery``
to ``$ANIMALCLF_GALLERY`` (else ../shared/data/animals15 when it exists). All HTTP is in
``app/client.py``; this script only lays out the page.
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

from app.client import MAX_UPLOAD_BYTES, Client, EndpointError, default_endpoint, default_gallery, gallery_images, load_report


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
    uploads = st.file_uploader(
        f"Upload one or several photos (up to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB each)",
        type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"], accept_multiple_files=True)
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
        if len(data) > MAX_UPLOAD_BYTES:
            st.error(f"{name} is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.1f} MB.")
            continue
        show_prediction(client, name, data, top_k)


def model_page(client: Client) -> None:
    try:
        meta = client.metadata()
    except EndpointError as e:
        st.error(str(e))
        return
    st.subheader(f"Model {meta['model_version']}")
    st.write(f"Architecture **{meta['arch']}**, unfreeze {meta.get('unfreeze')}, epoch {meta.get('epoch')}, "
             f"{len(meta['classes'])} classes; input {meta['preprocess']['crop_size']} px.")
    if meta.get("last_load_error"):
        st.warning(f"The last model update failed, the model above is still serving: {meta['last_load_error']}")
    if meta.get("metrics"):
        cols = st.columns(min(4, len(meta["metrics"])))
        for i, (k, v) in enumerate(sorted(meta["metrics"].items())):
            cols[i % len(cols)].metric(k, f"{v:.4f}" if isinstance(v, float) else v)
    report, note = load_report(meta["model_version"])
    st.caption(note)
    if report is None:
        return
    from animalclf.report import figures

    st.metric("validation accuracy (report)", f"{report['accuracy']:.4f}")
    rows = [{"class": c, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}} for c, r in report["per_class"].items()]
    st.dataframe(rows, width="stretch")
    for name, fig in figures(report).items():
        st.plotly_chart(fig, width="stretch", key=f"report-{name}")


def main(args: argparse.Namespace) -> None:
    st.set_page_config(page_title="Animal classifier", layout="wide")
    st.title("Animal classifier")
    with st.sidebar:
        endpoint = st.text_input("Endpoint", value=args.endpoint)
        top_k = st.slider("Top-k", 1, 15, 5)
        gallery = st.text_input("Gallery folder", value=args.gallery or "") or None
    client = Client(endpoint)
    classify, model = st.tabs(["Classify", "Model"])
    with classify:
        classify_page(client, gallery, top_k)
    with model:
        model_page(client)


main(get_args_parser().parse_known_args()[0])
