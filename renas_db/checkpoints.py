"""The checkpoint stores: atomic writes, verified reads, garbage collection.

Two stores share one interface (`CheckpointStorage`) and one serialisation (`encode`,
`decode`); `open_store(root)` picks one by the root's scheme: a folder (`CheckpointStore`,
here) or `s3://bucket/prefix` (`renas_db.s3store.S3Store`, object storage).

A file write goes to a temporary file in the target folder, is fsynced, renamed, and the
folder fsynced: a crash at any moment leaves either the whole file or none under its
name. Reads verify the sha256 and load with weights_only=True (no code can run).

On disk a network's state is packed (`PackedState`): one buffer per dtype and an index of
(name, buffer, offset, shape), because torch.save writes a record per tensor and a cell
network has hundreds of small ones (560 at N=1 F=8: 21 ms to write, 51 ms to read, against
about 3 and 4 ms packed). Checkpoints of the first format (a plain state dict) still load."""
from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import torch

from renas_db import levers, store_roots
from renas_db.errors import CheckpointError, CheckpointRootError, DiskFullError
from renas_db.jobs import ClaimedJob

FORMAT = "renas-checkpoint-2"        # the state packed, one buffer per dtype
PLAIN_FORMAT = "renas-checkpoint-1"  # the state as torch.save writes a dict: still read
TMP_PREFIX = ".tmp-"


class CheckpointStorage(Protocol):
    """What workers, the garbage collection and `check` need of a checkpoint store.
    URIs are relative (`<search>/<job id>-<token[:8]>.pt`); the root is the store's."""

    def describe(self, uri: str) -> str:
        """Where the checkpoint lives, for messages (a path or an s3:// URL)."""
        ...

    def save(self, uri: str, payload: dict[str, Any]) -> str:
        """Write the whole checkpoint atomically; return its sha256."""
        ...

    def load(self, uri: str, sha256: str | None) -> dict[str, Any]:
        """Read, verify against `sha256` (the database's), unpickle without code.
        Missing, tampered or unreadable: CheckpointError."""
        ...

    def verify(self, uri: str, sha256: str) -> bool:
        ...

    def damaged(self, uri: str, sha256: str | None) -> bool:
        """Missing or not matching `sha256`, with the store itself reachable (a store
        that is away is an outage, not damage: False)."""
        ...

    def delete(self, uri: str) -> None:
        ...

    def collect(self, folder: str, keep: Iterable[str], grace_seconds: float) -> list[str]:
        """Remove the checkpoints of `folder` not in `keep` once older than the grace
        period; return their names."""
        ...

    def probe(self, folder: str | None = None) -> None:
        """Write, read back and delete a small object at the root (or in its `folder`, a
        search's): this host can use the store. Raises a one-line error otherwise."""
        ...

    def exists(self, uri: str) -> bool:
        ...


def relative_parts(uri: str) -> tuple[str, ...]:
    """The parts of a checkpoint URI, which must be relative and stay inside the root."""
    rel = PurePosixPath(uri)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise CheckpointError(f"checkpoint URI must be a relative path: {uri!r}")
    return rel.parts


class PackedState:
    """A state dict as one contiguous CPU buffer per dtype plus an index. Packing copies
    (torch.cat always allocates), so the buffers are the packer's own even when the
    tensors were a live network's, and a GPU network moves to the host in one copy per
    dtype instead of one per tensor."""

    def __init__(self, index: list[list[Any]], buffers: dict[str, torch.Tensor]) -> None:
        self.index, self.buffers = index, buffers

    @classmethod
    def pack(cls, state: Mapping[str, torch.Tensor]) -> PackedState:
        parts: dict[str, list[torch.Tensor]] = {}
        sizes: dict[str, int] = {}
        index: list[list[Any]] = []
        for name, tensor in state.items():
            key = str(tensor.dtype).removeprefix("torch.")
            offset = sizes.get(key, 0)
            index.append([name, key, offset, list(tensor.shape)])
            # reshape copies a channels_last tensor into its logical order
            parts.setdefault(key, []).append(tensor.detach().reshape(-1))
            sizes[key] = offset + tensor.numel()
        return cls(index, {k: torch.cat(v).to("cpu") for k, v in parts.items()})

    def unpack(self) -> dict[str, torch.Tensor]:
        """The state dict: views of the buffers, in the order it was packed."""
        return {name: self.buffers[key][offset:offset + math.prod(shape)].view(shape)
                for name, key, offset, shape in self.index}

    def to_plain(self) -> dict[str, Any]:
        return {"index": self.index, "buffers": self.buffers}

    @classmethod
    def from_plain(cls, data: Any, where: str) -> PackedState:
        """From what torch.load gave back; anything malformed is a CheckpointError."""
        try:
            packed = cls(list(data["index"]), dict(data["buffers"]))
            for name, key, offset, shape in packed.index:
                buffer = packed.buffers[key]
                if not (isinstance(name, str) and isinstance(buffer, torch.Tensor)
                        and buffer.dim() == 1 and isinstance(offset, int) and 0 <= offset
                        and all(isinstance(d, int) and d >= 0 for d in shape)
                        and offset + math.prod(shape) <= buffer.numel()):
                    raise ValueError(name)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {where} has a malformed packed state") from None
        return packed


def encode(payload: dict[str, Any]) -> tuple[bytes, str]:
    """A checkpoint's bytes and their sha256. `payload["state"]` is a state dict (on
    any device) or a PackedState."""
    state = payload["state"]
    buf = io.BytesIO()
    if levers.old("pack"):  # bench/worker_overhead.py's old path: a record per tensor
        plain = state.unpack() if isinstance(state, PackedState) else state
        torch.save({**payload, "format": PLAIN_FORMAT, "state": plain}, buf)
    else:
        packed = state if isinstance(state, PackedState) else PackedState.pack(state)
        torch.save({**payload, "format": FORMAT, "state": packed.to_plain()}, buf)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes, where: str, sha256: str | None) -> dict[str, Any]:
    """The payload of a checkpoint's bytes, verified against the database's sha256; its
    "state" is a state dict whichever format the file has."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint {where} does not match its sha256 (tampered "
                              "or damaged)")
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"checkpoint {where} is unreadable or carries code: "
                              f"{str(exc).splitlines()[0][:160]}") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, PLAIN_FORMAT):
        raise CheckpointError(f"{where} is not a renas-db checkpoint")
    if payload["format"] == FORMAT:
        payload["state"] = PackedState.from_plain(payload.get("state"), where).unpack()
    return payload


class CheckpointStore:
    """The checkpoint store in a folder (a local disk or a shared mount)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, uri: str) -> Path:
        return self.root.joinpath(*relative_parts(uri))

    def describe(self, uri: str) -> str:
        return str(self.path(uri))

    def save(self, uri: str, payload: dict[str, Any]) -> str:
        """Write atomically; return the sha256 of the file."""
        data, sha = encode(payload)
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return sha

    def probe(self, folder: str | None = None) -> None:
        """Whether this host can use the store: the root (or its `folder`, a search's)
        made if missing, then a small file written, fsynced, read back and deleted.
        CheckpointRootError (missing, not writable) or DiskFullError, each one line."""
        base = self.path(folder) if folder else self.root
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            denied = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
            raise root_error(base, exc, "cannot be made: its folder is not writable" if denied
                             else "does not exist and cannot be created") from None
        path = base / f"{TMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
        data = b"renas-db probe\n"
        try:
            try:
                with open(path, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                if path.read_bytes() != data:
                    raise OSError(errno.EIO, "the probe file read back differs")
            finally:
                if path.exists():
                    path.unlink()
        except OSError as exc:
            raise root_error(base, exc, "is not writable") from None

    def load(self, uri: str, sha256: str | None) -> dict[str, Any]:
        path = self.path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is missing") from None
        return decode(data, str(path), sha256)

    def verify(self, uri: str, sha256: str) -> bool:
        try:
            return hashlib.sha256(self.path(uri).read_bytes()).hexdigest() == sha256
        except (OSError, CheckpointError):
            return False

    def damaged(self, uri: str, sha256: str | None) -> bool:
        try:
            if not self.root.is_dir():
                return False  # the mount is away: an outage
            data = self.path(uri).read_bytes()
        except FileNotFoundError:
            return True
        except (OSError, CheckpointError):
            return False
        return sha256 is not None and hashlib.sha256(data).hexdigest() != sha256

    def exists(self, uri: str) -> bool:
        return self.path(uri).is_file()

    def delete(self, uri: str) -> None:
        try:
            self.path(uri).unlink()
        except FileNotFoundError:
            pass

    def collect(self, folder: str, keep: Iterable[str], grace_seconds: float) -> list[str]:
        """Remove files of `folder` (a search's folder) not in `keep`, and temporaries,
        once they are older than the grace period. Young files are never touched: they
        may be checkpoints committed after `keep` was read."""
        keep_set = {str(self.path(k)) for k in keep}
        base = self.path(folder)
        if not base.is_dir():
            return []
        removed = []
        now = time.time()
        for p in base.iterdir():
            if not p.is_file() or str(p) in keep_set:
                continue
            if not (p.name.endswith(".pt") or p.name.startswith(TMP_PREFIX)):
                continue
            try:
                if now - p.stat().st_mtime < grace_seconds:
                    continue
                p.unlink()
                removed.append(p.name)
            except FileNotFoundError:
                continue
        return removed



class CheckpointCache:
    """The checkpoints a worker wrote or read recently, decoded, in memory: a tournament
    draws the same few parents again and again, and the common case then reads, hashes
    and unpickles nothing. Bounded by the bytes of their tensors (least
    recently used out first). An entry is the payload together with the sha256 of the
    exact bytes written to (or read from) the store; a load is served only when that
    digest is the database's, so a hit returns what a verified disk read would."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, tuple[str, int, dict[str, Any]]] = OrderedDict()
        self._bytes = 0

    def save(self, store: CheckpointStorage, uri: str, payload: dict[str, Any]) -> str:
        """`store.save`, keeping the payload under the digest of the bytes written. The
        payload's tensors may be a live network's: what is kept is the packed copy."""
        if levers.old("pack"):  # the old path: a CPU copy per tensor, saved as a dict
            kept = {**payload, "state": _copies(payload["state"])}
            sha = store.save(uri, kept)
        else:
            packed = PackedState.pack(payload["state"])  # our own copies of the tensors
            sha = store.save(uri, {**payload, "state": packed})  # the digest of these bytes
            kept = {**payload, "state": packed.unpack()}
        self._put(store.describe(uri), sha, _state_bytes(kept), kept)
        return sha

    def load(self, store: CheckpointStorage, uri: str, sha256: str | None) -> dict[str, Any]:
        """The cached payload when its digest is `sha256`, else `store.load` (kept)."""
        key = store.describe(uri)
        entry = self._entries.get(key)
        if entry is not None and sha256 is not None and entry[0] == sha256:
            self._entries.move_to_end(key)
            self.hits += 1
            return {**entry[2], "state": dict(entry[2]["state"])}
        self.misses += 1
        payload = store.load(uri, sha256)
        if sha256 is not None:
            self._put(key, sha256, _state_bytes(payload), payload)
        return payload

    def _put(self, key: str, sha: str, size: int, payload: dict[str, Any]) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self.max_bytes:
            return
        self._entries[key] = (sha, size, payload)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped, _) = self._entries.popitem(last=False)
            self._bytes -= dropped


def _copies(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in state.items()}


def _state_bytes(payload: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in payload["state"].values())


def open_store(root: str | Path) -> CheckpointStorage:
    """The store of a checkpoint root, picked by its scheme: `s3://bucket/prefix` is
    object storage (boto3, the `renas-db[s3]` extra), anything else a folder. S3 stores
    are kept per root, so a process makes one client per bucket."""
    text = str(root)
    if store_roots.is_s3(text):
        from renas_db.s3store import shared_store
        return shared_store(text)
    store_roots.check(text)  # another scheme: one clear line
    return CheckpointStore(root)


def store_for(job: ClaimedJob, root_override: str | None) -> CheckpointStorage:
    """The store of the job's search, or of this host's override of its root (a shared
    mount seen under another path on this machine, or another bucket or prefix)."""
    return store_at(job.checkpoint_root, root_override)


def store_at(root: str, root_override: str | None) -> CheckpointStorage:
    """The store of a search's checkpoint root, or of this host's override of it."""
    return open_store(root_override or root)


def root_error(folder: Path, exc: OSError, what: str) -> CheckpointRootError | DiskFullError:
    """The host error of an OSError at a checkpoint folder: a full disk, else `what`."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"checkpoint folder {folder}: no space left ({reason})")
    return CheckpointRootError(f"checkpoint folder {folder} {what} ({reason})")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. some network mounts) refuse fsync on folders
    finally:
        os.close(fd)
