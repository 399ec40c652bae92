"""Tests for core.base.fileio.download against a real HTTP server on 127.0.0.1, started here.

The server speaks HTTP/1.1 with Range support (206 + Content-Range) and can misbehave on purpose: cut a
transfer at half, answer 404, or stall mid-file. Also Oxford 17 end to end: a small fake ``17flowers.tgz``
and ``datasplits.mat`` in the official layout, fetched through the real download code, extracted and loaded.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image

from core.backbones import registry as backbones
from core.base.errors import MissingFileError
from core.base.fileio import download
from core.base.progress import ProgressEvent
from core.data.datasets import OXFORD17_CLASSES, OXFORD17_IMAGES_PER_CLASS, prepare_oxford17

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()


class _Server:
    """Files by URL path; ``cut`` paths send half their bytes once, ``stall`` paths stop sending mid-file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.stall: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.release = threading.Event()  # ends stalls when the test is over
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_HEAD(self):  # huggingface_hub asks for a file's metadata first
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self._hub_headers(data)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def _hub_headers(self, data: bytes) -> None:
                # What the Hugging Face hub adds to a file: the commit it belongs to and the file's hash as ETag.
                self.send_header("X-Repo-Commit", hashlib.sha1(self.path.encode()).hexdigest())
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self._hub_headers(data)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in server.stall:
                    self.wfile.write(body[:1000])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                if self.path in server.cut:
                    server.cut.discard(self.path)  # only the first transfer dies
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_full_download_reports_bytes_and_rate(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD
    events: list[ProgressEvent] = []

    path = download(
        server.url("/w.bin"),
        tmp_path / "w.bin",
        what="w.bin",
        manual_hint="hint",
        progress=events.append,
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8],
    )

    assert path.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == ["w.bin"]  # the partial file was renamed, not copied
    downloads = [e for e in events if e.stage == "download"]
    assert downloads and downloads[-1].done == downloads[-1].total == len(PAYLOAD)
    assert all(a.done <= b.done for a, b in zip(downloads, downloads[1:]))
    assert downloads[-1].rate > 0 and "MB" in downloads[-1].message
    assert server.requests == [("/w.bin", None)]


def test_a_transfer_cut_at_half_resumes_with_a_range_request_to_the_identical_file(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD
    server.cut.add("/w.bin")
    target = tmp_path / "w.bin"

    with pytest.raises(MissingFileError, match="kept in") as caught:
        download(server.url("/w.bin"), target, what="w.bin", manual_hint="hint", retries=0)
    assert not target.exists()  # half a file is never where the finished one goes
    partial = tmp_path / ".w.bin.part"
    assert partial.stat().st_size == len(PAYLOAD) // 2 and str(partial) in str(caught.value)

    download(server.url("/w.bin"), target, what="w.bin", manual_hint="hint", md5=hashlib.md5(PAYLOAD).hexdigest())

    assert target.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["w.bin"]
    assert server.requests[-1] == ("/w.bin", f"bytes={len(PAYLOAD) // 2}-")


def test_retries_resume_within_one_call(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD
    server.cut.add("/w.bin")

    download(server.url("/w.bin"), tmp_path / "w.bin", what="w.bin", manual_hint="hint", retries=2, backoff_s=0.01)

    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_a_partial_file_the_server_cannot_continue_starts_again(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD
    (tmp_path / ".w.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))  # longer than the file: 416

    download(server.url("/w.bin"), tmp_path / "w.bin", what="w.bin", manual_hint="hint")

    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_404_names_the_url_and_leaves_no_file(server, tmp_path):
    target = tmp_path / "w.bin"
    with pytest.raises(MissingFileError) as caught:
        download(server.url("/nope.bin"), target, what="w.bin", manual_hint="Put it there by hand.")
    message = str(caught.value)
    assert "404" in message and server.url("/nope.bin") in message and "Put it there by hand." in message
    assert _leftovers(tmp_path) == []
    assert len(server.requests) == 1  # a 404 is not retried


def test_checksum_mismatch_is_reported_and_nothing_is_kept(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD
    wrong = hashlib.md5(b"another file").hexdigest()
    with pytest.raises(MissingFileError) as caught:
        download(server.url("/w.bin"), tmp_path / "w.bin", md5=wrong, what="w.bin", manual_hint="hint")
    message = str(caught.value)
    assert "MD5" in message and wrong in message and "corrupt" in message
    assert hashlib.md5(PAYLOAD).hexdigest() in message
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("retries", [0, 1])
def test_a_stalling_server_times_out_within_the_limit(server, tmp_path, retries):
    server.files["/w.bin"] = PAYLOAD
    server.stall.add("/w.bin")
    timeout_s, backoff_s = 0.5, 0.1

    started = time.monotonic()
    with pytest.raises(MissingFileError, match="timed out|TimeoutError|timeout"):
        download(
            server.url("/w.bin"),
            tmp_path / "w.bin",
            what="w.bin",
            manual_hint="hint",
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
        )
    elapsed = time.monotonic() - started

    attempts = retries + 1
    assert len(server.requests) == attempts
    # Each attempt waits out one stall limit (the first 1,000 bytes arrive, then nothing); plus the backoff.
    assert attempts * timeout_s <= elapsed < attempts * timeout_s + retries * backoff_s + 2.0
    assert not (tmp_path / "w.bin").exists()


def test_backbone_weights_download_through_the_resolver(server, workspace, monkeypatch):
    """A built-in backbone's weights come from its URL through the same download code, then are reused."""
    server.files["/dinov2_vits14_pretrain.pth"] = PAYLOAD
    entry = backbones._REGISTRY["dinov2_vits14"]
    config = replace(entry.config, weights_url=server.url("/dinov2_vits14_pretrain.pth"))
    monkeypatch.setitem(backbones._REGISTRY, "dinov2_vits14", replace(entry, config=config))
    monkeypatch.setenv("TORCH_HOME", str(workspace.root / "torch-home"))  # an empty torch hub cache
    events: list[ProgressEvent] = []

    source = backbones.resolve_weights("dinov2_vits14", workspace=workspace, progress=events.append)

    target = workspace.weights_dir / "dinov2_vits14_pretrain.pth"
    assert (source.kind, source.path) == ("download", target) and target.read_bytes() == PAYLOAD
    assert any(e.stage == "download" and e.done == len(PAYLOAD) for e in events)
    again = backbones.resolve_weights("dinov2_vits14", workspace=workspace)
    assert (again.kind, again.tag) == ("file", source.tag) and len(server.requests) == 1


def test_a_hash_in_the_file_name_is_checked(server, workspace, monkeypatch):
    """torchvision names carry their SHA-256 prefix (resnet50-0676ba61.pth); other bytes are refused."""
    server.files["/resnet50-0676ba61.pth"] = PAYLOAD
    entry = backbones._REGISTRY["resnet50"]
    config = replace(entry.config, weights_url=server.url("/resnet50-0676ba61.pth"))
    monkeypatch.setitem(backbones._REGISTRY, "resnet50", replace(entry, config=config))
    monkeypatch.setenv("TORCH_HOME", str(workspace.root / "torch-home"))

    with pytest.raises(MissingFileError, match="SHA256 .* expected 0676ba61"):
        backbones.resolve_weights("resnet50", workspace=workspace)
    assert _leftovers(workspace.weights_dir) == []


def test_timm_weights_download_through_huggingface_hub_into_its_cache(server, workspace, monkeypatch, tmp_path):
    """A timm tag's weights come through huggingface_hub (HF_ENDPOINT: this server) into the HF cache, with our
    progress events, and are found there the next time without a request."""
    server.files["/timm/resnet18.a1_in1k/resolve/main/model.safetensors"] = PAYLOAD
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    events: list[ProgressEvent] = []

    source = backbones.resolve_weights("timm:resnet18.a1_in1k", workspace=workspace, progress=events.append)

    assert source.kind == "download" and source.path.read_bytes() == PAYLOAD
    assert (tmp_path / "hf-home" / "hub") in source.path.parents and list(workspace.weights_dir.iterdir()) == []
    downloads = [e for e in events if e.stage == "download"]
    assert downloads and downloads[-1].done == downloads[-1].total == len(PAYLOAD) and downloads[-1].rate > 0
    fetched = len(server.requests)
    again = backbones.resolve_weights("timm:resnet18.a1_in1k", workspace=workspace)
    assert (again.kind, again.tag) == ("hf-cache", source.tag) and len(server.requests) == fetched


# ------------------------------------------------------------------------------------------------ Oxford 17


def _fake_oxford17() -> tuple[bytes, bytes, dict[str, np.ndarray]]:
    """17flowers.tgz (jpg/image_0001.jpg ... image_1360.jpg, tiny photos) and datasplits.mat (1-based ids)."""
    from scipy.io import savemat

    n = len(OXFORD17_CLASSES) * OXFORD17_IMAGES_PER_CLASS
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for i in range(1, n + 1):
            photo = io.BytesIO()
            Image.new("RGB", (8, 8), color=(i % 256, (i // 256) * 40, 100)).save(photo, format="JPEG")
            info = tarfile.TarInfo(f"jpg/image_{i:04d}.jpg")
            info.size = photo.tell()
            photo.seek(0)
            tar.addfile(info, photo)
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("1", "2", "3"):
        order = rng.permutation(n) + 1
        splits |= {f"trn{split}": order[:680], f"val{split}": order[680:1020], f"tst{split}": order[1020:]}
    mat = io.BytesIO()
    savemat(mat, {k: v.astype(np.float64) for k, v in splits.items()})  # MATLAB stores ids as doubles
    return archive.getvalue(), mat.getvalue(), splits


def test_oxford17_is_fetched_extracted_and_loaded_through_the_real_download_code(server, workspace):
    archive, mat, splits = _fake_oxford17()
    server.files["/17/17flowers.tgz"] = archive
    server.files["/17/datasplits.mat"] = mat
    files = (
        ("17flowers.tgz", server.url("/17/17flowers.tgz"), hashlib.md5(archive).hexdigest()),
        ("datasplits.mat", server.url("/17/datasplits.mat"), hashlib.md5(mat).hexdigest()),
    )
    events: list[ProgressEvent] = []

    dataset = prepare_oxford17(workspace, files=files, progress=events.append)

    assert [path for path, _ in server.requests] == ["/17/17flowers.tgz", "/17/datasplits.mat"]
    assert {e.stage for e in events} >= {"download", "extract"}
    folder = workspace.data_root / "oxford17"
    assert (folder / "17flowers.tgz").read_bytes() == archive and (folder / "datasplits.mat").read_bytes() == mat
    assert len(dataset.image_paths) == 1360 and dataset.image_paths[0].name == "image_0001.jpg"
    np.testing.assert_array_equal(dataset.labels, np.repeat(np.arange(17), 80))
    for split in ("1", "2", "3"):
        np.testing.assert_array_equal(dataset.splits[split]["test"], np.sort(splits[f"tst{split}"] - 1))
        np.testing.assert_array_equal(dataset.splits[split]["train"], np.sort(splits[f"trn{split}"] - 1))
    assert Image.open(dataset.image_paths[5]).size == (8, 8)

    # Prepared again: nothing is fetched, the files are checked against the given MD5s.
    prepare_oxford17(workspace, files=files)
    assert len(server.requests) == 2


def test_oxford17_offline_names_both_files_and_the_folder(server, workspace):
    files = tuple((name, server.url(f"/gone/{name}"), "0" * 32) for name in ("17flowers.tgz", "datasplits.mat"))
    with pytest.raises(MissingFileError) as caught:
        prepare_oxford17(workspace, files=files)
    message = str(caught.value)
    assert "404" in message and "datasplits.mat" in message and str(workspace.data_root / "oxford17") in message
