"""The classifier's HTTP plumbing (serve.web), without Ray: through FastAPI's TestClient on the
app's own ``fastapi_app`` with routes added for the test, a ClientError, an InvalidImage and a
bug each become a JSON error with their status (and headers), and request bodies are read within
their limits (bytes, files per request, bytes per file)."""

import asyncio

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from animalclf.errors import InvalidImage
from serve.web import ClientError, fastapi_app, guarded, read_body, read_files


@pytest.fixture(scope="module")
def client():
    """A TestClient on fastapi_app with the test's routes, removed again afterwards."""
    before = list(fastapi_app.router.routes)

    @fastapi_app.get("/_test/client-error")
    async def client_error():
        raise ClientError("slow down", 429, {"retry-after": "3"})

    @fastapi_app.get("/_test/invalid-image")
    async def invalid_image():
        raise InvalidImage("not an image: send a JPEG", 415)

    @fastapi_app.get("/_test/bug")
    async def bug():
        raise ZeroDivisionError("a bug")

    @fastapi_app.post("/_test/body")
    async def body(request: Request, limit: int = 100):
        return {"bytes": len(await read_body(guarded(request, limit, timeout_s=5)))}

    @fastapi_app.post("/_test/files")
    async def files(request: Request):
        blobs = await read_files(guarded(request, 10_000, timeout_s=5), "files", max_files=2, max_bytes=100)
        return {"sizes": [len(b) for b in blobs]}

    with TestClient(fastapi_app, raise_server_exceptions=False) as c:
        yield c
    fastapi_app.router.routes[:] = before


def test_errors_become_json_with_their_status_and_headers(client):
    r = client.get("/_test/client-error")
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (429, {"error": "slow down"}, "3")
    r = client.get("/_test/invalid-image")
    assert (r.status_code, r.json()) == (415, {"error": "not an image: send a JPEG"})
    r = client.get("/_test/bug")
    assert r.status_code == 500 and r.json() == {"error": "internal error while classifying; see the replica log"}
    r = client.get("/_test/no-such-route")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = client.post("/_test/body?limit=many", content=b"x")
    assert r.status_code == 400 and r.json()["error"].startswith("invalid request:")


def test_a_body_over_the_limit_is_413_with_or_without_content_length(client):
    assert client.post("/_test/body", content=b"x" * 100).json() == {"bytes": 100}
    r = client.post("/_test/body", content=b"x" * 101)
    assert r.status_code == 413 and r.json() == {"error": "request body is 101 bytes; the limit is 100 bytes"}
    r = client.post("/_test/body", content=iter([b"x" * 60, b"x" * 60]))  # chunked: no Content-Length
    assert r.status_code == 413 and r.json() == {"error": "request body is over the limit of 100 bytes"}
    assert client.post("/_test/body", content=iter([b"x" * 50, b"x" * 50])).json() == {"bytes": 100}


def test_multipart_files_within_their_limits(client):
    ok = client.post("/_test/files", files=[("files", ("a.jpg", b"a" * 10)), ("files", ("b.jpg", b"b" * 100))])
    assert ok.status_code == 200 and ok.json() == {"sizes": [10, 100]}
    three = client.post("/_test/files", files=[("files", (f"{i}.jpg", b"x")) for i in range(3)])
    assert three.status_code == 413 and "limit is 2 per request" in three.json()["error"]
    big = client.post("/_test/files", files=[("files", ("big.jpg", b"x" * 101))])
    assert big.status_code == 413 and big.json() == {"error": "big.jpg is over the limit of 100 bytes"}
    wrong = client.post("/_test/files", files=[("image", ("a.jpg", b"x"))], data={"note": "hi"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "multipart body has no file field 'files' (fields sent: ['image', 'note'])"
    raw = client.post("/_test/files", content=b"not multipart", headers={"content-type": "multipart/form-data"})
    assert raw.status_code == 400 and raw.json()["error"].startswith("bad multipart body")


def test_a_body_that_does_not_arrive_in_time_is_408():
    async def trickle():
        yield {"type": "http.request", "body": b"x", "more_body": True}
        await asyncio.sleep(5)

    async def read():
        messages = trickle()
        request = Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, lambda: messages.__anext__())
        return await read_body(guarded(request, 100, timeout_s=0.2))

    with pytest.raises(ClientError, match="did not arrive within 0.2 s") as e:
        asyncio.run(read())
    assert e.value.status == 408


def test_heads_give_serves_proxy_our_json_errors():
    """Every head we start names the proxy hook (tests/test_serve_app.py sees Serve's own 503 as JSON)."""
    import importlib

    from animalclf.runtime import localray
    from serve import web

    assert localray.SERVE_PROXY_CALLBACK == {web.PROXY_CALLBACK_ENV: web.PROXY_CALLBACK}
    assert localray.head_environment({})[web.PROXY_CALLBACK_ENV] == web.PROXY_CALLBACK
    assert localray.head_environment({web.PROXY_CALLBACK_ENV: "mine:hook"})[web.PROXY_CALLBACK_ENV] == "mine:hook"
    module, fn = web.PROXY_CALLBACK.split(":")
    (middleware,) = getattr(importlib.import_module(module), fn)()
    assert middleware.cls is web.JSONErrors


def test_json_errors_rewrites_plain_text_errors_only():
    import asyncio
    import json

    from serve.web import JSONErrors

    def app_answering(status: int, ctype: bytes, body: bytes):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", ctype), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
        return app

    def run(app) -> tuple[dict, bytes]:
        sent: list[dict] = []

        async def send(m):
            sent.append(m)

        asyncio.run(JSONErrors(app)({"type": "http"}, None, send))
        return sent[0], b"".join(m.get("body", b"") for m in sent[1:])

    start, body = run(app_answering(503, b"text/plain; charset=utf-8", b"Request dropped due to backpressure"))
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"1"
    assert json.loads(body) == {"error": "Request dropped due to backpressure"}
    assert int(headers[b"content-length"]) == len(body)
    for status, ctype, raw in ((200, b"text/plain", b"ok"), (400, b"application/json", b'{"error": "x"}')):
        start, body = run(app_answering(status, ctype, raw))
        assert body == raw and start["status"] == status  # untouched
