"""Object storage for bytes: content-addressed keys (sha256); local disk (embedded default) or MinIO/S3."""

from storage.base import ObjectStore, Pending, StoredObject, key_for
from storage.local import LocalDiskStore
from storage.minio import MinioStore, StorageError, StorageUnavailable

__all__ = ["LocalDiskStore", "MinioStore", "ObjectStore", "Pending", "StorageError", "StorageUnavailable",
           "StoredObject", "key_for"]
