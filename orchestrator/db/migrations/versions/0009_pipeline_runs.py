"""pipeline runs: a run of a pipeline version and its steps (pipeline_runs, pipeline_run_steps)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table('pipeline_runs',
                    sa.Column('id', text(), nullable=False),
                    sa.Column('pipeline_version_id', sa.Integer(), nullable=False),
                    sa.Column('pipeline', text(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('content_hash', text(), nullable=False),
                    sa.Column('state', text(), nullable=False),
                    sa.Column('inputs', sa.JSON(), nullable=False),
                    sa.Column('params', sa.JSON(), nullable=False),
                    sa.Column('outputs', sa.JSON(), nullable=False),
                    sa.Column('reuse', sa.Boolean(), nullable=False),
                    sa.Column('priority', sa.Integer(), nullable=False),
                    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
                    sa.Column('error', sa.JSON(), nullable=True),
                    sa.Column('api_key_id', text(), nullable=True),
                    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.ForeignKeyConstraint(['pipeline_version_id'], ['pipeline_versions.id']),
                    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id']),
                    sa.PrimaryKeyConstraint('id'))
    for column in ('pipeline_version_id', 'pipeline', 'state', 'api_key_id', 'created_at'):
        op.create_index(f'ix_pipeline_runs_{column}', 'pipeline_runs', [column])
    op.create_table('pipeline_run_steps',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('run_id', text(), nullable=False),
                    sa.Column('step', text(), nullable=False),
                    sa.Column('position', sa.Integer(), nullable=False),
                    sa.Column('template', text(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('state', text(), nullable=False),
                    sa.Column('job_id', text(), nullable=True),
                    sa.Column('reused_from_job', text(), nullable=True),
                    sa.Column('reuse_key', text(), nullable=True),
                    sa.Column('params', sa.JSON(), nullable=True),
                    sa.Column('outputs', sa.JSON(), nullable=False),
                    sa.Column('error', sa.JSON(), nullable=True),
                    sa.Column('past_jobs', sa.JSON(), nullable=False),
                    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.ForeignKeyConstraint(['run_id'], ['pipeline_runs.id']),
                    sa.ForeignKeyConstraint(['job_id'], ['jobs.id']),
                    sa.ForeignKeyConstraint(['reused_from_job'], ['jobs.id']),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('run_id', 'step'),
                    sa.UniqueConstraint('job_id'))
    for column in ('run_id', 'state', 'reuse_key'):
        op.create_index(f'ix_pipeline_run_steps_{column}', 'pipeline_run_steps', [column])


def downgrade() -> None:
    for column in ('run_id', 'state', 'reuse_key'):
        op.drop_index(f'ix_pipeline_run_steps_{column}', table_name='pipeline_run_steps')
    op.drop_table('pipeline_run_steps')
    for column in ('pipeline_version_id', 'pipeline', 'state', 'api_key_id', 'created_at'):
        op.drop_index(f'ix_pipeline_runs_{column}', table_name='pipeline_runs')
    op.drop_table('pipeline_runs')
