from fastapi import APIRouter

from orchestrator import service
from orchestrator.api.deps import AnyKey, SessionDep
from orchestrator.api.schemas import TemplateOut, TemplateVersionOut
from orchestrator.errors import NotFound
from orchestrator.models import TemplateVersionRow

router = APIRouter(prefix="/templates", tags=["templates"])


def version_out(row: TemplateVersionRow, full: bool = False) -> TemplateVersionOut:
    out = TemplateVersionOut(name=row.name, version=row.version, title=row.title,
                             description=row.manifest.get("description", ""), kind=row.kind,
                             content_hash=row.content_hash, created_at=row.created_at)
    if full:
        out.params_schema = service.template_from_row(row).params_schema()
        out.manifest, out.graph = row.manifest, row.graph
    return out


@router.get("", response_model=list[TemplateOut])
def list_templates(session: SessionDep, _: AnyKey) -> list[TemplateOut]:
    by_name: dict[str, list[TemplateVersionRow]] = {}
    for row in service.template_rows(session):
        by_name.setdefault(row.name, []).append(row)
    return [TemplateOut(name=name, latest=version_out(rows[-1]), versions=[r.version for r in rows])
            for name, rows in by_name.items()]


@router.get("/{name}", response_model=TemplateVersionOut)
def get_latest(name: str, session: SessionDep, _: AnyKey) -> TemplateVersionOut:
    """The newest version, with its parameter schema."""
    row, _t = service.get_template(session, name)
    return version_out(row, full=True)


@router.get("/{name}/versions/{version}", response_model=TemplateVersionOut)
def get_version(name: str, version: int, session: SessionDep, _: AnyKey) -> TemplateVersionOut:
    if version < 1:
        raise NotFound(f"template '{name}' has no version {version}")
    row, _t = service.get_template(session, name, version)
    return version_out(row, full=True)
