"""Download model files into the models folder: progress bar, resume, SHA-256 check, safe unpacking.

``fetch(name, models_dir)`` gets one catalogue artifact (``benchmark.models.catalog``):

* streams it to ``<file>.part`` with a progress bar; a connection cut mid-file is resumed with an HTTP
  ``Range`` request (automatically, ``retries`` times; a later run resumes the kept ``.part`` too);
* checks its SHA-256 against the published one (a mismatch removes the file and fails), or, where none
  is published, against the hash recorded on an earlier download, else records it and warns;
* unpacks zip packs refusing absolute paths, ``..`` components and links, and checks each member;
* fails at once, naming the URL and the folder to put the file in, when the source cannot be reached.

Hashes of fetched files live in ``<models dir>/mf2m-hashes.json`` (see :mod:`benchmark.models.hashes`).
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..manifest import sha256_file
from . import hashes
from .catalog import Artifact, resolve

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "mf2m-models-fetch/0.1"


class FetchError(RuntimeError):
    """A download failed (HTTP error, bad hash, unsafe archive, unreachable source)."""


@dataclass
class FetchResult:
    """What ``fetch`` did for one artifact."""

    name: str
    status: str  # "downloaded", "present"
    files: dict[str, str]  # relative path → sha256
    pinned: bool  # hash checked against a published one
    source: str = ""


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def source_url(art: Artifact, source: str | None, models_dir: Path | None = None) -> str:
    """The URL (or local path) to fetch ``art`` from: ``source`` (a file, a folder, or a base URL ending
    in ``/``) or the artifact's public URL. Raises ``FetchError`` with the manual steps when there is none."""
    if source is None:
        if art.url is None:
            raise FetchError(
                f"{art.name}: no public download URL. {art.manual.format(dir=models_dir or '$MF2M_MODELS_DIR')}"
            )
        return art.url
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https", "file"):
        return source + art.filename if source.endswith("/") else source
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / art.filename
    if not path.is_file():
        raise FetchError(f"{art.name}: --from {source}: no such file ({path})")
    return str(path.resolve())


def _is_local(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme not in ("http", "https")


def _local_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    return Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)


# --------------------------------------------------------------------------------------------------
# Download with resume
# --------------------------------------------------------------------------------------------------


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not enabled,
        leave=True,
    )


def _unreachable(url: str, reason: object, dest: Path) -> FetchError:
    return FetchError(
        f"cannot reach {url} ({reason}). If this machine is offline, download that file "
        f"elsewhere and put it at {dest} (folder {dest.parent}), or run the same command with "
        f"--from /path/to/{dest.name}"
    )


def _copy_local(src: Path, part: Path, dest: Path, progress: bool) -> None:
    """Copy a local file to ``dest`` through ``part``."""
    if not src.is_file():
        raise FetchError(f"{src}: no such file")
    with open(src, "rb") as fin, open(part, "wb") as fout, _progress(src.stat().st_size, 0, dest.name, progress) as bar:
        for block in iter(lambda: fin.read(CHUNK), b""):
            fout.write(block)
            bar.update(len(block))
    os.replace(part, dest)


def _read_response(resp, url: str, part: Path, offset: int, label: str, progress: bool) -> bool:
    """Append (HTTP 206 at ``offset``) or write the body of ``resp`` to ``part``; whether it arrived whole."""
    if offset and resp.status == 206:
        start = _content_range_start(resp.headers.get("Content-Range"))
        if start != offset:
            raise FetchError(f"{url}: server resumed at byte {start}, asked for {offset}")
        mode = "ab"
    else:
        offset, mode = 0, "wb"  # no range support: start again
    length = resp.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    got = 0
    try:
        with open(part, mode) as fh, _progress(total, offset, label, progress) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                fh.write(block)
                got += len(block)
                bar.update(len(block))
        return length is None or got == int(length)
    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
        log.debug("read failed: %s", exc)
        return False


def download(
    url: str, dest: Path, *, progress: bool = True, retries: int = 3, timeout: float = 30.0, backoff: float = 1.0
) -> Path:
    """Download ``url`` (http(s), file:// or a local path) to ``dest`` via ``dest.part``, resuming a
    partial file with HTTP Range requests. Returns ``dest``. No hash check here (see ``fetch``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if _is_local(url):
        _copy_local(_local_path(url), part, dest, progress)
        return dest
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the kept .part already holds the whole file
                break
            if exc.code >= 500 and attempt < retries:
                attempt += 1
                time.sleep(backoff * attempt)
                continue
            raise FetchError(
                f"{url}: HTTP {exc.code} {exc.reason}. Check the URL (or --from) and try again; "
                f"or put the file at {dest} yourself"
            ) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            if offset == 0 and attempt == 0:  # never connected: offline or wrong host, fail at once
                raise _unreachable(url, getattr(exc, "reason", exc), dest) from None
            if attempt >= retries:
                raise _unreachable(url, getattr(exc, "reason", exc), dest) from None
            attempt += 1
            time.sleep(backoff * attempt)
            continue
        with resp:
            complete = _read_response(resp, url, part, offset, dest.name, progress)
        if complete:
            break
        size = part.stat().st_size if part.exists() else 0
        if attempt >= retries:
            raise FetchError(
                f"{url}: connection cut at {size} bytes after {retries} resumed attempts. The "
                f"partial file {part} is kept: run the command again to resume"
            )
        attempt += 1
        log.warning("%s: connection cut at %d bytes; resuming (attempt %d of %d)", dest.name, size, attempt, retries)
        time.sleep(backoff * attempt)
    os.replace(part, dest)
    return dest


def _content_range_start(value: str | None) -> int | None:
    """Start byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Safe unpacking
# --------------------------------------------------------------------------------------------------


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The member's relative path, or None for a directory; ``FetchError`` when it is unsafe."""
    name = info.filename
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise FetchError(f"{archive.name}: refusing link member {name!r}")
    if (
        name.startswith(("/", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or any(p == ".." for p in path.parts)
    ):
        raise FetchError(f"{archive.name}: refusing member {name!r}: its path leaves the target folder")
    return None if info.is_dir() else path


def safe_unpack(archive: Path, target: Path) -> list[Path]:
    """Unpack a zip into ``target`` (a lone top-level folder is stripped); the whole archive is refused
    before anything is written when any member is absolute, has ``..``, or is a link."""
    with zipfile.ZipFile(archive) as zf:
        infos = [(info, _member_path(info, archive)) for info in zf.infolist()]
        files = [(i, p) for i, p in infos if p is not None]
        tops = {p.parts[0] for _, p in files}
        strip = len(tops) == 1 and all(len(p.parts) > 1 for _, p in files)
        tmp = target.parent / f".{target.name}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        written = []
        try:
            for info, path in files:
                rel = PurePosixPath(*path.parts[1:]) if strip else path
                out = tmp.joinpath(*rel.parts)
                if tmp.resolve() not in out.resolve().parents:
                    raise FetchError(f"{archive.name}: refusing member {info.filename!r}")
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(out, "wb") as fout:
                    shutil.copyfileobj(fin, fout, CHUNK)
                written.append(rel)
            target.mkdir(parents=True, exist_ok=True)
            for rel in written:
                dst = target.joinpath(*rel.parts)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp.joinpath(*rel.parts), dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [target.joinpath(*rel.parts) for rel in written]


# --------------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------------


def present(art: Artifact, models_dir: Path) -> bool:
    """True when every file the artifact provides is in ``models_dir`` and matches its known hash."""
    for m in art.members:
        path = models_dir / m.path
        if not path.is_file():
            return False
        digest, state = hashes.verified(models_dir, m.path)
        if state == "changed" or (m.sha256 and digest != m.sha256):
            return False
    return bool(art.members)


def _check(models_dir: Path, rel: str, digest: str, expected: str | None, source: str, *, pinned_by: str = "") -> bool:
    """Compare ``digest`` with the published or recorded hash; record it. Returns True when pinned."""
    if expected is not None:
        if digest != expected:
            raise FetchError(
                f"{rel}: SHA-256 mismatch: got {digest}, published {expected}. The file was "
                f"removed; the source ({source}) is corrupt or not the expected file"
            )
        hashes.record(models_dir, rel, digest, source=source, pinned=True)
        return True
    old = hashes.recorded(models_dir, rel)
    if old is not None and old["sha256"] != digest:
        raise FetchError(
            f"{rel}: SHA-256 {digest} differs from the {old['sha256']} recorded when it was first "
            f"downloaded (from {old.get('source')}). The new file was removed. Delete its entry "
            f"in {hashes.store_path(models_dir)} if the change is expected"
        )
    hashes.record(models_dir, rel, digest, source=source, pinned=bool(pinned_by))
    if old is None and not pinned_by:
        log.warning(
            "%s: no published SHA-256; recorded %s on this first download. Compare it with a "
            "trusted copy: later downloads must match it",
            rel,
            digest,
        )
    return bool(pinned_by)


def fetch(
    name: str | Artifact,
    models_dir: str | os.PathLike,
    *,
    source: str | None = None,
    progress: bool = True,
    force: bool = False,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
) -> FetchResult:
    """Fetch the artifact ``name`` (or the one providing model ``name``) into ``models_dir``."""
    art = name if isinstance(name, Artifact) else resolve(name)
    models_dir = Path(models_dir).expanduser()
    if not force and present(art, models_dir):
        files = {m.path: hashes.verified(models_dir, m.path)[0] for m in art.members}
        return FetchResult(art.name, "present", files, pinned=all(m.sha256 for m in art.members))
    url = source_url(art, source, models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / (art.filename if art.is_archive else art.members[0].path)
    if dest.exists() and (art.is_archive or force):
        dest.unlink()
    tmp = dest.with_name(dest.name + ".download")
    download(url, tmp, progress=progress, retries=retries, timeout=timeout, backoff=backoff)
    digest = sha256_file(tmp)
    if art.sha256 is not None and digest != art.sha256:
        tmp.unlink()
        raise FetchError(
            f"{art.filename}: SHA-256 mismatch: got {digest}, published {art.sha256}. The file was "
            f"removed; the source ({url}) is corrupt or not the expected file"
        )
    if not art.is_archive:
        rel = art.members[0].path
        try:
            pinned = _check(models_dir, rel, digest, art.members[0].sha256 or art.sha256, url)
        except FetchError:
            tmp.unlink()
            raise
        os.replace(tmp, dest)
        hashes.record(models_dir, rel, digest, source=url, pinned=pinned)  # mtime of the final file
        return FetchResult(art.name, "downloaded", {rel: digest}, pinned, url)
    target = models_dir / art.folder
    try:
        unpacked = safe_unpack(tmp, target)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{art.filename} from {url} is not a valid zip archive ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    files, pinned_all = {}, art.sha256 is not None
    wanted = {m.path: m for m in art.members}
    for path in unpacked:
        rel = path.relative_to(models_dir).as_posix()
        member = wanted.get(rel)
        d = sha256_file(path)
        try:
            pinned = _check(
                models_dir,
                rel,
                d,
                member.sha256 if member else None,
                url,
                pinned_by=f"{art.filename} sha256" if art.sha256 else "",
            )
        except FetchError:
            path.unlink()
            raise
        pinned_all &= pinned
        files[rel] = d
    missing = [m.path for m in art.members if m.path not in files]
    if missing:
        raise FetchError(f"{art.filename} from {url} lacks {', '.join(missing)}")
    return FetchResult(art.name, "downloaded", files, pinned_all, url)
