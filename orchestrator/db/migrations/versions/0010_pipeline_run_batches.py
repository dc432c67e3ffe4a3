"""pipeline run batches: a pipeline run may be an item of a batch (pipeline_runs.batch_id, batch_item)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as b:
        b.add_column(sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        b.add_column(sa.Column('batch_item', sa.Integer(), nullable=True))
        b.create_foreign_key('fk_pipeline_runs_batch_id_batches', 'batches', ['batch_id'], ['id'])
        b.create_index('ix_pipeline_runs_batch_id', ['batch_id'])


def downgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as b:
        b.drop_index('ix_pipeline_runs_batch_id')
        b.drop_constraint('fk_pipeline_runs_batch_id_batches', type_='foreignkey')
        b.drop_column('batch_item')
        b.drop_column('batch_id')
