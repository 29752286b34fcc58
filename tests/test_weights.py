"""clipstudio.weights: lookup order, mirror fallback, sha256 checks, offline errors. Never touches the internet:
downloads come from a threaded http.server on 127.0.0.1 or from file:// URLs."""
from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from generator_fixtures import HAVE_TAEF2, SHARED_TAEF2

from clipstudio import weights
from clipstudio.errors import ClipstudioError
from clipstudio.weights import WeightsEntry

PAYLOAD = b"clipstudio test weights \x00\x01\x02" * 100


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path == "/truncated.bin":  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/"srv" on 127.0.0.1; yields (base_url, folder, list of requested paths)."""
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "good.bin").write_bytes(PAYLOAD)
    (folder / "bad.bin").write_bytes(PAYLOAD + b"tampered")
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)
    monkeypatch.delenv("CLIPSTUDIO_OFFLINE", raising=False)


def register(monkeypatch, urls, sha256=hashlib.sha256(PAYLOAD).hexdigest(), name="test.model",
             filename="test_model.bin"):
    entry = WeightsEntry(name, filename, list(urls), sha256, "MIT", "test entry", "test")
    monkeypatch.setitem(weights.WEIGHTS, name, entry)
    return entry


def test_mirror_fallback_after_404_downloads_into_cache(server, monkeypatch):
    base, _, requests = server
    register(monkeypatch, [f"{base}/missing.bin", f"{base}/good.bin"])
    path = weights.fetch("test.model")
    assert path == weights.cache_dir() / "test_model.bin"
    assert path.read_bytes() == PAYLOAD
    assert requests == ["/missing.bin", "/good.bin"]
    assert [p.name for p in path.parent.iterdir()] == ["test_model.bin"]  # no temporary file left


def test_sha_mismatch_is_rejected_and_not_cached(server, monkeypatch):
    base, _, _ = server
    register(monkeypatch, [f"{base}/bad.bin", f"{base}/good.bin"])
    with pytest.raises(ClipstudioError, match="sha256 mismatch") as info:
        weights.fetch("test.model")
    assert "\n" not in str(info.value)
    assert list(weights.cache_dir().iterdir()) == []  # neither the file nor its temporary copy


def test_truncated_download_falls_through_and_is_not_cached(server, monkeypatch):
    base, _, requests = server
    register(monkeypatch, [f"{base}/truncated.bin", f"{base}/good.bin"], sha256=None)  # size is the only check
    assert weights.fetch("test.model").read_bytes() == PAYLOAD
    assert requests == ["/truncated.bin", "/good.bin"]
    register(monkeypatch, [f"{base}/truncated.bin"], sha256=None, name="test.other", filename="other.bin")
    with pytest.raises(ClipstudioError, match="closed after"):
        weights.fetch("test.other")
    assert sorted(p.name for p in weights.cache_dir().iterdir()) == ["test_model.bin"]


def test_cache_hit_needs_no_network(server, monkeypatch):
    base, _, requests = server
    register(monkeypatch, [f"{base}/good.bin"])
    first = weights.fetch("test.model")
    register(monkeypatch, ["http://127.0.0.1:9/unreachable.bin"])
    assert weights.fetch("test.model", offline=True) == first
    assert requests == ["/good.bin"]


@pytest.mark.parametrize("via", ["argument", "env", "group-subfolder"])
def test_weights_dir_hit_comes_first(tmp_path, monkeypatch, via):
    register(monkeypatch, ["http://127.0.0.1:9/unreachable.bin"])
    folder = tmp_path / "mine"
    target = folder / "test" / "test_model.bin" if via == "group-subfolder" else folder / "test_model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"user's own copy")
    (weights.cache_dir()).mkdir(parents=True)
    (weights.cache_dir() / "test_model.bin").write_bytes(PAYLOAD)  # the folder wins over the cache
    if via == "argument":
        found = weights.fetch("test.model", weights_dir=folder)
    else:
        monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(folder))
        found = weights.fetch("test.model")
    assert found == target


def test_offline_missing_is_one_line_naming_file_and_folder(tmp_path, monkeypatch):
    register(monkeypatch, ["http://127.0.0.1:9/x.bin"])
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    with pytest.raises(ClipstudioError) as info:
        weights.fetch("test.model")
    message = str(info.value)
    assert "\n" not in message and "test_model.bin" in message and str(weights.cache_dir()) in message
    with pytest.raises(ClipstudioError, match=str(tmp_path / "wd")):
        weights.fetch("test.model", weights_dir=tmp_path / "wd")  # names the weights folder when one is set


def test_offline_argument_overrides_env(server, monkeypatch):
    base, _, _ = server
    register(monkeypatch, [f"{base}/good.bin"])
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    assert weights.fetch("test.model", offline=False).read_bytes() == PAYLOAD


def test_all_mirrors_failing_names_them(server, monkeypatch):
    base, _, _ = server
    register(monkeypatch, [f"{base}/nope1.bin", f"{base}/nope2.bin"])
    with pytest.raises(ClipstudioError, match="nope1.bin.*nope2.bin") as info:
        weights.fetch("test.model")
    assert "\n" not in str(info.value)


def test_file_url_mirror(tmp_path, monkeypatch):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    register(monkeypatch, [(tmp_path / "absent.bin").as_uri(), source.as_uri()])
    assert weights.fetch("test.model").read_bytes() == PAYLOAD


def test_unknown_names_list_valid_ones():
    with pytest.raises(ClipstudioError, match="taef2.encoder.*open_clip:ARCH:TAG"):
        weights.fetch("no-such-weights")
    with pytest.raises(ClipstudioError, match="open_clip:ARCH:TAG"):
        weights.get_entry("open_clip:ViT-B-32")
    with pytest.raises(ClipstudioError, match="tags for ViT-B-32: .*openai"):
        weights.get_entry("open_clip:ViT-B-32:no-such-tag")


def test_open_clip_entries_derive_from_open_clip():
    import open_clip

    entry = weights.get_entry("open_clip:ViT-B-32:openai")
    assert entry.urls == [open_clip.get_pretrained_url("ViT-B-32", "openai")]
    assert entry.sha256 == entry.urls[0].split("/")[-2]  # OpenAI's folder name is the file's sha256
    hub = weights.get_entry("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert hub.urls[0].startswith("https://huggingface.co/laion/") and hub.sha256 is None


def test_registry_covers_expected_models_with_unique_files():
    names = {e.name for e in weights.list_weights()}
    for model in weights.VQGAN_MODELS:
        assert {f"{model}.ckpt", f"{model}.yaml"} <= names
    for model in ("taesd", "taesdxl", "taesd3", "taef1", "taef2"):
        assert {f"{model}.encoder", f"{model}.decoder"} <= names
    filenames = [e.filename for e in weights.list_weights()]
    assert len(filenames) == len(set(filenames))


@pytest.mark.skipif(not HAVE_TAEF2, reason="shared TAEF2 weights not present")
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_taef2_sha256_matches_the_shared_files(part, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(SHARED_TAEF2))
    entry = weights.get_entry(f"taef2.{part}")
    path = weights.fetch(entry.name, offline=True)
    assert path.parent == SHARED_TAEF2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
