"""Adds N copies of the demo service's output artifacts (same bytes, new rows) to its database, to check
that the gallery stays fast with real amounts of data: python studio/dev/seed_artifacts.py <home> [N]."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, create_engine, select

from orchestrator.db.tables import Artifact, new_id


def main() -> None:
    home, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    engine = create_engine(f"sqlite:///{home / 'home' / 'medialab.db'}")
    with Session(engine) as s:
        sources = s.exec(select(Artifact).where(Artifact.role == "output")).all()
        for i in range(n):
            src = sources[i % len(sources)]
            fields = src.model_dump(exclude={"id", "origin", "created_at"})
            when = src.created_at - timedelta(seconds=i + 1)
            s.add(Artifact(**fields, id=new_id(), origin=f"seed:{i}", created_at=when))
        s.commit()
    print(f"added {n} artifacts")


if __name__ == "__main__":
    main()
