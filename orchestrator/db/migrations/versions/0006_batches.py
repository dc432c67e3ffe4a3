"""batches: many jobs submitted as one request (jobs.batch_id, jobs.batch_item)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('batches',
                    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('label', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('template', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('items', sa.Integer(), nullable=False),
                    sa.Column('request', sa.JSON(), nullable=True),
                    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
                    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id']),
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_batches_api_key_id', 'batches', ['api_key_id'])
    op.create_index('ix_batches_created_at', 'batches', ['created_at'])
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('batch_item', sa.Integer(), nullable=True))
        batch_op.create_index('ix_jobs_batch_id', ['batch_id'])
        batch_op.create_foreign_key('fk_jobs_batch_id_batches', 'batches', ['batch_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_batch_id_batches', type_='foreignkey')
        batch_op.drop_index('ix_jobs_batch_id')
        batch_op.drop_column('batch_item')
        batch_op.drop_column('batch_id')
    op.drop_index('ix_batches_created_at', table_name='batches')
    op.drop_index('ix_batches_api_key_id', table_name='batches')
    op.drop_table('batches')
