"""A GGUF model unpacked once per machine into a safetensors folder, and loaded from there.

Why: transformers reads a GGUF file by parsing and dequantizing every tensor in numpy, and its
tokenizer by converting the file's vocabulary: ~20 s for SmolLM2-135M on two CPU cores, paid by
every job. The first load on a machine unpacks the GGUF exactly as loading it directly does
(the caller's ``unpack``, :func:`gradience.models.hub.unpack_gguf`: dense float32 weights,
quantization marker cleared) and saves the model and tokenizer with ``save_pretrained`` under
``$GRADIENCE_CACHE/models/<gguf name>-<key>/`` (default ``~/.cache/gradience``). Every later
load reads that folder: the same weights bit for bit (float32 is what the dequantizer
produces; the job's dtype is applied while loading, as it is when reading the GGUF), the same
config and the same tokenizer, in about a second.

**Key.** The sha256 of the GGUF's bytes, with the transformers and gguf versions that unpack
it (another converter may unpack differently) and :data:`CACHE_FORMAT`. Hashing 100 MB costs
0.1-0.3 s, so the digest is remembered by the file's (path, size, mtime, inode), in memory and
in ``$GRADIENCE_CACHE/models/file-digests/``: a job does not re-read the GGUF.

**Verification.** The folder's manifest (:data:`MANIFEST`, written last, so its presence marks
a complete build) records the key and every file's size and sha256. Each load checks the
manifest, the key and every file's size; each file's sha256 is recomputed once per process
(remembered by the same (path, size, mtime, inode) identity), ~0.4 s for SmolLM2's 540 MB. A
missing, damaged or foreign folder is rebuilt. The trade-off, for a load of about a second
rather than one of two (hashing on every load) or none (trusting the manifest): a cached file
changed in place with its size and mtime restored is not re-hashed by a process that has
already verified it, and a GGUF changed so keeps its remembered digest (so its old folder)
across processes. Both take a deliberate ``touch -r``; anything else (an edit, a truncated
copy, a half-written build, an upgrade of transformers) is caught.

**Concurrency.** A build runs under a file lock (POSIX ``flock``) in a staging folder renamed
into place, and re-checks the folder once it holds the lock, so workers that start together
unpack once and never read half a model. A stale folder is renamed away just before the new
one takes its place; a process that looks in between finds no manifest and waits for the
lock. Folders of other keys (an older transformers) are left in place: delete
``$GRADIENCE_CACHE/models/<gguf name>-*`` to reclaim them (~540 MB for SmolLM2).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gradience.config import hash_data
from gradience.errors import GradienceError
from gradience.models.embedded import cache_root

log = logging.getLogger(__name__)

#: Bumped whenever what a build writes changes, so older folders are never read.
CACHE_FORMAT = 1
#: Written last into a built folder: the key and every file's size and sha256.
MANIFEST = "gradience_gguf_manifest.json"
#: A function returning the (model, tokenizer) unpacked from the GGUF, in float32.
Unpack = Callable[[], "tuple[Any, Any]"]

# sha256 by file identity (resolved path, size, mtime_ns, inode); see file_sha256.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def cached_gguf_dir(gguf_path: Path, unpack: Unpack) -> Path:
    """The verified cache folder of ``gguf_path``, unpacked with ``unpack`` if missing or stale."""
    target, key = cache_location(gguf_path)
    if stale_reason(target, key) is None:
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        reason = stale_reason(target, key)  # another process may have built it meanwhile
        if reason is not None:
            _build(gguf_path, target, key, unpack, reason)
    return target


def ready_gguf_dir(gguf_path: Path) -> Path | None:
    """The cache folder of ``gguf_path`` when a verified build exists; None otherwise (no build)."""
    target, key = cache_location(gguf_path)
    return target if stale_reason(target, key) is None else None


def cache_location(gguf_path: Path) -> tuple[Path, str]:
    """(folder, key): where the unpacked ``gguf_path`` is cached, and the key it must carry."""
    if not gguf_path.is_file():
        raise GradienceError(
            f"the GGUF file {gguf_path.name} is not in {gguf_path.parent}",
            path=gguf_path,
            field="model.gguf_file",
        )
    key = cache_key(file_sha256(gguf_path, remember_on_disk=True))
    return cache_root() / "models" / f"{gguf_path.stem}-{key}", key


def cache_key(gguf_sha256: str) -> str:
    """The GGUF's content and everything that decides how it unpacks."""
    return hash_data(
        {
            "gguf_sha256": gguf_sha256,
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
            "format": CACHE_FORMAT,
        }
    )


def stale_reason(folder: Path, key: str) -> str | None:
    """Why ``folder`` is not a complete build for ``key`` (None: it is, every file verified)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        recorded_key = manifest["key"]
    except FileNotFoundError:
        return "no manifest (never built, or the build was interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    if recorded_key != key or manifest.get("format") != CACHE_FORMAT:
        return f"built for key {recorded_key!r}, not {key!r}"
    for name, expected in sorted(files.items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected["size"]:
            return f"{name} has {size} bytes, the manifest says {expected['size']}"
    for name, expected in sorted(files.items()):
        if file_sha256(folder / name) != expected["sha256"]:
            return f"{name} does not match the sha256 in the manifest"
    return None


def file_sha256(path: Path, *, remember_on_disk: bool = False) -> str:
    """The sha256 of ``path``'s bytes, hashed once per (path, size, mtime, inode).

    Remembered in this process; with ``remember_on_disk`` also in the cache, for the next
    process (a file rewritten with the same size and mtime keeps its old digest: see the
    module docstring).
    """
    stat = path.stat()
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if identity in _DIGESTS:
        return _DIGESTS[identity]
    record = cache_root() / "models" / "file-digests" / f"{hash_data(identity[0])}.json"
    digest = _remembered_digest(record, identity) if remember_on_disk else None
    if digest is None:
        digest = _sha256_of(path)
        if remember_on_disk:
            _remember_digest(record, identity, digest)
    _DIGESTS[identity] = digest
    return digest


def forget_file_digests() -> None:
    """Drop the digests remembered in memory: the next checks hash again, as a new process would."""
    _DIGESTS.clear()


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):  # hashlib.file_digest is Python >= 3.11
            hasher.update(chunk)
    return hasher.hexdigest()


def _remembered_digest(record: Path, identity: tuple[str, int, int, int]) -> str | None:
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("identity") != list(identity):
        return None
    digest = saved.get("sha256")
    return digest if isinstance(digest, str) else None


def _remember_digest(record: Path, identity: tuple[str, int, int, int], digest: str) -> None:
    """Best effort: a cache that cannot be written only means hashing again next time."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{record.name}.", dir=record.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"identity": list(identity), "sha256": digest}, out)
        os.replace(temporary, record)
    except OSError as exc:
        log.debug("could not remember the digest of %s: %s", identity[0], exc)


def _build(gguf_path: Path, target: Path, key: str, unpack: Unpack, reason: str) -> None:
    print(
        f"gradience: unpacking {gguf_path.name} once into {target} ({reason}); later loads "
        "read that folder",
        file=sys.stderr,
    )
    started = time.perf_counter()
    model, tokenizer = unpack()  # its own errors (a damaged GGUF) are the caller's to report
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise _unwritable(exc, target) from None
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {
            path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(staging.iterdir())
            if path.is_file()
        }
        manifest = {
            "format": CACHE_FORMAT,
            "key": key,
            "source": {
                "path": str(gguf_path),
                "size": gguf_path.stat().st_size,
                "sha256": file_sha256(gguf_path, remember_on_disk=True),
            },
            "unpacked_by": {"transformers": _version("transformers"), "gguf": _version("gguf")},
            "build_wall_s": round(time.perf_counter() - started, 3),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _unwritable(exc, target) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _unwritable(exc: OSError, target: Path) -> GradienceError:
    """Read-only, not a folder, disk full: the user's environment, said as such."""
    return GradienceError(
        f"cannot write the unpacked GGUF model cache ({exc.strerror or exc}); set "
        "GRADIENCE_CACHE to a writable folder",
        path=target,
    )


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a stale ``target`` is renamed away first, then deleted."""
    if not target.exists():
        os.replace(staging, target)
        return
    stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(target, stale)
    os.replace(staging, target)
    shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX); elsewhere, none (the rename stays atomic)."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("w")
    except OSError as exc:
        raise _unwritable(exc, lock_path.parent) from None
    try:
        import fcntl
    except ImportError:
        with handle:
            yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
