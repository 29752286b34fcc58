"""The live web page: the current frame refreshing itself with prompt, step and rate; ``GET /status``;
``POST /prompt`` to queue a prompt.

It is the standard library's :class:`http.server.ThreadingHTTPServer`: five fixed routes, small bodies, a
few viewers on a gallery's network, and no dependency that the caretaker's machine would have to keep
installed. What that server does not do we do here: it never maps a URL onto the file system (each route
names its file, frames must match ``NNNNNNNNNN.png`` and resolve inside the folder), bodies are capped,
sockets time out, and binding beyond loopback requires a bearer token. For TLS put a reverse proxy in front.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ClipstudioError
from .playlist import MAX_PROMPT_CHARS
from .prompt_queue import MAX_QUEUE, PromptQueue, QueueFull
from .store import CURRENT, FRAME_NAME, FRAMES, STATUS

MAX_BODY = 4096
LOG = logging.getLogger("clipstudio.live.server")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipstudio live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="10"></noscript>
<style>
body{margin:0;background:#111;color:#eee;font:16px system-ui,sans-serif;display:flex;flex-direction:column;
align-items:center;justify-content:center;min-height:100vh}
#frame{width:min(80vmin,720px);height:min(80vmin,720px);image-rendering:pixelated;background:#222}
#info{margin:1em;text-align:center}#prompt{font-size:1.4em}#meta{opacity:.7;margin-top:.3em}
form{margin:.5em;opacity:.8}input{font:inherit}
</style></head><body>
<img id="frame" src="/current.png" alt="the current frame">
<div id="info"><div id="prompt">starting</div><div id="meta"></div></div>
<form id="queue"><input id="text" maxlength="%(max_chars)d" placeholder="queue a prompt" size="40">
<input id="token" type="password" placeholder="token" size="10" %(token_hidden)s><button>queue</button>
<span id="answer"></span></form>
<script src="/live.js"></script>
</body></html>
"""

SCRIPT = """// Polls /status and reloads the frame when the step changes; text goes in with textContent only.
let shownStep = -1;
async function refresh() {
  try {
    const status = await (await fetch('/status', {cache: 'no-store'})).json();
    document.getElementById('prompt').textContent = status.prompt || status.state || '';
    const rate = status.steps_per_second ? status.steps_per_second.toFixed(2) + ' steps/s' : '';
    document.getElementById('meta').textContent =
      ['step ' + (status.step ?? '?'), rate, status.state, status.queue ? status.queue + ' queued' : '']
        .filter(Boolean).join(' \\u00b7 ');
    if (status.step !== shownStep) {
      shownStep = status.step;
      document.getElementById('frame').src = '/current.png?step=' + encodeURIComponent(status.step);
    }
  } catch (err) { document.getElementById('meta').textContent = 'waiting for the run'; }
}
document.getElementById('queue').addEventListener('submit', async (event) => {
  event.preventDefault();
  const headers = {'Content-Type': 'application/json'};
  const token = document.getElementById('token').value;
  if (token) headers['Authorization'] = 'Bearer ' + token;
  const answer = await fetch('/prompt', {method: 'POST', headers,
    body: JSON.stringify({prompt: document.getElementById('text').value})});
  document.getElementById('answer').textContent = (await answer.json()).message || '';
});
refresh();
setInterval(refresh, %(refresh_ms)d);
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ClipstudioError(f"--serve takes [HOST:]PORT, got '{text}'") from None
    if not 0 <= number <= 65535:
        raise ClipstudioError(f"port must be from 0 to 65535, got {number}")
    return host or "0.0.0.0", number


class LiveServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, folder: Path, host: str, port: int, token: str | None, queue: PromptQueue,
                 refresh_seconds: float):
        self.folder, self.token, self.queue = folder.resolve(), token, queue
        self.refresh_ms = int(refresh_seconds * 1000)
        self.url_host = f"[{host}]" if ":" in host else host
        if ":" in host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((host, port), LiveHandler)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up or sends garbage is one log line, not a traceback."""
        import sys

        LOG.info("request from %s failed: %s", client_address[0], sys.exc_info()[1])


class LiveHandler(BaseHTTPRequestHandler):
    server: LiveServer
    server_version = "clipstudio-live"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:  # the page polls: keep requests out of the log
        LOG.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", extra)

    def _file(self, relative: str, content_type: str) -> None:
        """A file of the run's folder, only if it resolves inside it (no link or '..' leads out)."""
        folder = self.server.folder
        path = (folder / relative).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            return self._json(HTTPStatus.NOT_FOUND, {"message": "not found"})
        try:
            body = path.read_bytes()
        except OSError:
            return self._json(HTTPStatus.NOT_FOUND, {"message": "not found"})
        self._send(HTTPStatus.OK, body, content_type)

    def do_GET(self) -> None:
        route = unquote(urlsplit(self.path).path)
        if route in ("/", "/index.html"):
            hidden = "" if self.server.token else "hidden"
            page = PAGE % {"max_chars": MAX_PROMPT_CHARS, "token_hidden": hidden}
            return self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        if route == "/live.js":
            return self._send(HTTPStatus.OK, (SCRIPT % {"refresh_ms": self.server.refresh_ms}).encode(),
                              "text/javascript; charset=utf-8")
        if route == "/status":
            return self._status()
        if route == "/current.png":
            return self._file(CURRENT, "image/png")
        if route.startswith("/frames/") and FRAME_NAME.match(route[len("/frames/"):]):
            return self._file(f"{FRAMES}/{route[len('/frames/'):]}", "image/png")
        self._json(HTTPStatus.NOT_FOUND, {"message": "not found"})

    do_HEAD = do_GET

    def _status(self) -> None:
        try:
            status = json.loads((self.server.folder / STATUS).read_text())
        except (OSError, ValueError):
            status = {"state": "starting"}
        status["queue"] = len(self.server.queue)
        self._json(HTTPStatus.OK, status)

    def do_POST(self) -> None:
        if unquote(urlsplit(self.path).path) != "/prompt":
            return self._json(HTTPStatus.NOT_FOUND, {"message": "not found"})
        if not self._authorized():
            return self._json(HTTPStatus.UNAUTHORIZED, {"message": "a bearer token is needed"},
                              {"WWW-Authenticate": 'Bearer realm="clipstudio-live"'})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"message": "give a Content-Length"})
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"message": f"at most {MAX_BODY} bytes"})
        try:
            fields = self._fields(self.rfile.read(length))
            place = self.server.queue.push(fields.get("prompt"), fields.get("steps"))
        except QueueFull as err:
            return self._json(HTTPStatus.TOO_MANY_REQUESTS, {"message": str(err)})
        except (ClipstudioError, ValueError) as err:
            return self._json(HTTPStatus.BAD_REQUEST, {"message": str(err)})
        LOG.info("prompt queued from %s at place %d", self.address_string(), place)
        self._json(HTTPStatus.ACCEPTED, {"message": f"queued, place {place}", "place": place})

    def _fields(self, body: bytes) -> dict[str, Any]:
        """JSON ``{"prompt": ..., "steps": ...}`` or a form's ``prompt=...``."""
        text = body.decode("utf-8")
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs(text, max_num_fields=4)
            fields: dict[str, Any] = {k: v[0] for k, v in form.items()}
            if "steps" in fields:
                fields["steps"] = int(fields["steps"])
            return fields
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("send a JSON object with a 'prompt'")
        return data

    def _authorized(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def start_server(folder: str | Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_queue: int = MAX_QUEUE, refresh_seconds: float = 2.0) -> LiveServer:
    """Serve ``folder`` in a background thread; beyond loopback only with a token."""
    if not is_loopback(host) and not token:
        raise ClipstudioError(f"serving on {host or 'all interfaces'} reaches beyond this machine: "
                              "give --token (or CLIPSTUDIO_LIVE_TOKEN) so only you can queue prompts")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = LiveServer(folder, host, port, token, PromptQueue(folder, max_queue), refresh_seconds)
    except OSError as err:
        raise ClipstudioError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
    threading.Thread(target=server.serve_forever, name="clipstudio-live-server", daemon=True).start()
    return server
