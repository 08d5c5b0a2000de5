"""The project's exceptions. The CLI prints any RenasError as one line and exits 1."""
from __future__ import annotations


class RenasError(Exception):
    """Base of every error a user can cause or fix."""


class ConfigError(RenasError):
    """A search configuration value is unknown or out of range."""


class GenotypeError(RenasError):
    """A genotype text, JSON document or action list is malformed."""


class NotFoundError(RenasError):
    """A named search, individual or file does not exist."""


class AlreadyExistsError(RenasError):
    """A search with that name exists already."""


class SchemaError(RenasError):
    """The database schema is missing, outdated or newer than this renas-db."""


class DatabaseUnavailable(RenasError):
    """The database cannot be reached; retryable."""


class ConflictError(RenasError):
    """A concurrent writer won (serialisation failure, lock timeout); retryable."""


class IntegrityViolation(RenasError):
    """A unique or foreign-key constraint refused a write: never retried (a retry would
    hit it again)."""


class StateError(RenasError):
    """An operation is not allowed in the current state (e.g. resume a finished search)."""


class CheckpointError(RenasError):
    """A checkpoint is missing, tampered with, or does not match its genotype."""


class HostError(RenasError):
    """An error of this host, not of the job: its data, its checkpoint root, its device
    or its disk. It never costs a job an attempt: the job goes back to the queue for
    another worker, and this worker stops serving the search (docs/design.md, 3.4
    "Fitness of a worker"). `cause` names it in the worker's one line; `fix` says what
    to do on this host."""
    cause = "host"
    fix = "fix this host"


class DataError(HostError):
    """A dataset is missing or damaged."""
    cause = "data"
    fix = ("give this worker the folder where the data lives on this host with "
           "`renas-db worker --data-dir DIR`")


class DeviceError(HostError):
    """The requested device does not exist or does not work."""
    cause = "device"
    fix = ("check the GPU and its driver (nvidia-smi), or start this worker with another "
           "--gpu or with --cpu")


class CheckpointRootError(HostError):
    """The checkpoint root is missing (and cannot be made) or is not writable."""
    cause = "checkpoint root"
    fix = ("mount the shared checkpoint folder on this host, writable, or give this worker "
           "where it lives here with `renas-db worker --checkpoint-root DIR`")


class ObjectStoreError(CheckpointRootError):
    """An object-storage checkpoint root (s3://) refuses this host or stays away."""
    cause = "checkpoint store"
    fix = ("check this host's endpoint and credentials (AWS_ENDPOINT_URL, AWS_PROFILE, "
           "~/.aws), or give this worker another root with "
           "`renas-db worker --checkpoint-root`")


class DiskFullError(HostError):
    """This host's disk (or quota) is full."""
    cause = "disk"
    fix = "free space on this host's disk (or raise its quota)"


class SnapshotError(RenasError):
    """A controller snapshot is damaged or belongs to a different configuration."""


class LeaseLost(RenasError):
    """Another worker took over this job: nothing may be committed."""


class TrainingStopped(RenasError):
    """Training was stopped between batches by the stop flag."""


class MissingDependency(RenasError):
    """A program or package a command needs is not installed (e.g. Graphviz's dot)."""


class StorageError(RenasError, OSError):
    """The checkpoint store refused a request (credentials, a missing bucket, no
    permission) or stayed away past its retries. An OSError too, like a folder's I/O
    error: the callers that tolerate a folder that is away tolerate it the same way."""
