"""Streamlit UI for the classifier endpoint; HTTP logic in app.client."""
