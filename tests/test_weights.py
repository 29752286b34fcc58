"""clipstudio.weights: lookup order, mirror fallback, sha256 checks, offline errors. Never touches the internet:
downloads come from a threaded http.server on 127.0.0.1 or from file:// URLs."""
from __future__ import annotations

import functools
import hashlib
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from generator_fixtures import HAVE_TAEF2, SHARED_TAEF2

from clipstudio import weights
from clipstudio.errors import ClipstudioError
from clipstudio.weights import WeightsEntry

PAYLOAD = b"clipstudio test weights \x00\x01\x02" * 100


HALF = len(PAYLOAD) // 2


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []
    ranges: list[str] = []
    cut_once: list[bool] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, body: bytes, length: int | None, status: int = 200, content_range: str = ""):
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        type(self).requests.append(self.path)
        type(self).ranges.append(self.headers.get("Range", ""))
        if self.path == "/truncated.bin":  # promises more bytes than it sends, then hangs up
            return self._send(PAYLOAD[:HALF], len(PAYLOAD))
        if self.path == "/nolength-short.bin":  # no Content-Length, closes early: looks complete to a client
            return self._send(PAYLOAD[:HALF], None)
        if self.path == "/nolength-full.bin":
            return self._send(PAYLOAD, None)
        if self.path == "/ranged.bin":  # cut off on the first request; honours Range afterwards
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
            if start:
                rest = PAYLOAD[start:]
                return self._send(rest, len(rest), 206, f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            if not type(self).cut_once:
                type(self).cut_once.append(True)
                return self._send(PAYLOAD[:HALF], len(PAYLOAD))
            return self._send(PAYLOAD, len(PAYLOAD))
        if self.path == "/drip.bin":  # one byte every 50 ms: each read is quick, the whole would take minutes
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            try:
                for i in range(200):  # bounded: stops by itself after 10 s even if nobody hangs up
                    self.wfile.write(PAYLOAD[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
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
    handler = type("Handler", (_QuietHandler,), {"requests": [], "ranges": [], "cut_once": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, handler.requests, handler.ranges
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)
    monkeypatch.delenv("CLIPSTUDIO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPSTUDIO_DOWNLOAD_TIMEOUT", raising=False)


def register(monkeypatch, urls, sha256=hashlib.sha256(PAYLOAD).hexdigest(), name="test.model",
             filename="test_model.bin"):
    entry = WeightsEntry(name, filename, list(urls), sha256, "MIT", "test entry", "test")
    monkeypatch.setitem(weights.WEIGHTS, name, entry)
    return entry


def test_mirror_fallback_after_404_downloads_into_cache(server, monkeypatch):
    base, _, requests, _ = server
    register(monkeypatch, [f"{base}/missing.bin", f"{base}/good.bin"])
    path = weights.fetch("test.model")
    assert path == weights.cache_dir() / "test_model.bin"
    assert path.read_bytes() == PAYLOAD
    assert requests == ["/missing.bin", "/good.bin"]
    assert [p.name for p in path.parent.iterdir()] == ["test_model.bin"]  # no temporary file left


def test_sha_mismatch_is_rejected_and_not_cached(server, monkeypatch):
    base, _, _, _ = server
    register(monkeypatch, [f"{base}/bad.bin", f"{base}/good.bin"])
    with pytest.raises(ClipstudioError, match="sha256 mismatch") as info:
        weights.fetch("test.model")
    assert "\n" not in str(info.value)
    assert list(weights.cache_dir().iterdir()) == []  # neither the file nor its temporary copy


def test_truncated_download_falls_through_and_is_not_cached(server, monkeypatch):
    base, _, requests, _ = server
    register(monkeypatch, [f"{base}/truncated.bin", f"{base}/good.bin"], sha256=None)  # size is the only check
    assert weights.fetch("test.model").read_bytes() == PAYLOAD
    assert requests == ["/truncated.bin", "/good.bin"]
    register(monkeypatch, [f"{base}/truncated.bin"], sha256=None, name="test.other", filename="other.bin")
    with pytest.raises(ClipstudioError, match="closed after"):
        weights.fetch("test.other")
    part = weights.part_path(weights.cache_dir() / "other.bin", f"{base}/truncated.bin")
    assert sorted(p.name for p in weights.cache_dir().iterdir()) == sorted([part.name, "test_model.bin"])
    assert part.read_bytes() == PAYLOAD[:HALF]  # kept under its .part name, for a resume; never as other.bin


def test_cache_hit_needs_no_network(server, monkeypatch):
    base, _, requests, _ = server
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
    base, _, _, _ = server
    register(monkeypatch, [f"{base}/good.bin"])
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    assert weights.fetch("test.model", offline=False).read_bytes() == PAYLOAD


def test_all_mirrors_failing_names_them(server, monkeypatch):
    base, _, _, _ = server
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


# --- downloads: resume, time bound, unknown length, progress (issue 11 Downloads, issue 16) --------------------

def test_a_cut_off_download_resumes_with_a_range_request(server, monkeypatch):
    base, _, requests, ranges = server
    register(monkeypatch, [f"{base}/ranged.bin"], sha256=None)
    with pytest.raises(ClipstudioError, match="closed after"):
        weights.fetch("test.model")
    assert not (weights.cache_dir() / "test_model.bin").exists()
    path = weights.fetch("test.model")
    assert path.read_bytes() == PAYLOAD
    assert ranges == ["", f"bytes={HALF}-"]  # the second request asked only for the missing half
    assert [p.name for p in weights.cache_dir().iterdir()] == ["test_model.bin"]  # the .part became the file


def test_a_server_ignoring_range_restarts_the_file(server, monkeypatch):
    base, _, _, ranges = server
    entry = register(monkeypatch, [f"{base}/good.bin"])
    part = weights.part_path(weights.cache_dir() / entry.filename, entry.urls[0])
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from an earlier try")
    assert weights.fetch("test.model").read_bytes() == PAYLOAD  # 200 instead of 206: written from the start
    assert ranges == ["bytes=31-"] and not part.exists()


def test_no_content_length_and_early_close_is_refused_unless_the_sha256_is_known(server, monkeypatch):
    base, _, _, _ = server
    register(monkeypatch, [f"{base}/nolength-short.bin"], sha256=None)
    with pytest.raises(ClipstudioError, match="no Content-Length") as info:
        weights.fetch("test.model")
    assert "\n" not in str(info.value) and not (weights.cache_dir() / "test_model.bin").exists()
    register(monkeypatch, [f"{base}/nolength-short.bin"], name="test.short", filename="short.bin")
    with pytest.raises(ClipstudioError, match="sha256 mismatch"):  # a known sha256 catches the cut
        weights.fetch("test.short")
    register(monkeypatch, [f"{base}/nolength-full.bin"], name="test.full", filename="full.bin")
    assert weights.fetch("test.full").read_bytes() == PAYLOAD  # whole, and the sha256 says so
    assert sorted(p.name for p in weights.cache_dir().iterdir() if not p.name.endswith(".part")) == ["full.bin"]


def test_a_slow_drip_hits_the_total_time_bound(server, monkeypatch):
    base, _, _, _ = server
    register(monkeypatch, [f"{base}/drip.bin"])
    monkeypatch.setenv("CLIPSTUDIO_DOWNLOAD_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(ClipstudioError, match="longer than 0.5 s") as info:
        weights.fetch("test.model")
    assert time.monotonic() - start < 3  # 58 s at this pace without the bound
    assert "\n" not in str(info.value) and not (weights.cache_dir() / "test_model.bin").exists()
    monkeypatch.setenv("CLIPSTUDIO_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ClipstudioError, match="CLIPSTUDIO_DOWNLOAD_TIMEOUT must be a number"):
        weights.fetch("test.model")


def test_progress_bar_names_the_file_and_reaches_the_total(server, monkeypatch, capsys):
    base, _, _, _ = server
    register(monkeypatch, [f"{base}/good.bin"])
    weights.fetch("test.model", progress=True)
    err = capsys.readouterr().err
    assert "test_model.bin" in err and "100%" in err and f"{len(PAYLOAD) / 1024:.2f}k" in err  # size in KiB
    register(monkeypatch, [f"{base}/good.bin"], name="test.quiet", filename="quiet.bin")
    weights.fetch("test.quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_hf_hub_offline_counts_as_offline(monkeypatch):
    register(monkeypatch, ["http://127.0.0.1:9/x.bin"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipstudioError, match="not found offline: put test_model.bin in"):
        weights.fetch("test.model")


HUB_NAME = "open_clip:ViT-B-32:laion2b_s34b_b79k"
HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


def test_hub_files_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ClipstudioError) as info:  # empty cache, offline: one line naming the file and folders
        weights.fetch(HUB_NAME, offline=True)
    message = str(info.value)
    assert "\n" not in message and "open_clip_pytorch_model.bin" in message and HUB_REPO in message
    assert str(weights.cache_dir()) in message
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    cached = repo / "snapshots" / commit / "open_clip_model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert weights.fetch(HUB_NAME, offline=True) == cached  # open_clip's safetensors twin, from hf's cache


def test_open_clip_url_files_offline_name_open_clips_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home-dir"))
    with pytest.raises(ClipstudioError) as info:
        weights.fetch("open_clip:ViT-B-32:openai", offline=True)
    message = str(info.value)
    assert "\n" not in message and "ViT-B-32.pt" in message and str(tmp_path / "home-dir" / ".cache" / "clip") in message


def test_lpips_backbone_offline_is_one_line(tmp_path, monkeypatch):
    from clipstudio.losses.regularizers import build_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    with pytest.raises(ClipstudioError) as info:
        build_lpips("alex")
    message = str(info.value)
    assert "\n" not in message and "alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_the_weights_folder_wins_over_the_ecosystem_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    folder = tmp_path / "offline-folder"
    folder.mkdir()
    for name in (HUB_NAME, "open_clip:ViT-B-32:openai"):
        mine = folder / weights.get_entry(name).filename
        mine.write_bytes(b"the user's own copy")
        monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(folder))
        assert weights.fetch(name, offline=True) == mine
