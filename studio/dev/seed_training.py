"""Adds a finished training run with loss events and a sample to the demo service's database, so the
Training pages have something to draw: python studio/dev/seed_training.py <home>  (prints the run's id)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from sqlmodel import Session, create_engine, select

from orchestrator.core.states import JobState
from orchestrator.db.tables import Artifact, Job, JobEvent, new_id


def main() -> None:
    home = Path(sys.argv[1])
    engine = create_engine(f"sqlite:///{home / 'home' / 'medialab.db'}")
    with Session(engine) as s:
        picture = s.exec(select(Artifact).where(Artifact.role == "output")).first()
        job = Job(kind="training", template="train-lora", version=1, state=JobState.RUNNING, progress=0.8,
                  params={"name": "demo-actor", "dataset": picture.id if picture else "none",
                          "base_model": "sd15.safetensors"})
        s.add(job)
        s.flush()
        for step in range(1, 81):
            loss = 0.12 + 0.3 * math.exp(-step / 20) + 0.01 * math.sin(step)
            s.add(JobEvent(job_id=job.id, kind="progress", reason=f"step {step}/100",
                           data={"step": step, "total": 100, "loss": loss, "fraction": step / 100}))
        if picture:
            fields = picture.model_dump(exclude={"id", "origin", "created_at", "job_id", "output_name"})
            s.add(Artifact(**fields, id=new_id(), origin=f"seed-sample:{job.id}", job_id=job.id, output_name="sample"))
        s.commit()
        print(job.id)


if __name__ == "__main__":
    main()
