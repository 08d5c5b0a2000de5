"""The checkpoint store in object storage: S3 and S3-compatible servers (MinIO, Ceph,
GCS's XML API), for clusters without a shared filesystem. Needs boto3 (`renas-db[s3]`).

- A write is one conditional create of the whole object (`PutObject` with
  `If-None-Match: *`): a key that exists is refused, since keys carry the lease token
  and a second write to one key is a bug. The sha256 goes alongside as object metadata
  (`x-amz-meta-sha256`); the database row stays the commit point, as with files, and a
  load verifies the bytes against the database's sha256, not the metadata's.
- Endpoint, region and credentials come from boto3's standard chain (AWS_* variables,
  ~/.aws/config and credentials, instance or pod roles; AWS_ENDPOINT_URL or
  AWS_ENDPOINT_URL_S3 for MinIO or Ceph). They are never printed nor stored.
- Transient errors (throttling, 5xx, refused or dropped connections, timeouts) are
  retried here with capped exponential backoff for RETRY_SECONDS (env
  RENAS_S3_RETRY_SECONDS, default 120); botocore's own retries are off so that this
  loop alone decides. Anything else (a missing bucket, refused credentials, no
  permission) is one StorageError at once."""
from __future__ import annotations

import email.utils
import functools
import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, TypeVar

from renas_db import store_roots
from renas_db.checkpoints import decode, encode, relative_parts
from renas_db.errors import CheckpointError, MissingDependency, StorageError

log = logging.getLogger("renas_db.worker")
T = TypeVar("T")

RETRY_SECONDS = float(os.environ.get("RENAS_S3_RETRY_SECONDS", "120"))
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0  # per socket read, not per transfer
TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled",
    "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict",
    "OperationAborted",
}
HINTS = {
    "NoSuchBucket": "the bucket does not exist (create it, or check AWS_ENDPOINT_URL)",
    "InvalidAccessKeyId": "the access key is not known to the endpoint (check the "
                          "credentials: AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (check the "
                             "credentials: AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws)",
    "AccessDenied": "access denied (the credentials lack s3:PutObject, GetObject, "
                    "DeleteObject or ListBucket on this bucket)",
    "InvalidToken": "the session token is invalid (check AWS_SESSION_TOKEN)",
    "ExpiredToken": "the session token has expired (renew the credentials)",
    "PermanentRedirect": "the bucket is in another region (set AWS_REGION)",
}


def _boto() -> tuple[Any, Any, Any]:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise MissingDependency("an s3:// checkpoint root needs boto3: pip install "
                                "'renas-db[s3]'") from None
    return boto3, botocore.config, botocore.exceptions


class S3Store:
    """The checkpoints of `s3://bucket/prefix`, one object per checkpoint URI."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.bucket, self.prefix = store_roots.parse_s3(root)
        boto3, config, self._exc = _boto()
        # botocore retries nothing: _call's loop retries, bounded in time and logged
        cfg = config.Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                            retries={"mode": "standard", "total_max_attempts": 1})
        self.client = boto3.session.Session().client("s3", config=cfg)

    # -- keys ---------------------------------------------------------------------------
    def key(self, uri: str) -> str:
        rel = "/".join(relative_parts(uri))
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def describe(self, uri: str) -> str:
        return f"s3://{self.bucket}/{self.key(uri)}"

    # -- the interface ------------------------------------------------------------------
    def save(self, uri: str, payload: dict[str, Any]) -> str:
        data, sha = encode(payload)
        key, where = self.key(uri), self.describe(uri)
        tries = 0

        def put() -> None:
            nonlocal tries
            tries += 1
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                       IfNoneMatch="*", Metadata={"sha256": sha},
                                       ContentType="application/octet-stream")
            except self._exc.ClientError as exc:
                if _code(exc) != "PreconditionFailed":
                    raise
                # a retry after a dropped answer finds the first try's object: ours if
                # its digest is ours; otherwise the key was written twice
                if tries > 1 and self._stored_sha(key) == sha:
                    return
                raise CheckpointError(
                    f"checkpoint {where} exists already: refused to overwrite it (keys "
                    "carry the lease token, so a second write to one key is a bug)"
                ) from None
        self._call("PutObject", where, put)
        return sha

    def load(self, uri: str, sha256: str | None) -> dict[str, Any]:
        where = self.describe(uri)
        return decode(self._get(uri), where, sha256)

    def verify(self, uri: str, sha256: str) -> bool:
        """Whether the object exists and matches; a store that cannot be reached or
        refuses is a StorageError (one line), not a list of mismatches."""
        try:
            data = self._get(uri)
        except CheckpointError:
            return False
        return decode_sha(data) == sha256

    def damaged(self, uri: str, sha256: str | None) -> bool:
        try:
            data = self._get(uri)
        except CheckpointError:
            return True    # no such key, the bucket being there
        except StorageError:
            return False   # away or refusing: an outage, not damage
        return sha256 is not None and decode_sha(data) != sha256

    def delete(self, uri: str) -> None:
        key = self.key(uri)
        self._call("DeleteObject", self.describe(uri),
                   lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def collect(self, folder: str, keep: Iterable[str], grace_seconds: float) -> list[str]:
        """Delete the `.pt` objects under `<prefix>/<folder>/` not in `keep` once older
        than the grace period, by the server's clock (the Date of the listing answer,
        against LastModified: a worker's clock skew cannot shorten the grace)."""
        keep_keys = {self.key(k) for k in keep}
        base = self.key(folder) + "/"
        where = f"s3://{self.bucket}/{base}"
        doomed: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
            if token:
                args["ContinuationToken"] = token
            page: dict[str, Any] = self._call(
                "ListObjectsV2", where, functools.partial(self.client.list_objects_v2, **args))
            now = _server_time(page)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key[len(base):]
                if key in keep_keys or "/" in name or not name.endswith(".pt"):
                    continue
                if (now - obj["LastModified"]).total_seconds() < grace_seconds:
                    continue
                doomed.append(key)
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        removed: list[str] = []
        for i in range(0, len(doomed), DELETE_BATCH):
            batch = doomed[i:i + DELETE_BATCH]
            answer: dict[str, Any] = self._call("DeleteObjects", where, functools.partial(
                self.client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}))
            failed = {e["Key"] for e in answer.get("Errors", [])}
            for e in answer.get("Errors", [])[:3]:
                log.warning("checkpoint GC: deleting s3://%s/%s failed, left for later: %s",
                            self.bucket, e.get("Key"), e.get("Code"))
            removed += [k[len(base):] for k in batch if k not in failed]
        return removed

    def probe(self, folder: str | None = None) -> None:
        """Create, read back and delete a small object under the prefix (or under its
        `folder`, a search's): the bucket exists, the credentials are accepted and may
        write, read and delete."""
        name = f".renas-probe-{uuid.uuid4().hex[:12]}"
        uri = f"{folder}/{name}" if folder else name
        key, where = self.key(uri), self.describe(uri)
        data = b"renas-db probe"
        self._call("PutObject", where, lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*"))
        try:
            if self._get(uri) != data:
                raise StorageError(f"{where}: the probe object read back differs")
        finally:
            self._call("DeleteObject", where,
                       lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def exists(self, uri: str) -> bool:
        key = self.key(uri)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except self._exc.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise
            return True
        return self._call("HeadObject", self.describe(uri), head)

    # -- plumbing -----------------------------------------------------------------------
    def _get(self, uri: str) -> bytes:
        key, where = self.key(uri), self.describe(uri)

        def get() -> bytes:
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=key)
            except self._exc.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    raise CheckpointError(f"checkpoint {where} is missing") from None
                raise
            return bytes(answer["Body"].read())  # inside the retry: a dropped body too
        return self._call("GetObject", where, get)

    def _stored_sha(self, key: str) -> str | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except self._exc.ClientError:
            return None
        return head.get("Metadata", {}).get("sha256")

    def _call(self, op: str, where: str, fn: Callable[[], T]) -> T:
        """fn(), transient errors retried with capped exponential backoff (0.2 s
        doubling to 5 s, jittered) for RETRY_SECONDS; other errors one line at once."""
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return fn()
            except CheckpointError:
                raise
            except Exception as exc:
                transient = self._transient(exc)
                text = _describe(exc)
                if not transient:
                    raise StorageError(f"checkpoint store s3://{self.bucket}: {op} {where} "
                                       f"refused: {text}") from None
                if time.monotonic() + delay > deadline:
                    raise StorageError(f"checkpoint store s3://{self.bucket} unreachable "
                                       f"for {RETRY_SECONDS:g} s ({op} {where}): "
                                       f"{text}") from None
                log.warning("checkpoint store: %s %s: %s; retrying in %.1fs", op, where,
                            text, delay)
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)

    def _transient(self, exc: Exception) -> bool:
        e = self._exc
        if isinstance(exc, e.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return _code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(exc, (e.NoCredentialsError, e.PartialCredentialsError,
                            e.NoRegionError, e.ParamValidationError)):
            return False
        # refused, reset or timed-out connections; a body cut off mid-read
        return isinstance(exc, (e.HTTPClientError, e.ConnectionError,
                                e.IncompleteReadError, OSError))


def decode_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    """One line about a botocore error, with a hint for the usual mistakes; never the
    credentials (botocore's messages do not carry them)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = _code(exc)
        hint = HINTS.get(code)
        msg = response.get("Error", {}).get("Message") or ""
        return f"{code}: {hint}" if hint else f"{code} {msg}".strip()
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return ("no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or a role)")
    return f"{name}: {' '.join(str(exc).split())[:300]}"


def _server_time(answer: dict[str, Any]) -> datetime:
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            pass
    return datetime.now(timezone.utc)


_stores: dict[str, S3Store] = {}
_lock = threading.Lock()


def shared_store(root: str) -> S3Store:
    """One store (one boto3 client, thread-safe) per root and process."""
    with _lock:
        store = _stores.get(root)
        if store is None:
            store = _stores[root] = S3Store(root)
        return store
