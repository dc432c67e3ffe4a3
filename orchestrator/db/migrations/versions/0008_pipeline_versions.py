"""pipeline versions: immutable chains of template steps (pipeline_versions)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pipeline_versions',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('definition', sa.JSON(), nullable=False),
                    sa.Column('step_order', sa.JSON(), nullable=False),
                    sa.Column('templates', sa.JSON(), nullable=False),
                    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('published_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('deprecated', sa.Boolean(), nullable=False),
                    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('name', 'version'))
    op.create_index('ix_pipeline_versions_name', 'pipeline_versions', ['name'])


def downgrade() -> None:
    op.drop_index('ix_pipeline_versions_name', table_name='pipeline_versions')
    op.drop_table('pipeline_versions')
