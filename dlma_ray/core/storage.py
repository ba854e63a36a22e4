"""Run-directory I/O over pyarrow filesystems: a local path, a shared filesystem, or `s3://...`.

Multi-node Ray Train needs every worker to reach the run directory, so all stage outputs go through
here. Writes are made complete under a temporary name first, then renamed (or, on object stores
where a rename is a copy, committed by the state file that is written last).
"""

from __future__ import annotations

import functools
import os
import posixpath
import uuid

import pyarrow.fs as pafs

# Attempts of every object-store call (with backoff, by the AWS SDK's standard strategy). Large files are
# uploaded in parts by Arrow's S3 output stream (multipart upload), so objects over 5 GB work.
REMOTE_ATTEMPTS = int(os.environ.get("DLMA_STORAGE_ATTEMPTS", "10"))


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_uri(path) else os.path.dirname(path)


@functools.lru_cache(maxsize=8)
def _s3(region: str, endpoint: str) -> pafs.FileSystem:
    # Credentials come from the standard chain; the endpoint of an S3-compatible store from AWS_ENDPOINT_URL.
    extra = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        extra = {"endpoint_override": host or endpoint, "scheme": scheme or "https"}
    return pafs.S3FileSystem(region=region or None, **extra,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=REMOTE_ATTEMPTS))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        fs, p = pafs.FileSystem.from_uri(path)
        if isinstance(fs, pafs.S3FileSystem):
            return _s3(fs.region, os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")), p
        return fs, p
    return pafs.LocalFileSystem(), os.path.abspath(path)


def read_table(path: str, columns: list[str] | None = None):
    """A Parquet folder or file, local or on object storage, as one pyarrow table (``columns``: only those)."""
    import pyarrow.parquet as pq

    fs, p = _fs(path)
    return pq.read_table(p, columns=columns, filesystem=fs)


def absolute(path: str) -> str:
    return path if is_uri(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)


def read_text(path: str) -> str:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as fh:
        return fh.read().decode("utf-8")


def write_text_atomic(path: str, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never a part."""
    fs, p = _fs(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    fs.create_dir(parent, recursive=True)
    if is_uri(path):  # an object PUT is atomic already
        with fs.open_output_stream(p) as fh:
            fh.write(text.encode("utf-8"))
        return
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def delete_dir(path: str) -> None:
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        fs.delete_dir(p)


def temp_sibling(path: str) -> str:
    """A fresh temporary name beside ``path`` for a stage output in progress."""
    head, tail = (posixpath if is_uri(path) else os.path).split(path.rstrip("/"))
    return (posixpath if is_uri(path) else os.path).join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


def commit_dir(tmp: str, final: str) -> None:
    """Move a finished output folder into place, replacing any leftover from a killed attempt."""
    delete_dir(final)
    fs, src = _fs(tmp)
    _, dst = _fs(final)
    if is_uri(final):
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)
    else:
        os.replace(src, dst)


def upload_dir(local_dir: str, dest: str) -> None:
    """Copy a local folder to ``dest`` (any filesystem)."""
    fs, dst = _fs(dest)
    fs.create_dir(dst, recursive=True)
    pafs.copy_files(local_dir, dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(src: str, local_dir: str) -> None:
    fs, s = _fs(src)
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(s, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def file_sizes(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> size in bytes): what a complete copy must hold."""
    fs, p = _fs(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    return {posixpath.relpath(i.path, p): i.size for i in infos if i.type == pafs.FileType.File}


def remove_stale_temps(folder: str) -> None:
    """Delete `.name.tmp-*` leftovers of killed stages inside ``folder``."""
    fs, p = _fs(folder)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(p)):
        if info.base_name.startswith(".") and ".tmp-" in info.base_name:
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
