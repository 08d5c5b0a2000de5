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


class DataError(RenasError):
    """A dataset is missing or damaged."""


class DeviceError(RenasError):
    """The requested device does not exist."""


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
