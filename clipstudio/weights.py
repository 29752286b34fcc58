"""One place that maps weight names to files, and finds or downloads them.

Each :class:`WeightsEntry` names one file, the mirrors it can be downloaded from (tried in order), its sha256
where it is actually known (``None`` otherwise: never invented), and its licence.

:func:`fetch` looks for the file, in order:

1. the weights folder: the ``weights_dir`` argument (CLI ``--weights-dir``) or ``$CLIPSTUDIO_WEIGHTS``;
   ``FOLDER/FILENAME`` or ``FOLDER/GROUP/FILENAME``. Files there are the user's and are used as they are;
2. the cache, ``$CLIPSTUDIO_HOME/weights`` (default ``~/.cache/clipstudio/weights``);
3. the ecosystem's own download and cache where the file lives there: open_clip's pretrained tags through
   open_clip (OpenAI's files into ``~/.cache/clip``, checked against their sha256) and files on the Hugging
   Face hub through ``huggingface_hub.hf_hub_download`` (its cache, its progress bars, ``HF_HUB_OFFLINE``);
4. otherwise the mirrors, one after another (:func:`fetch_url_list`): a progress bar, the partial file kept as
   ``.FILENAME.XXXXXXXX.part`` beside the cache (never under the file's own name) and resumed with an HTTP
   Range request, the size (Content-Length) and the sha256 checked where known, and the whole download bounded
   in time (``$CLIPSTUDIO_DOWNLOAD_TIMEOUT`` seconds, default one hour), not only each read. A server that
   sends no Content-Length for a file whose sha256 is unknown is refused: a cut-off download could not be
   told from a whole one.

Offline (``offline=True``, ``CLIPSTUDIO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) nothing is downloaded and a missing
file is one line naming the file and the folder to put it in.

Names: ``GROUP.PART`` for the built-in entries (``vqgan_imagenet_f16_16384.ckpt``, ``taef2.encoder``, ...; see
:func:`list_weights`), and ``open_clip:ARCH:TAG`` (e.g. ``open_clip:ViT-B-32:openai``) for any pretrained
weights that ``open_clip.list_pretrained()`` knows, derived from ``open_clip.get_pretrained_cfg``.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import ClipstudioError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_READ_TIMEOUT_S = 60  # one read may wait this long for data
_TOTAL_TIMEOUT_S = 3600  # the whole download (all mirrors); $CLIPSTUDIO_DOWNLOAD_TIMEOUT overrides


@dataclass(frozen=True)
class WeightsEntry:
    """One weights file: where to get it and how to check it."""

    name: str
    filename: str
    urls: list[str]  # mirrors, tried in order; all must serve the same bytes (one sha256)
    sha256: str | None
    license: str
    note: str = ""
    group: str = ""  # files that belong together (a checkpoint and its config); also a weights-dir subfolder
    hub: str = ""  # "ORG/REPO/FILE" on the Hugging Face hub: fetched with hf_hub_download into its cache
    open_clip_url: str = ""  # a file open_clip downloads itself (into ~/.cache/clip, sha256-checked)


# --- built-in registry -----------------------------------------------------------------------------------

_HEIBOX = "https://heibox.uni-heidelberg.de/d/{share}/files/?p={path}&dl=1"
_TAMING_LICENSE = "MIT (CompVis/taming-transformers; code and released checkpoints)"
_NO_SHA = "sha256 not recorded by the publisher and not known to us, so the download is not verified"


def _vqgan_entries(model: str, share: str, ckpt_mirrors: list[str], yaml_mirrors: list[str],
                   about: str) -> list[WeightsEntry]:
    ckpt_urls = [_HEIBOX.format(share=share, path="%2Fckpts%2Flast.ckpt"), *ckpt_mirrors]
    yaml_urls = [_HEIBOX.format(share=share, path="%2Fconfigs%2Fmodel.yaml"), *yaml_mirrors]
    return [
        WeightsEntry(f"{model}.ckpt", f"{model}.ckpt", ckpt_urls, None, _TAMING_LICENSE,
                     f"{about}; Lightning checkpoint ({_NO_SHA})", model),
        WeightsEntry(f"{model}.yaml", f"{model}.yaml", yaml_urls, None, _TAMING_LICENSE,
                     f"{about}; model config ({_NO_SHA})", model),
    ]


_TAESD_RAW = ["https://raw.githubusercontent.com/madebyollin/taesd/{ref}/{file}",
              "https://github.com/madebyollin/taesd/raw/{ref}/{file}"]
_TAESD_ABOUT = {
    "taesd": "TAESD, tiny autoencoder for the Stable Diffusion 1.x/2.x latent space (4 channels)",
    "taesdxl": "TAESDXL, tiny autoencoder for the SDXL latent space (4 channels)",
    "taesd3": "TAESD3, tiny autoencoder for the Stable Diffusion 3 latent space (16 channels)",
    "taef1": "TAEF1, tiny autoencoder for the FLUX.1 latent space (16 channels)",
}
# TAEF2 is pinned to the commit whose files /work/shared/weights/taef2/README.md hashed.
_TAEF2_COMMIT = "5cccb12dc72074a4be35680c3b108548a7c69978"
_TAEF2_SHA256 = {
    "encoder": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "decoder": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}


def _tae_entries() -> list[WeightsEntry]:
    entries = []
    for model, about in _TAESD_ABOUT.items():
        for part in ("encoder", "decoder"):
            file = f"{model}_{part}.pth"
            entries.append(WeightsEntry(
                f"{model}.{part}", file, [u.format(ref="main", file=file) for u in _TAESD_RAW], None,
                "MIT (madebyollin/taesd)", f"{about}; {part}, plain state dict ({_NO_SHA}; tracks the main branch)",
                model,
            ))
    for part, sha in _TAEF2_SHA256.items():
        file = f"taef2_{part}.pth"
        entries.append(WeightsEntry(
            f"taef2.{part}", file, [u.format(ref=_TAEF2_COMMIT, file=file) for u in _TAESD_RAW], sha,
            "MIT (madebyollin/taesd)",
            f"TAEF2, tiny autoencoder for the FLUX.2 latent space (32 channels); {part}, plain state dict, "
            f"pinned to commit {_TAEF2_COMMIT[:12]}", "taef2",
        ))
    return entries


WEIGHTS: dict[str, WeightsEntry] = {
    e.name: e
    for e in [
        *_vqgan_entries(
            "vqgan_imagenet_f16_1024", "8088892a516d4e3baf92",
            ["http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_1024.ckpt"], [],
            "taming-transformers VQGAN, ImageNet, f=16, 1024 codes",
        ),
        *_vqgan_entries(
            "vqgan_imagenet_f16_16384", "a7530b09fed84f80a887",
            ["http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.ckpt",
             "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.ckpt"],
            ["http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.yaml",
             "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.yaml"],
            "taming-transformers VQGAN, ImageNet, f=16, 16384 codes (the VQGAN+CLIP default)",
        ),
        *_vqgan_entries(
            "vqgan_gumbel_f8_8192", "2e5662443a6b4307b470", [], [],
            "taming-transformers Gumbel VQGAN, OpenImages, f=8, 8192 codes (was openimages_f16_8192)",
        ),
        *_tae_entries(),
    ]
}
VQGAN_MODELS = ("vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_gumbel_f8_8192")


# --- open_clip -------------------------------------------------------------------------------------------

def open_clip_entry(arch: str, tag: str) -> WeightsEntry:
    """The entry for open_clip's pretrained weights ``ARCH:TAG`` (named ``open_clip:ARCH:TAG``).

    OpenAI's URLs carry the file's sha256 as their folder name, so those downloads are verified; the Hugging
    Face files open_clip uses for the other tags publish no hash in open_clip's table, so those are not.
    """
    try:
        import open_clip
    except ModuleNotFoundError:
        raise ClipstudioError("open_clip weights need the 'open_clip_torch' package: pip install open_clip_torch") \
            from None
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        hint = f"tags for {arch}: {', '.join(tags)}" if tags else "see open_clip.list_pretrained() for ARCH:TAG pairs"
        raise ClipstudioError(f"unknown open_clip weights '{arch}:{tag}'; {hint}")
    name = f"open_clip:{arch}:{tag}"
    url = cfg.get("url") or ""
    if "openaipublic" in url:
        sha = url.rstrip("/").split("/")[-2]
        ext = os.path.splitext(url)[1] or ".pt"
        return WeightsEntry(name, f"open_clip-{arch}-{tag}{ext}", [url], sha if len(sha) == 64 else None,
                            "MIT (openai/CLIP)",
                            "OpenAI CLIP TorchScript archive: load it with open_clip.load_openai_model(path), "
                            "since torch.load(weights_only=True) refuses TorchScript", "open_clip",
                            open_clip_url=url)
    hub = cfg.get("hf_hub") or ""
    if hub:
        # open_clip's convention: "org/repo/" means its default file name, "org/repo/file" names the file.
        model_id, hub_file = os.path.split(hub)
        hub_file = hub_file or "open_clip_pytorch_model.bin"
        return WeightsEntry(
            name, f"open_clip-{arch}-{tag}-{hub_file}",
            [f"https://huggingface.co/{model_id}/resolve/main/{hub_file}"], None,
            f"see the model card at https://huggingface.co/{model_id}",
            f"open_clip weights from the Hugging Face repo {model_id} ({_NO_SHA})", "open_clip",
            hub=f"{model_id}/{hub_file}",
        )
    if url:
        return WeightsEntry(name, f"open_clip-{arch}-{tag}-{os.path.basename(url)}", [url], None,
                            "see the open_clip README", f"open_clip weights ({_NO_SHA})", "open_clip")
    raise ClipstudioError(f"open_clip has no download location for '{arch}:{tag}'")


# --- lookup ----------------------------------------------------------------------------------------------

def list_weights(include_open_clip: bool = False) -> list[WeightsEntry]:
    """The built-in entries, sorted by name; with ``include_open_clip``, also every open_clip ARCH:TAG."""
    entries = sorted(WEIGHTS.values(), key=lambda e: e.name)
    if include_open_clip:
        import open_clip

        entries += [open_clip_entry(arch, tag) for arch, tag in open_clip.list_pretrained()]
    return entries


def get_entry(name: str) -> WeightsEntry:
    """The entry called ``name``; an unknown name is a one-line error listing the valid ones."""
    if name.startswith("open_clip:"):
        parts = name.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise ClipstudioError(f"open_clip weights are named open_clip:ARCH:TAG, got '{name}'")
        return open_clip_entry(parts[1], parts[2])
    if name not in WEIGHTS:
        raise ClipstudioError(
            f"unknown weights '{name}'; choose one of: {', '.join(sorted(WEIGHTS))}, or open_clip:ARCH:TAG"
        )
    return WEIGHTS[name]


def cache_dir() -> Path:
    """The download cache: ``$CLIPSTUDIO_HOME/weights``, default ``~/.cache/clipstudio/weights``."""
    home = os.environ.get("CLIPSTUDIO_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "clipstudio")
    return Path(home) / "weights"


def weights_folder(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The user's weights folder: ``weights_dir`` if given, else ``$CLIPSTUDIO_WEIGHTS`` if set."""
    value = weights_dir or os.environ.get("CLIPSTUDIO_WEIGHTS")
    return Path(value).expanduser() if value else None


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``$CLIPSTUDIO_OFFLINE`` or Hugging Face's ``$HF_HUB_OFFLINE`` is set
    to a true value."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("CLIPSTUDIO_OFFLINE", "HF_HUB_OFFLINE"))


def download_timeout() -> float:
    """Seconds a whole download may take: ``$CLIPSTUDIO_DOWNLOAD_TIMEOUT``, default one hour."""
    value = os.environ.get("CLIPSTUDIO_DOWNLOAD_TIMEOUT", "")
    try:
        seconds = float(value) if value else _TOTAL_TIMEOUT_S
    except ValueError:
        raise ClipstudioError(f"CLIPSTUDIO_DOWNLOAD_TIMEOUT must be a number of seconds, got '{value}'") from None
    if not seconds > 0:
        raise ClipstudioError(f"CLIPSTUDIO_DOWNLOAD_TIMEOUT must be > 0, got '{value}'")
    return seconds


def find_local(entry: WeightsEntry, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The file of ``entry`` in the weights folder or the cache, or None; never downloads."""
    folder = weights_folder(weights_dir)
    if folder is not None:
        for candidate in (folder / entry.filename, folder / entry.group / entry.filename):
            if candidate.is_file():
                return candidate
    cached = cache_dir() / entry.filename
    return cached if cached.is_file() else None


def fetch(name: str, weights_dir: str | os.PathLike | None = None, offline: bool | None = None,
          progress: bool | None = None) -> Path:
    """Path to the weights file ``name``: from the weights folder, the cache, the ecosystem's cache or
    download, or a mirror (see module doc). ``progress``: a progress bar (None: when stderr is a terminal)."""
    entry = get_entry(name)
    local = find_local(entry, weights_dir)
    if local is not None:
        return local
    offline = is_offline(offline)
    where = weights_folder(weights_dir) or cache_dir()
    if entry.hub:
        return _fetch_hub(entry, offline, where)
    if entry.open_clip_url:
        return _fetch_open_clip_url(entry, offline, where)
    if offline:
        raise ClipstudioError(
            f"weights '{name}' not found offline: put {entry.filename} in {where} (download: {entry.urls[0]})"
        )
    return fetch_url_list(entry.urls, cache_dir() / entry.filename, entry.sha256, what=f"weights '{name}'",
                          progress=progress)


def hub_file(repo_id: str, filename: str, offline: bool | None = None) -> Path:
    """One file of a Hugging Face repo (an open_clip hub model's config or weights) through
    ``hf_hub_download`` and its cache, a ``.safetensors`` twin preferred; offline, a missing file is one line."""
    group = repo_id.replace("/", "--")  # the files of one repo stay together: open_clip reads them as a folder
    entry = WeightsEntry(f"hf-hub:{repo_id}", filename, [f"https://huggingface.co/{repo_id}/resolve/main/{filename}"],
                         None, f"see the model card at https://huggingface.co/{repo_id}", group=group,
                         hub=f"{repo_id}/{filename}")
    folders = [f / group for f in (weights_folder(), cache_dir()) if f is not None]
    for candidate in (folder / filename for folder in folders):
        if candidate.is_file():
            return candidate
    return _fetch_hub(entry, is_offline(offline), folders[0])


def _fetch_hub(entry: WeightsEntry, offline: bool, where: Path) -> Path:
    """A file on the Hugging Face hub, through ``hf_hub_download`` (its cache, offline mode, progress bars).

    As open_clip does, a ``.safetensors`` twin of a ``.bin``/``.pth`` file is preferred where the repo has one."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ClipstudioError("files on the Hugging Face hub need the 'huggingface_hub' package: "
                              "pip install huggingface_hub") from None
    repo_id, _, filename = entry.hub.rpartition("/")
    stem, ext = os.path.splitext(filename)
    candidates = ([f"{stem}.safetensors"] if ext in (".bin", ".pth") else []) + [filename]
    if filename == "open_clip_pytorch_model.bin":
        candidates[0] = "open_clip_model.safetensors"  # open_clip's name for the safetensors twin
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    reason = ""
    for candidate in candidates:
        try:
            return Path(hf_hub_download(repo_id, candidate, local_files_only=offline))
        except Exception as err:  # network, auth and disk errors have many types; the last one is told
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
            missing = isinstance(err, LocalEntryNotFoundError) if offline else (
                isinstance(err, EntryNotFoundError) and not isinstance(err, LocalEntryNotFoundError))
            if not missing:
                break  # not a missing file (which the next candidate may fix): the hub is unreachable or refuses
    if offline:
        raise ClipstudioError(
            f"weights '{entry.name}' not found offline: put {entry.filename} in {where}, or {filename} of the "
            f"Hugging Face repo {repo_id} in the Hugging Face cache (hf download {repo_id} {filename})")
    raise ClipstudioError(f"could not download {filename} from the Hugging Face repo {repo_id} ({reason}); "
                          f"put {entry.filename} in {where}")


def _fetch_open_clip_url(entry: WeightsEntry, offline: bool, where: Path) -> Path:
    """An open_clip file with a URL of its own (OpenAI's releases), through open_clip's own download: its
    cache ``~/.cache/clip`` and its sha256 check."""
    import open_clip.pretrained as oc

    expected = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(entry.open_clip_url)
    if offline:
        if expected.is_file() and (entry.sha256 is None or _file_sha256(expected) == entry.sha256):
            return expected
        raise ClipstudioError(f"weights '{entry.name}' not found offline: put {entry.filename} in {where}, or "
                              f"{expected.name} in {expected.parent} (download: {entry.open_clip_url})")
    try:
        return Path(oc.download_pretrained_from_url(entry.open_clip_url))
    except Exception as err:  # urllib, sha256 and disk errors alike: one line naming the file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ClipstudioError(f"could not download {entry.open_clip_url} ({reason}); put {entry.filename} in {where}"
                              ) from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_url_list(urls: list[str], dest: Path, sha256: str | None = None, what: str = "file",
                   progress: bool | None = None, timeout: float | None = None) -> Path:
    """Download ``dest`` from the first of ``urls`` that answers; check ``sha256`` when given.

    A failing mirror (HTTP error, unreachable, cut off, too slow) moves on to the next; a file whose sha256
    differs is deleted and raises at once (a mirror serving wrong bytes is not something to paper over).
    ``timeout`` bounds the whole download, all mirrors together (default :func:`download_timeout`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    timeout = download_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    failures = []
    for url in urls:
        try:
            return _download(url, dest, sha256, progress, deadline, timeout)
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
            reason = getattr(err, "reason", None) or err
            failures.append(f"{url}: {reason}")
            log.info("mirror failed: %s (%s)", url, reason)
    raise ClipstudioError(
        f"could not download {what} from any mirror ({'; '.join(failures) or 'no mirrors'}); "
        f"put {dest.name} in {dest.parent} or a --weights-dir folder"
    )


def part_path(dest: Path, url: str) -> Path:
    """Where a download of ``dest`` from ``url`` grows: a hidden ``.part`` file beside it, one per mirror (so a
    resume never splices two servers' bytes), never under the file's own name."""
    tag = hashlib.sha256(url.encode()).hexdigest()[:8]
    return dest.with_name(f".{dest.name}.{tag}.part")


def _download(url: str, dest: Path, sha256: str | None, progress: bool | None, deadline: float,
              timeout: float) -> Path:
    """One mirror: grow the ``.part`` file (resuming what an earlier try left), verify, move into place."""
    log.info("downloading %s", url)
    part = part_path(dest, url)
    try:
        expected = _stream(url, part, dest.name, progress, deadline, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the part is not a prefix the server knows; start again from nothing
            raise
        part.unlink(missing_ok=True)
        expected = _stream(url, part, dest.name, progress, deadline, timeout)
    received = part.stat().st_size
    # http.client ends a cut-off body quietly: the size, else the sha256, is the only sign of a truncated file.
    if expected is not None and received != expected:
        raise OSError(f"connection closed after {received} of {expected} bytes (kept as {part.name} to resume)")
    if expected is None and sha256 is None:
        raise OSError("the server sent no Content-Length and no sha256 is known, so a cut-off download cannot "
                      f"be told from a whole one (kept as {part.name})")
    if sha256 is not None:
        got = _file_sha256(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            raise ClipstudioError(
                f"sha256 mismatch for {dest.name} from {url}: expected {sha256}, got {got}; the file was deleted")
    os.replace(part, dest)
    for stale in dest.parent.glob(f".{dest.name}.*.part"):  # other mirrors' partial tries: no longer needed
        stale.unlink(missing_ok=True)
    return dest


def _stream(url: str, part: Path, label: str, progress: bool | None, deadline: float, timeout: float
            ) -> int | None:
    """Append the rest of ``url`` to ``part`` (an HTTP Range request when part of it is there); returns the
    full size the server announced, or None. Raises TimeoutError past ``deadline``."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"the download took longer than {timeout:g} s (CLIPSTUDIO_DOWNLOAD_TIMEOUT)")
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=min(_READ_TIMEOUT_S, remaining)) as response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored the Range header and sends the whole file
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink(missing_ok=True)  # resumed somewhere else than asked: splicing would corrupt the file
            raise OSError(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None and length.isdigit() else None
        read = getattr(response, "read1", None) or response.read  # read1: whatever has arrived, so the clock is seen
        with open(part, "ab" if offset else "wb") as out, tqdm(
                total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=None if progress is None else not progress, file=sys.stderr) as bar:
            while chunk := read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the download took longer than {timeout:g} s (CLIPSTUDIO_DOWNLOAD_TIMEOUT; "
                                       f"kept as {part.name} to resume)")
    return expected


def fetch_group(group: str, parts: tuple[str, ...], weights_dir: str | os.PathLike | None = None,
                offline: bool | None = None) -> dict[str, Path]:
    """Fetch the files ``GROUP.PART`` for each part, e.g. ``fetch_group("taef2", ("encoder", "decoder"))``."""
    return {part: fetch(f"{group}.{part}", weights_dir, offline) for part in parts}


__all__ = [
    "VQGAN_MODELS", "WEIGHTS", "WeightsEntry", "cache_dir", "download_timeout", "fetch", "fetch_group",
    "fetch_url_list", "find_local", "get_entry", "is_offline", "list_weights", "open_clip_entry", "part_path",
    "weights_folder",
]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (the one file-hash helper of the package)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
