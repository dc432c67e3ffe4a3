"""Object storage for bytes: content-addressed keys (sha256), local disk as the embedded default."""

from storage.base import ObjectStore, StoredObject, key_for
from storage.local import LocalDiskStore

__all__ = ["LocalDiskStore", "ObjectStore", "StoredObject", "key_for"]
