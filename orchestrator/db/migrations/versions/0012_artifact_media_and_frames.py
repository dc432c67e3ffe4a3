"""artifacts' media facts (a video's frame count, frame rate and duration) and a frame's place in its video
(frame index and time code)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('artifacts') as b:
        b.add_column(sa.Column('frames', sa.Integer(), nullable=True))
        b.add_column(sa.Column('fps', sa.Float(), nullable=True))
        b.add_column(sa.Column('duration_s', sa.Float(), nullable=True))
        b.add_column(sa.Column('frame_index', sa.Integer(), nullable=True))
        b.add_column(sa.Column('time_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('artifacts') as b:
        for column in ('time_s', 'frame_index', 'duration_s', 'fps', 'frames'):
            b.drop_column(column)
