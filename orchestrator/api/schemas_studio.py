"""Response bodies of the routes the studio (the browser app) relies on: who the calling key is."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MeOut(BaseModel):
    """The calling key, and what its roles let it do (the studio offers only that; the service enforces it)."""

    id: str
    name: str
    roles: list[str]
    can_run: bool = Field(description="Upload inputs, submit and cancel jobs and batches.")
    can_export: bool = Field(description="Download artifact bytes (/content, /url); any key may preview.")
    can_publish: bool = Field(description="Publish template versions, approve or withdraw models.")
    can_train: bool = Field(description="A trainer's key: claim training jobs and report on them.")
    is_admin: bool = Field(description="Everything: keys, servers, the audit trail, deletions.")
