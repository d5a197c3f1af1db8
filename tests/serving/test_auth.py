"""API keys (utils/serving/auth.py): 401 before the body is read, a wrong key, a key in the URL,
keys re-read when their file changes, a file missing or emptied, admin keys, open health routes,
constant-time comparison against every key, and no key ever in a log."""
import asyncio
import logging
import os

import pytest

from service_fakes import FakeClassifier, FakeModel
from utils.errors import UserError, run_cli
from utils.serving.app import Service, ServiceConfig
from utils.serving.auth import ApiKeys, KeyFile, RedactKeys

KEY = "api-key-aaaaaaaaaaaaaaaa"
OTHER = "api-key-bbbbbbbbbbbbbbbb"
ADMIN_KEY = "admin-key-cccccccccccccccc"


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(tmp_path):
    api, admin = tmp_path / "keys.txt", tmp_path / "admin.txt"
    api.write_text(f"# the team's keys\n{KEY}\n\n", encoding="utf-8")
    admin.write_text(ADMIN_KEY + "\n", encoding="utf-8")
    return str(api), str(admin)


@pytest.fixture
def client(keys):
    from fastapi.testclient import TestClient

    config = ServiceConfig("exports/v1", api_key_file=keys[0], admin_key_file=keys[1])
    with TestClient(Service(config, FakeClassifier(FakeModel())).asgi()) as test_client:
        yield test_client


def test_a_request_needs_a_valid_key_and_the_health_routes_stay_open(client):
    for headers in ({}, bearer(OTHER), {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        response = client.post("/predict", json={"texts": ["1"]}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["field"] == "authorization" and KEY not in response.text
    assert client.post("/predict", json={"texts": ["1"]}, headers=bearer(KEY)).status_code == 200
    assert client.post("/predict", json={"texts": ["1"]}, headers=bearer(ADMIN_KEY)).status_code == 200
    for path in ("/labels", "/metrics", "/v2/models/cls_default", "/docs", "/models/cls_default"):
        assert client.get(path).status_code == 401, path
    for path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready"):
        assert client.get(path).status_code == 200, path


def test_the_admin_routes_need_an_admin_key_and_are_disabled_without_the_file(client, keys):
    from fastapi.testclient import TestClient

    body = {"path": "exports/v2"}
    assert client.post("/admin/models/cls_default", json=body).status_code == 401
    assert client.post("/admin/models/cls_default", json=body, headers=bearer(KEY)).status_code == 401
    assert client.post("/admin/scan", headers=bearer(ADMIN_KEY)).json() == {"swaps": []}
    config = ServiceConfig("exports/v1", api_key_file=keys[0])
    with TestClient(Service(config, FakeClassifier(FakeModel())).asgi()) as no_admin:
        refused = no_admin.post("/admin/scan", headers=bearer(KEY))
        assert refused.status_code == 403 and "--admin_key_file" in refused.json()["error"]["message"]
    with TestClient(Service(ServiceConfig("exports/v1"), FakeClassifier(FakeModel())).asgi()) as open_service:
        assert open_service.post("/admin/scan").status_code == 403  # no keys at all: still no admin routes


@pytest.mark.parametrize("query", ["api_key", "token", "access_token", "Key"])
def test_a_key_in_the_url_is_refused_and_never_logged(client, query, caplog):
    caplog.set_level(logging.DEBUG)
    response = client.post(f"/predict?{query}={KEY}", json={"texts": ["1"]}, headers=bearer(KEY))
    assert response.status_code == 400 and response.json()["error"]["field"] == "query"
    assert "Authorization: Bearer" in response.json()["error"]["message"]
    assert client.get(f"/health?{query}={KEY}").status_code == 400
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]  # (not the client's)
    assert server_side and not any(KEY in line for line in server_side)


def test_the_access_log_filter_drops_a_query_that_holds_a_key():
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/labels?token={KEY}&x=1", "1.1", 400), None)
    assert RedactKeys().filter(record) and KEY not in record.getMessage()
    assert "/labels?[redacted]" in record.getMessage()
    plain = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                              ("127.0.0.1:5", "GET", "/labels?model=a", "1.1", 200), None)
    assert RedactKeys().filter(plain) and "/labels?model=a" in plain.getMessage()


def test_keys_are_re_read_when_the_file_changes_and_a_missing_or_emptied_file_refuses_everyone(client, keys):
    path = keys[0]

    def status(key):
        return client.post("/predict", json={"texts": ["1"]}, headers=bearer(key)).status_code

    def rewrite(text, stamp):
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(text)
        os.utime(path, ns=(stamp, stamp))  # a new mtime whatever the clock's resolution

    assert (status(KEY), status(OTHER)) == (200, 401)
    rewrite(OTHER + "\n", 10**18)
    assert (status(KEY), status(OTHER)) == (401, 200)  # KEY revoked, OTHER added: no restart
    rewrite("", 2 * 10**18)
    assert (status(KEY), status(OTHER), status(ADMIN_KEY)) == (401, 401, 200)  # emptied: fail closed (admin aside)
    os.remove(path)
    assert status(OTHER) == 401 and client.get("/health").status_code == 200
    rewrite(KEY + "\n", 3 * 10**18)
    assert status(KEY) == 200


def test_a_keys_file_saved_with_a_bom_and_crlf_line_ends_accepts_its_first_key(client, keys):
    """Notepad's UTF-8 starts the file with a BOM and ends lines with CRLF: neither is part of a key
    (the BOM once made the first key never match, silently)."""
    with open(keys[0], "wb") as fp:
        fp.write(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n" + OTHER.encode() + b"\r\n")
    os.utime(keys[0], ns=(10**18, 10**18))
    codes = [client.post("/predict", json={"texts": ["1"]}, headers=bearer(key)).status_code for key in (KEY, OTHER)]
    assert codes == [200, 200]


@pytest.mark.parametrize("content, problem", [(None, "no such file"), ("", "holds no key"),
                                              ("# only a comment\n\n", "holds no key"),
                                              ("short\n", "at least 16 characters")])
def test_a_keys_file_missing_empty_or_with_a_short_key_ends_serve_before_any_model_loads(
        content, problem, tmp_path, monkeypatch, capsys):
    import serve
    import utils.deploy.classifier

    path = tmp_path / "keys.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(utils.deploy.classifier, "Classifier", lambda *a, **k: pytest.fail("a model was loaded"))
    assert run_cli(serve.main, ["--model_path_prefix", str(export), "--port", "0", "--api_key_file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and "Traceback" not in err
    with pytest.raises(UserError, match=problem):
        KeyFile(str(path), "--api_key_file")


def test_serving_beyond_localhost_without_keys_warns(trained, monkeypatch, capsys):
    import uvicorn

    import serve

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *args: None)  # (this process's handlers stay pytest's)
    export = os.path.join(trained[1], "export")
    assert run_cli(serve.main, ["--model_path_prefix", export, "--port", "0", "--host", "0.0.0.0",
                                "--num_threads", "1"]) == 0
    assert "warning: serving on 0.0.0.0 without --api_key_file" in capsys.readouterr().err
    assert run_cli(serve.main, ["--model_path_prefix", export, "--port", "0", "--num_threads", "1"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_request_without_a_key_is_refused_before_its_body_is_read_and_keys_compare_in_constant_time(
        keys, monkeypatch):
    import hmac

    reads, compared = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def app(scope, receive, send):
        await receive()

    async def call(headers):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/predict", "headers": headers, "query_string": b""}
        await ApiKeys(app, KeyFile(keys[0], "--api_key_file"), None)(scope, receive, send)
        return sent

    sent = asyncio.run(call([(b"content-length", b"1000000")]))
    assert sent[0]["status"] == 401 and not reads  # answered, the body never read
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with open(keys[0], "a", encoding="utf-8") as fp:
        fp.write(OTHER + "\n" + "k" * 40 + "\n")
    keyfile = KeyFile(keys[0], "--api_key_file")
    assert keyfile.accepts(KEY) and len(compared) == 3  # the first key matched; every key was still compared
    assert not keyfile.accepts("k" * 41) and len(compared) == 6
