"""Checkpoint roots: a folder, or `s3://bucket/prefix` (object storage).

Pure parsing (no boto3, no torch): the search config validates a root with it."""
from __future__ import annotations

import re

from renas_db.errors import ConfigError

S3_SCHEME = "s3://"
# S3's bucket naming rules (3-63 characters, lower case, digits, dots and hyphens)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_s3(root: str) -> bool:
    return root.startswith(S3_SCHEME)


def is_uri(root: str) -> bool:
    """A root with a scheme (`s3://...`) rather than a folder."""
    return _SCHEME.match(root) is not None


def parse_s3(root: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix has no slash at either end
    and may be empty."""
    rest = root[len(S3_SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"checkpoint root {root!r}: {bucket!r} is not a valid S3 bucket "
                          "name (3-63 characters: lower-case letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"checkpoint root {root!r}: the prefix may not hold empty, '.' "
                          "or '..' parts")
    return bucket, prefix


def check(root: str) -> None:
    """Refuse a root that is neither a folder nor a valid s3:// URI."""
    if is_s3(root):
        parse_s3(root)
        return
    m = _SCHEME.match(root)
    if m:
        raise ConfigError(f"checkpoint root {root!r}: the scheme {m.group(1)}:// is not "
                          "supported; use a folder or s3://bucket/prefix (also for GCS, "
                          "MinIO or Ceph through their S3-compatible endpoint)")
