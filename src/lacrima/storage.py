"""Storage behind one small interface: a local folder (default ``./data``) or S3.

``LACRIMA_STORAGE`` chooses: a path, or ``s3://bucket/prefix``. The S3 endpoint comes from the
standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` settings (boto3 reads them itself), so the
same code runs against AWS, MinIO or a moto server. Keys are the same on both backends::

    landing/<site>/<name>              what data managers upload
    raw/<site>/<sha256>.<ext>          immutable, content-addressed copy of every drop
    curated/<site>/<sha256>.parquet    canonical, typed, pseudonymised data of accepted drops
    quarantine/<site>/<sha256>/        original file + validation report of rejected drops
    ledger/<site>/<sha256>.json        state of each batch (accepted, quarantined, superseded)
    reports/<run_id>/, reports/latest.json  a run's outputs; the pointer to the latest (report.py)
    locks/run.json                       the lease of the run holding the store (lease.py)

Raw writes are conditional (never overwrite); the pipeline never deletes anything. The
one audited exception: ``lacrima withdraw --purge-raw`` (and ``rekey`` dropping curated
files made under the old key), see ``lacrima.catalog``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

STORAGE_ENV = "LACRIMA_STORAGE"
DEFAULT_ROOT = "data"
log = logging.getLogger("lacrima.storage")


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key (relative to the store's root), size in bytes, change marker."""

    key: str
    size: int
    etag: str          # a change marker: S3 ETag, or mtime_ns-size locally


class Storage(Protocol):
    """What lacrima needs from a store. Keys are '/'-separated, relative to the root.

    ``write_bytes(key, data, metadata, if_absent=True)`` creates ``key`` only if it does not
    exist, atomically, and returns False (writing nothing) when it does; without ``if_absent``
    it replaces the object (ledger entries, ``reports/latest``). ``copy(source, key, if_absent)``
    is ``write_bytes(key, read_bytes(source), if_absent=...)`` without the bytes passing through
    the caller where the store can avoid it (metadata is not copied). ``metadata`` holds short ASCII
    strings (S3 object metadata). ``list(prefix)`` gives every object under the folder
    ``prefix`` ("" = all), sorted by key: regular files only (a symbolic link, device or FIFO
    in a local folder is never listed, opened or copied; reads open with ``O_NOFOLLOW``).
    ``unlisted(prefix)`` gives what ``list`` leaves out under ``prefix`` and is not the store's
    own, as ``(key, what)`` pairs (:func:`describe_key`): links, devices, hidden files, S3
    folder markers and keys with empty or ``..`` segments. Failures are ``OSError``
    (``StorageError`` on S3).

    ``read_tagged(key)`` gives ``(bytes, tag)`` or ``None`` when absent; ``swap(key, data, tag)``
    is a compare-and-swap: it writes only if the object's tag is still ``tag`` (``None``: only
    if absent) and returns the new tag, or ``None`` when the condition failed. The run lease
    (``lacrima.lease``) is built on these two. ``check()`` fails fast (``StorageError``, one
    line) on a store that cannot work at all: no such bucket, credentials refused, endpoint
    unreachable.
    """

    location: str

    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def unlisted(self, prefix: str) -> list[tuple[str, str]]: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> Path: ...
    def write_bytes(self, key: str, data: bytes, metadata: dict | None = None,
                    if_absent: bool = False) -> bool: ...
    def copy(self, source: str, key: str, if_absent: bool = False) -> bool: ...
    def metadata(self, key: str) -> dict: ...
    def local_path(self, key: str) -> Path | None: ...
    def read_tagged(self, key: str) -> tuple[bytes, str] | None: ...
    def swap(self, key: str, data: bytes, tag: str | None) -> str | None: ...
    def check(self) -> None: ...
    def delete(self, key: str) -> bool: ...


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)`` (prefix without slashes at its ends).

    Raises ``ValueError`` for anything else (no scheme, no bucket).
    """
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r}: expected s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{STORAGE_ENV}={url!r}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _is_object_key(key: str) -> bool:
    """True for a key a store may hold as a file (see ``_check_key``)."""
    return bool(key) and not key.startswith("/") and all(
        p not in ("", ".", "..") for p in key.split("/"))


# What an entry that is not an object is (``describe_key`` and ``LocalStorage.unlisted``).
FOLDER_MARKER, EMPTY_SEGMENT, DOT_SEGMENT = "folder marker", "empty segment", "dot segment"
HIDDEN, FILE_LINK, FOLDER_LINK, BROKEN_LINK, SPECIAL = (
    "hidden file", "link to a file", "link to a folder", "broken link", "special file")


def describe_key(key: str) -> str:
    """What a key no file system could hold as a file is, in a few words ("" for an object key).

    >>> describe_key("landing/it/"), describe_key("landing/it/../us/x.csv")
    ('folder marker', 'dot segment')
    """
    if _is_object_key(key):
        return ""
    if not key or key.endswith("/") and _is_object_key(key.rstrip("/")):
        return FOLDER_MARKER
    if any(p in (".", "..") for p in key.split("/")):
        return DOT_SEGMENT
    return EMPTY_SEGMENT


class NotRegularFile(OSError):
    """A local key that is not a regular file (a symbolic link, device, FIFO, or a path
    through a linked folder): never opened."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the content address of raw drops."""
    return hashlib.sha256(data).hexdigest()


def parquet_frame(data: bytes):
    """The DataFrame in Parquet file bytes: what ``pandas.read_parquet`` gives, with less overhead.

    ``pandas.read_parquet`` on a buffer goes through pyarrow's dataset layer; reading the one
    file directly and converting it the same way gives an identical frame (tested) in about
    60% of the time, which counts when a run reads hundreds of small per-site files.
    """
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(data)).read(use_pandas_metadata=True).to_pandas()


def _check_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}: relative '/'-separated parts only")
    return key


class LocalStorage:
    """A folder. Object metadata sits beside the data in ``.meta/<key>.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / (_check_key(key) + ".json")

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """``(key, lstat)`` of every entry below ``prefix`` that is not a folder, in key order.

        Links are never followed (a linked folder is one entry, not walked); folders whose
        name starts with a dot are the store's own (``.meta/``, ``.locks/``) and not walked.
        A ``prefix`` reached through a link gives nothing: what is there is not the store's.
        """
        prefix = prefix.strip("/")
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir() or os.path.realpath(base) != str(base):
            return
        stack = [base]
        found = []
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:   # gone since the listing: a temporary file renamed
                    continue                # into place by a write running at the same time
                if stat.S_ISDIR(st.st_mode):
                    if not e.name.startswith("."):
                        stack.append(Path(e.path))
                    continue
                found.append((Path(e.path).relative_to(self.root).as_posix(), st))
        yield from sorted(found)

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Regular files only (lstat): a link, device or FIFO is no object. Dot-names are ours
        # (.tmp- files being written) or hidden files, not objects.
        return [ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")
                for key, st in self._walk(prefix)
                if stat.S_ISREG(st.st_mode) and not key.rsplit("/", 1)[-1].startswith(".")]

    def unlisted(self, prefix: str) -> list[tuple[str, str]]:
        out = []
        for key, st in self._walk(prefix):
            if stat.S_ISLNK(st.st_mode):
                path = self.root / key
                out.append((key, FOLDER_LINK if path.is_dir() else
                            FILE_LINK if path.exists() else BROKEN_LINK))
            elif not stat.S_ISREG(st.st_mode):
                out.append((key, SPECIAL))
            elif key.rsplit("/", 1)[-1].startswith("."):
                out.append((key, HIDDEN))
        return out

    def _open(self, key: str) -> int:
        """A read-only descriptor of ``key``, a regular file reached through no link.

        ``O_NOFOLLOW`` refuses a link as the last part; the resolved parent, a path through
        a linked folder that leads out of the store (the store's own ``reports/latest`` link
        stays inside it; listings never walk a linked folder); ``fstat`` anything but a
        regular file (``O_NONBLOCK``: a FIFO does not block the open). Raises
        :class:`NotRegularFile` (an ``OSError``) for any of them.
        """
        path = self._path(key)
        if not self._inside(path):
            raise NotRegularFile(f"{key}: reached through a link out of the store, not opened")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as err:
            if os.path.islink(path):          # ELOOP, or EMLINK on some BSDs
                raise NotRegularFile(f"{key}: a symbolic link, not opened") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotRegularFile(f"{key}: not a regular file, not read")
        return fd

    def _inside(self, path: Path) -> bool:
        """Whether ``path``'s folder, links resolved, is in the store."""
        return Path(os.path.realpath(path.parent)).is_relative_to(self.root)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return stat.S_ISREG(os.lstat(path).st_mode) and self._inside(path)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def read_bytes(self, key: str) -> bytes:
        with os.fdopen(self._open(key), "rb") as fh:
            return fh.read()

    def download(self, key: str, path: Path) -> Path:
        with os.fdopen(self._open(key), "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return path

    def write_bytes(self, key: str, data: bytes, metadata: dict | None = None,
                    if_absent: bool = False) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if if_absent and target.exists():
            return False
        # Write to a temp file then rename: readers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)          # mkstemp makes 0600; outputs are for every reader
        if if_absent:
            try:
                os.link(tmp, target)      # atomic create-if-absent
            except FileExistsError:
                os.unlink(tmp)
                return False
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
        if metadata:
            meta = self._meta_path(key)
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(metadata, sort_keys=True))
        return True

    def copy(self, source: str, key: str, if_absent: bool = False) -> bool:
        # A hard link where the file system allows: objects are never changed in place (every
        # write goes to a new file renamed over its key), so a link is as good as a copy.
        src, target = self._path(source), self._path(key)
        os.close(self._open(source))        # a regular file, reached through no link
        target.parent.mkdir(parents=True, exist_ok=True)
        if if_absent and target.exists():
            return False
        tmp = target.parent / f".tmp-{secrets.token_hex(8)}"
        try:
            os.link(src, tmp, follow_symlinks=False)
        except OSError:             # another file system, or no hard links: a real copy
            self.download(source, tmp)
            os.chmod(tmp, 0o644)
        if not if_absent:
            os.replace(tmp, target)
            return True
        try:
            os.link(tmp, target)    # atomic create-if-absent, as write_bytes
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def metadata(self, key: str) -> dict:
        meta = self._meta_path(key)
        return json.loads(meta.read_text()) if meta.exists() else {}

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.root}: not a folder")

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.read_bytes(key)
        except FileNotFoundError:
            return None
        return data, sha256_bytes(data)

    def swap(self, key: str, data: bytes, tag: str | None) -> str | None:
        import fcntl

        if tag is None:
            return sha256_bytes(data) if self.write_bytes(key, data, if_absent=True) else None
        # Writers of a swapped key hold this lock between reading and replacing; an
        # exclusive create (tag None) needs none: a swap requires the key to exist.
        lock = self.root / ".locks" / _check_key(key)
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            now = self.read_tagged(key)
            if now is None or now[1] != tag:
                return None
            self.write_bytes(key, data)
            return sha256_bytes(data)
    def delete(self, key: str) -> bool:
        """Remove ``key`` (and its metadata); False when it was not there."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        self._meta_path(key).unlink(missing_ok=True)
        return True


# The words a warning or ``lacrima status`` uses for each kind of non-object.
_WHAT = {FOLDER_MARKER: "a folder marker (an empty object named like a folder)",
         EMPTY_SEGMENT: "a key with an empty segment ('//')",
         DOT_SEGMENT: "a key with a '.' or '..' segment"}


class StorageError(OSError):
    """A storage operation failed after its retries (S3 error, endpoint down, no credentials).

    An ``OSError``, so callers handle a failing S3 store as they handle a failing disk.
    """


# S3 answers meaning "the key is not there" (HEAD has no body, so only the status is left).
_MISSING = ("404", "NoSuchKey", "NotFound")
# S3 answers to a conditional write whose key already exists. 409 ConditionalRequestConflict
# means a concurrent conditional write of the same key is in flight; keys written with
# if_absent are content-addressed, so the other writer is storing the same bytes.
_EXISTS = ("PreconditionFailed", "412", "ConditionalRequestConflict")


class S3Storage:
    """An S3 bucket and prefix through boto3, with retries on throttling and 5xx answers.

    Parameters
    ----------
    url : str
        ``s3://bucket`` or ``s3://bucket/prefix``.
    client : botocore client, optional
        Default: ``boto3.client("s3")`` with standard-mode retries (8 attempts). The endpoint,
        credentials and region come from the usual AWS settings (``AWS_ENDPOINT_URL_S3`` or
        ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``, profiles...).

    Notes
    -----
    Retries: botocore's standard mode retries throttling answers (503 SlowDown, Throttling...)
    and transient faults (500, 502, 503, 504, connection errors) with exponential backoff and
    jitter, on every call here. Whatever still fails is raised as :class:`StorageError`.

    Conditional writes (``if_absent=True``) send ``If-None-Match: *``; S3 (since 2024-08), MinIO
    and moto (checked with moto 5.2.5 in tests/test_s3.py) refuse to overwrite an existing key
    with 412 PreconditionFailed, atomically, so no head-then-put race is needed. If a retried
    conditional write gets 412 because its own first attempt had landed, the object holds the
    same bytes: the key is content-addressed.

    Every write carries its SHA-256 (``ChecksumSHA256``); S3 rejects a body that does not match.
    Reads ask for checksum validation (``ChecksumMode``), which botocore performs whenever the
    object has a full-object checksum.
    """

    # botocore error codes that no retry can mend: the bucket is absent, or these credentials
    # are refused (HEAD answers carry only the status: 404, 403, 400).
    _NO_BUCKET = ("NoSuchBucket", "404", "NotFound")
    _REFUSED = ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "ExpiredToken", "InvalidToken", "400", "301", "PermanentRedirect")

    def __init__(self, url: str, client=None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = url.rstrip("/")
        self._own_client = client is None
        if client is None:
            import boto3
            from botocore.config import Config
            client = boto3.client("s3", config=Config(
                retries={"total_max_attempts": 8, "mode": "standard"},
                connect_timeout=10, read_timeout=60))
        self.client = client

    def check(self) -> None:
        """One ``HeadBucket``, not retried: fail in seconds when no retry could succeed.

        Raises
        ------
        StorageError
            No such bucket; credentials missing or refused (or the bucket in another
            region); the endpoint unreachable. A throttled or 5xx answer passes: the
            retried calls of the run carry those.
        """
        from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                         NoCredentialsError)

        client = self.client
        if self._own_client:
            import boto3
            from botocore.config import Config
            client = boto3.client("s3", config=Config(retries={"total_max_attempts": 1},
                                                      connect_timeout=5, read_timeout=20))
        where = f"{self.location} (endpoint {client.meta.endpoint_url})"
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = self._code(err)
            if code in self._NO_BUCKET:
                raise StorageError(f"{where}: no such bucket {self.bucket!r}") from None
            if code in self._REFUSED:
                raise StorageError(f"{where}: access refused ({code}): check the credentials "
                                   "(AWS_ACCESS_KEY_ID, AWS_PROFILE) and the region") from None
        except NoCredentialsError:
            raise StorageError(f"{where}: no AWS credentials found") from None
        except EndpointConnectionError as err:
            raise StorageError(f"{where}: cannot connect ({err})") from None
        except BotoCoreError as err:
            raise StorageError(f"{where}: {err}") from None

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _error(self, op: str, key: str, err: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        where = f"s3://{self.bucket}/{key}"
        if isinstance(err, ClientError):
            e = err.response.get("Error", {})
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            return StorageError(f"{op} {where}: {e.get('Code', status)} "
                                f"({e.get('Message') or 'no message'}; HTTP {status})")
        return StorageError(f"{op} {where}: {err}")

    @staticmethod
    def _code(err) -> str:
        return str(err.response.get("Error", {}).get("Code", ""))

    def _listing(self, prefix: str) -> Iterator[tuple[str, dict]]:
        """``(key relative to the root, listed object)`` of each key under the folder ``prefix``."""
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = prefix.strip("/")
        full = self._key(prefix) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield self._rel(obj["Key"]), obj
        except (BotoCoreError, ClientError) as err:
            raise self._error("list", full, err) from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for key, obj in self._listing(prefix):
            what = describe_key(key)
            if what:
                # A "folder" (what the S3 console makes: ``landing/it/``, zero bytes) or a key
                # no file system could hold (``landing/it//x.csv``, ``landing/it/../us/x.csv``):
                # not a file, never read.
                log.warning("ignoring s3://%s/%s: %s, not a file", self.bucket, obj["Key"],
                            _WHAT[what])
                continue
            out.append(ObjectInfo(key, obj["Size"], obj["ETag"].strip('"')))
        return sorted(out, key=lambda o: o.key)

    def unlisted(self, prefix: str) -> list[tuple[str, str]]:
        return sorted((key, describe_key(key)) for key, _ in self._listing(prefix)
                      if describe_key(key))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True (S3 does not say whether it was there)."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
            return True
        except (ClientError, BotoCoreError) as err:
            raise self._error("delete", full, err) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
            return True
        except ClientError as err:
            if self._code(err) in _MISSING:
                return False
            raise self._error("head", full, err) from None
        except BotoCoreError as err:
            raise self._error("head", full, err) from None

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            return obj["Body"].read()
        except (BotoCoreError, ClientError) as err:
            raise self._error("read", full, err) from None

    def download(self, key: str, path: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            self.client.download_file(self.bucket, full, str(path))
        except (BotoCoreError, ClientError) as err:
            raise self._error("download", full, err) from None
        return path

    def write_bytes(self, key: str, data: bytes, metadata: dict | None = None,
                    if_absent: bool = False) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        odd = sorted(k for k, v in meta.items() if not (k + v).isascii())
        if odd:
            # S3 sends metadata as HTTP headers: ASCII only.
            raise ValueError(f"metadata {odd} of {key!r} is not ASCII; S3 object metadata must be")
        args = dict(Bucket=self.bucket, Key=full, Body=data, Metadata=meta,
                    ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode())
        if if_absent:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
            return True
        except ClientError as err:
            if if_absent and self._code(err) in _EXISTS:
                return False
            raise self._error("write", full, err) from None
        except BotoCoreError as err:
            raise self._error("write", full, err) from None

    def copy(self, source: str, key: str, if_absent: bool = False) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if if_absent:
            # CopyObject has no create-if-absent condition: the bytes go through here.
            return self.write_bytes(key, self.read_bytes(source), if_absent=True)
        full = self._key(key)
        try:        # server-side copy: the bytes do not come down and go up again
            self.client.copy_object(Bucket=self.bucket, Key=full,
                                    CopySource={"Bucket": self.bucket, "Key": self._key(source)})
            return True
        except (ClientError, BotoCoreError) as err:
            raise self._error("copy", full, err) from None

    def metadata(self, key: str) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full).get("Metadata", {})
        except (BotoCoreError, ClientError) as err:
            raise self._error("head", full, err) from None

    def local_path(self, key: str) -> Path | None:
        return None

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=full)
            return obj["Body"].read(), obj["ETag"].strip('"')
        except ClientError as err:
            if self._code(err) in _MISSING:
                return None
            raise self._error("read", full, err) from None
        except BotoCoreError as err:
            raise self._error("read", full, err) from None

    def swap(self, key: str, data: bytes, tag: str | None) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        cond = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": f'"{tag}"'}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                          **cond)["ETag"].strip('"')
        except ClientError as err:
            if self._code(err) in (*_EXISTS, *_MISSING):
                return None
            raise self._error("write", full, err) from None
        except BotoCoreError as err:
            raise self._error("write", full, err) from None


def open_storage(location: str | None = None) -> Storage:
    """The configured store: ``location``, else ``LACRIMA_STORAGE``, else ``./data``.

    Parameters
    ----------
    location : str, optional
        A folder path, or ``s3://bucket/prefix``.

    Returns
    -------
    Storage
        :class:`S3Storage` for an ``s3://`` location, else :class:`LocalStorage`.

    Raises
    ------
    ValueError
        An ``s3://`` location without a bucket.
    """
    loc = location or os.environ.get(STORAGE_ENV) or DEFAULT_ROOT
    if loc.startswith("s3://"):
        return S3Storage(loc)
    return LocalStorage(loc)


def write_json(storage: Storage, key: str, obj, **kw) -> bool:
    """Write ``obj`` as indented, key-sorted JSON; ``kw`` goes to ``write_bytes``."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    return storage.write_bytes(key, text.encode(), **kw)


def read_json(storage: Storage, key: str):
    """The JSON object stored at ``key``."""
    return json.loads(storage.read_bytes(key))

