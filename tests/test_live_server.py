"""The live web server on loopback: its routes, path traversal (never a file outside the run's folder, nor
one inside it that is not a frame), the bearer token, and the limits on prompts and the queue."""
import http.client
import json
import os

import pytest
from PIL import Image

from clipstudio.errors import ClipstudioError
from clipstudio.live.prompt_queue import PromptQueue
from clipstudio.live.server import is_loopback, parse_address, start_server

SECRET = "the secret outside the folder"


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    (out / "state").mkdir()
    Image.new("RGB", (8, 8), "red").save(out / "current.png")
    Image.new("RGB", (8, 8), "blue").save(out / "frames" / "0000000001.png")
    (out / "status.json").write_text(json.dumps({"state": "running", "step": 12, "prompt": "a red circle"}))
    (out / "state" / "checkpoint-0000000001.pt").write_text("not for the web")
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", out / "frames" / "0000000002.png")  # a frame-named link leading out
    return out


@pytest.fixture
def serve(folder):
    servers = []

    def start(**kwargs):
        server = start_server(folder, "127.0.0.1", 0, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def request(server, method, path, body=None, headers=None):
    """A raw request: the path goes out exactly as written (no client-side normalizing)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.putrequest(method, path, skip_accept_encoding=True)
    data = body.encode() if isinstance(body, str) else body
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    if data is not None:
        connection.putheader("Content-Length", str(len(data)))
    connection.endheaders(data)
    response = connection.getresponse()
    result = response.status, response.read(), dict(response.getheaders())
    connection.close()
    return result


def test_routes(serve, folder):
    server = serve()
    status, body, headers = request(server, "GET", "/")
    assert status == 200 and b'<img id="frame"' in body and headers["Content-Type"].startswith("text/html")
    assert b"setInterval(refresh" in request(server, "GET", "/live.js")[1]
    status, body, _ = request(server, "GET", "/status")
    assert status == 200 and json.loads(body) == {"state": "running", "step": 12, "prompt": "a red circle", "queue": 0}
    assert request(server, "GET", "/current.png?step=12")[1] == (folder / "current.png").read_bytes()
    assert request(server, "GET", "/frames/0000000001.png")[0] == 200
    assert request(server, "HEAD", "/current.png")[1] == b""


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/frames/../../secret.txt", "/frames/..%2f..%2fsecret.txt",
    "/frames/%2e%2e%2f%2e%2e%2fsecret.txt", "/frames/0000000002.png", "/frames/0000000001.png/../../../secret.txt",
    "//etc/passwd", "/etc/passwd", "/state/checkpoint-0000000001.pt", "/frames/../state/checkpoint-0000000001.pt",
    "/current.png/..", "/status.json", "/live.log", "/frames/", "/frames/..\\..\\secret.txt", "/%00", "http://x/../secret.txt",
])
def test_no_file_outside_the_frames_is_served(serve, path):
    status, body, _ = request(serve(), "GET", path)
    assert status in (400, 404) and SECRET.encode() not in body and b"not for the web" not in body


def test_post_prompt_queues_within_limits(serve, folder):
    server = serve(max_queue=2)
    json_type = {"Content-Type": "application/json"}
    status, body, _ = request(server, "POST", "/prompt", json.dumps({"prompt": "a blue triangle"}), json_type)
    assert status == 202 and json.loads(body)["place"] == 1
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(server, "POST", "/prompt", "prompt=a+green+square&steps=20", form)[0] == 202
    assert request(server, "POST", "/prompt", json.dumps({"prompt": "one more"}), json_type)[0] == 429
    assert [e["prompt"] for e in json.loads((folder / "queue.json").read_text())] == ["a blue triangle", "a green square"]
    assert json.loads(request(server, "GET", "/status")[1])["queue"] == 2
    PromptQueue(folder).pop()
    for bad in ({"prompt": "x" * 301}, {"prompt": ""}, {"prompt": "a\x00b"}, {"prompt": 3}, {"prompt": "a", "steps": -1},
                ["a list"]):
        assert request(server, "POST", "/prompt", json.dumps(bad), json_type)[0] == 400, bad
    assert request(server, "POST", "/prompt", "{not json", json_type)[0] == 400
    assert request(server, "POST", "/prompt", "x" * 5000, json_type)[0] == 413
    assert request(server, "POST", "/elsewhere", "{}", json_type)[0] == 404


def test_bearer_token(serve):
    server = serve(token="s3cret")
    body = json.dumps({"prompt": "a cat"})
    assert request(server, "POST", "/prompt", body)[0] == 401
    assert request(server, "POST", "/prompt", body, {"Authorization": "Bearer wrong"})[0] == 401
    assert request(server, "POST", "/prompt", body, {"Authorization": "Bearer s3cret"})[0] == 202
    assert request(server, "GET", "/status")[0] == 200  # looking needs no token


def test_beyond_loopback_needs_a_token(folder):
    with pytest.raises(ClipstudioError, match="give --token"):
        start_server(folder, "0.0.0.0", 0)
    with pytest.raises(ClipstudioError, match="give --token"):
        start_server(folder, "", 0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_parse_address():
    assert parse_address("8000") == ("127.0.0.1", 8000)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ClipstudioError):
        parse_address("localhost:http")
