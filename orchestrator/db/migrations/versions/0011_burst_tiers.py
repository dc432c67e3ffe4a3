"""burst tiers: servers' kind, tier, cost and capacity; attempts' tier, rate, cost, GPU seconds and remote job id;
jobs' local_only; artifacts' provider and remote job id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    with op.batch_alter_table('servers') as b:
        b.add_column(sa.Column('kind', TEXT(), nullable=False, server_default='comfyui'))
        b.add_column(sa.Column('tier', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('cost_per_gpu_s', sa.Float(), nullable=False, server_default='0'))
        b.add_column(sa.Column('cold_start_s', sa.Float(), nullable=False, server_default='0'))
        b.add_column(sa.Column('max_inflight', sa.Integer(), nullable=True))
    with op.batch_alter_table('attempts') as b:
        b.add_column(sa.Column('tier', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('rate', sa.Float(), nullable=False, server_default='0'))
        b.add_column(sa.Column('cost', sa.Float(), nullable=False, server_default='0'))
        b.add_column(sa.Column('gpu_s', sa.Float(), nullable=True))
        b.add_column(sa.Column('remote_id', TEXT(), nullable=True))
        b.create_index('ix_attempts_tier_started', ['tier', 'started_at'])
    with op.batch_alter_table('jobs') as b:
        b.add_column(sa.Column('local_only', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('artifacts') as b:
        b.add_column(sa.Column('provider', TEXT(), nullable=True))
        b.add_column(sa.Column('remote_job_id', TEXT(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('artifacts') as b:
        b.drop_column('remote_job_id')
        b.drop_column('provider')
    with op.batch_alter_table('jobs') as b:
        b.drop_column('local_only')
    with op.batch_alter_table('attempts') as b:
        b.drop_index('ix_attempts_tier_started')
        for c in ('remote_id', 'gpu_s', 'cost', 'rate', 'tier'):
            b.drop_column(c)
    with op.batch_alter_table('servers') as b:
        for c in ('max_inflight', 'cold_start_s', 'cost_per_gpu_s', 'tier', 'kind'):
            b.drop_column(c)
