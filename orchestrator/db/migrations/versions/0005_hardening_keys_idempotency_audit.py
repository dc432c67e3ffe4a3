"""api key expiry and last use, idempotent submits, attempt ownership and abandonment, audit trail

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_unique_constraint('uq_jobs_api_key_idempotency', ['api_key_id', 'idempotency_key'])
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('abandoned', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('counts', sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table('audit_events',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('key_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
                    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
                    sa.Column('data', sa.JSON(), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.create_index('ix_audit_events_api_key_id', 'audit_events', ['api_key_id'])
    op.create_index('ix_audit_events_action', 'audit_events', ['action'])
    op.create_index('ix_audit_events_target', 'audit_events', ['target'])


def downgrade() -> None:
    op.drop_table('audit_events')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_column('counts')
        batch_op.drop_column('abandoned')
        batch_op.drop_column('api_key_id')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_jobs_api_key_idempotency', type_='unique')
        batch_op.drop_column('request_hash')
        batch_op.drop_column('idempotency_key')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('created_by')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
