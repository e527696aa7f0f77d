"""``mf2m models fetch``: real downloads from a local HTTP server on 127.0.0.1 (good hash, wrong hash,
a connection cut mid-file then resumed, 404, offline), safe unpacking, ``--from``, hashes in ``mf2m models``."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.models import catalog, hashes
from benchmark.models.catalog import Artifact, Member
from benchmark.models.fetch import FetchError, fetch, safe_unpack

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB: several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A tiny HTTP server: files by path, Range support, optional cut after N bytes, request log."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection is closed (once)
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.cut_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture()
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def single(url: str, sha: str | None, name: str = "toy") -> Artifact:
    return Artifact(name=name, filename="toy.bin", url=url, members=(Member("toy.bin", sha),), models=(name,))


def test_good_hash(server, tmp_path):
    server.files["/toy.bin"] = PAYLOAD
    res = fetch(single(server.url + "/toy.bin", PAYLOAD_SHA), tmp_path, progress=False)
    assert res.status == "downloaded" and res.pinned
    assert (tmp_path / "toy.bin").read_bytes() == PAYLOAD
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.download*"))
    assert hashes.verified(tmp_path, "toy.bin") == (PAYLOAD_SHA, "pinned")
    # a second fetch finds it present and verified, without a request
    n = len(server.requests)
    assert fetch(single(server.url + "/toy.bin", PAYLOAD_SHA), tmp_path, progress=False).status == "present"
    assert len(server.requests) == n


def test_wrong_hash_is_refused_and_removed(server, tmp_path):
    server.files["/toy.bin"] = PAYLOAD
    with pytest.raises(FetchError, match="SHA-256 mismatch.*removed"):
        fetch(single(server.url + "/toy.bin", "0" * 64), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != hashes.STORE] == []
    assert hashes.recorded(tmp_path, "toy.bin") is None


def test_unpublished_hash_is_recorded_with_a_warning_then_enforced(server, tmp_path, caplog):
    server.files["/toy.bin"] = PAYLOAD
    with caplog.at_level("WARNING"):
        res = fetch(single(server.url + "/toy.bin", None), tmp_path, progress=False)
    assert not res.pinned and "no published SHA-256" in caplog.text and PAYLOAD_SHA in caplog.text
    assert hashes.recorded(tmp_path, "toy.bin")["sha256"] == PAYLOAD_SHA
    assert hashes.verified(tmp_path, "toy.bin") == (PAYLOAD_SHA, "recorded")
    # the server now serves something else: the re-download is refused, the recorded file kept
    server.files["/toy.bin"] = PAYLOAD[::-1]
    with pytest.raises(FetchError, match="differs from the .* recorded"):
        fetch(single(server.url + "/toy.bin", None), tmp_path, progress=False, force=True)
    assert hashes.recorded(tmp_path, "toy.bin")["sha256"] == PAYLOAD_SHA


def test_connection_cut_mid_file_is_resumed(server, tmp_path):
    server.files["/toy.bin"] = PAYLOAD
    server.cut_after["/toy.bin"] = 100_000
    res = fetch(single(server.url + "/toy.bin", PAYLOAD_SHA), tmp_path, progress=False, backoff=0)
    assert res.status == "downloaded" and (tmp_path / "toy.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/toy.bin", None), ("/toy.bin", "bytes=100000-")]


def test_partial_download_kept_and_resumed_by_a_second_run(server, tmp_path):
    server.files["/toy.bin"] = PAYLOAD
    server.cut_after["/toy.bin"] = 70_000
    with pytest.raises(FetchError, match="kept: run the command again to resume"):
        fetch(single(server.url + "/toy.bin", PAYLOAD_SHA), tmp_path, progress=False, retries=0)
    part = tmp_path / "toy.bin.download.part"
    assert part.stat().st_size == 70_000
    fetch(single(server.url + "/toy.bin", PAYLOAD_SHA), tmp_path, progress=False, retries=0)
    assert (tmp_path / "toy.bin").read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/toy.bin", "bytes=70000-")


def test_404(server, tmp_path):
    with pytest.raises(FetchError, match=r"/missing.bin: HTTP 404"):
        fetch(single(server.url + "/missing.bin", PAYLOAD_SHA), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == []
    assert len(server.requests) == 1


def test_offline_fails_at_once_naming_url_and_folder(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/buffalo_l.zip"
    with pytest.raises(FetchError) as err:
        fetch(single(url, PAYLOAD_SHA), tmp_path, progress=False, backoff=5)
    msg = str(err.value)
    assert url in msg and str(tmp_path) in msg and "--from" in msg


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_pack_is_unpacked_into_its_folder_with_member_hashes(server, tmp_path):
    model = b"onnx-bytes" * 1000
    data = _zip({"pack/model.onnx": model, "pack/other.onnx": b"x"})
    server.files["/pack.zip"] = data
    art = Artifact(
        name="pack",
        filename="pack.zip",
        url=server.url + "/pack.zip",
        sha256=hashlib.sha256(data).hexdigest(),
        folder="pack",
        members=(Member("pack/model.onnx", hashlib.sha256(model).hexdigest()),),
        models=("packmodel",),
    )
    res = fetch(art, tmp_path, progress=False)
    assert res.pinned and set(res.files) == {"pack/model.onnx", "pack/other.onnx"}
    assert (tmp_path / "pack" / "model.onnx").read_bytes() == model  # lone top folder stripped
    assert not (tmp_path / "pack.zip").exists()
    assert hashes.verified(tmp_path, "pack/other.onnx")[1] == "pinned"  # through the archive's hash
    # a changed file is noticed
    (tmp_path / "pack" / "model.onnx").write_bytes(b"tampered")
    assert hashes.verified(tmp_path, "pack/model.onnx")[1] == "changed"


@pytest.mark.parametrize("evil", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
def test_unsafe_archive_refused_before_writing(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"ok.txt": b"fine", evil: b"bad"}))
    target = tmp_path / "out" / "pack"
    with pytest.raises(FetchError, match="refusing member"):
        safe_unpack(archive, target)
    assert (
        not target.exists()
        and not (tmp_path / "escape.txt").exists()
        and not (tmp_path / "out" / "escape.txt").exists()
    )


def test_symlink_member_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("pack/link")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(FetchError, match="link member"):
        safe_unpack(archive, tmp_path / "pack")


def test_from_local_copy_and_mirror(server, tmp_path):
    copy = tmp_path / "copy" / "toy.bin"
    copy.parent.mkdir()
    copy.write_bytes(PAYLOAD)
    art = single(None, PAYLOAD_SHA)  # no public URL: only --from works
    with pytest.raises(FetchError, match="no public download URL"):
        fetch(art, tmp_path / "m1", progress=False)
    assert fetch(art, tmp_path / "m1", source=str(copy), progress=False).pinned
    assert fetch(art, tmp_path / "m2", source=str(copy.parent), progress=False).status == "downloaded"
    server.files["/mirror/toy.bin"] = PAYLOAD
    assert fetch(art, tmp_path / "m3", source=server.url + "/mirror/", progress=False).pinned
    copy.write_bytes(b"not it")
    with pytest.raises(FetchError, match="SHA-256 mismatch"):
        fetch(art, tmp_path / "m4", source=str(copy), progress=False)
    assert not (tmp_path / "m4" / "toy.bin").exists()


def test_catalogue_names_and_manual_entries():
    for name in (
        "w600k_r50",
        "glintr100",
        "2d106",
        "scrfd",
        "buffalo_l",
        "antelopev2",
        "retinanet-facemask",
        "iresnet50",
    ):
        assert name in catalog.fetchable_names()
    assert catalog.resolve("w600k_r50").name == "buffalo_l" and catalog.resolve("glintr100").name == "antelopev2"
    for art in catalog.CATALOG.values():
        assert art.url or "{dir}" in art.manual, art.name
        for h in [art.sha256] + [m.sha256 for m in art.members]:
            assert h is None or (len(h) == 64 and int(h, 16) >= 0)
    # the paths the packs unpack to are the ones the registry looks for
    from benchmark.models import registry

    for model in ("w600k_r50", "glintr100", "2d106", "scrfd"):
        spec, _ = registry.get_spec(model)
        art = catalog.resolve(model)
        assert any(m.path in spec.files for m in art.members), model
    with pytest.raises(ValueError, match="Fetchable names"):
        catalog.resolve("nope")


def test_cli_fetch_and_models_show_hashes(server, tmp_path, monkeypatch, capsys):
    """The real command: ``--from`` a mirror folder, the manual-download message, then ``mf2m models``."""
    data = b"fake-resnet" * 100
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "csv_retinanet50_140epochs.pt").write_bytes(data)
    models = tmp_path / "models"
    monkeypatch.setenv("MF2M_MODELS_DIR", str(models))
    assert main(["models", "fetch", "retinanet-facemask"]) == 1
    err = capsys.readouterr().err
    assert "pan.baidu.com" in err and str(models) in err and "--from" in err
    assert main(["models", "fetch", "retinanet-facemask", "--from", str(tmp_path / "mirror"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(data).hexdigest() in out and "hash recorded, not verified" in out
    assert main(["models", "--kind", "mask-detector"]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(data).hexdigest() in out and "recorded on first download" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["retinanet-facemask"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "mf2m models fetch w600k_r50" in rows["w600k_r50"]["reason"]


def test_cli_needs_a_models_folder(monkeypatch, capsys):
    monkeypatch.delenv("MF2M_MODELS_DIR", raising=False)
    assert main(["models", "fetch", "w600k_r50"]) == 1
    assert "MF2M_MODELS_DIR" in capsys.readouterr().err


def test_fetch_help_explains_every_option():
    import re
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "models", "fetch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    for opt in ("--all", "--from", "--models-dir", "--force", "--retries", "--timeout", "--no-progress"):
        assert re.search(rf"^\s+{opt}\b.*\S", out.stdout, re.M), opt
    assert "w600k_r50" in out.stdout and "SHA-256" in out.stdout
