"""Every index kind searches exactly below sqrt(candidates x N) filtered rows.

Why (issue 17): the bar below which a filtered search computes every distance was
sqrt(candidates x N) for the binary kinds but only 0.3 % of N for HNSW over halfvec. On
the isotropic mixture at 1M x 768 (benchmarks/README.md, Scale, round 5) a 1 % bbox
(10k rows) therefore went to the HNSW graph: 36 ms at recall@10 0.69, where the exact scan
the binary kinds took for the same filter answered in 24 ms at 1.000. An iterative graph
scan under a filter of F rows visits about c x N / F nodes for its c results, whatever the
kind, so one bar for all: the application (``catalog.similarity_rank._exact_bar``) and
``embcat._similar_to_vector`` (the SQL surface's ``embcat.similar`` /
``embcat.similar_to_vector``) change together.

No data changes: the function is redefined (migration 0021's text with the kind test
removed); the downgrade restores 0021's.

Revision ID: 0027
Revises: 0024
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0027"
down_revision = "0024"
branch_labels = None
depends_on = None

LOAD_PGVECTOR = "SELECT '[1]'::vector;\n"

_BINARY_ONLY = (
    "CASE WHEN sp.index_kind <> 'hnsw-halfvec'\n"
    "                             THEN sqrt(greatest(300, 10 * k) * greatest(reltuples, 0))\n"
    "                             ELSE 0 END"
)
_EVERY_KIND = "sqrt(greatest(300, 10 * k) * greatest(reltuples, 0))"
_OLD_COMMENT = (
    "        -- binary kinds need their candidates, not k rows, from a filtered index scan:\n"
    "        -- exact up to sqrt(candidates * N) rows too (catalog.similarity._exact_bar)\n"
)
_NEW_COMMENT = (
    "        -- a filtered index scan visits about candidates * N / F index tuples, an exact\n"
    "        -- scan F rows: exact up to sqrt(candidates * N) rows, every kind\n"
    "        -- (catalog.similarity_rank._exact_bar, migration 0027)\n"
)


def _migration_0021() -> ModuleType:
    path = Path(__file__).with_name("0021_partitions.py")
    spec = importlib.util.spec_from_file_location("embcat_migration_0021", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_of_0021() -> str:
    """``embcat._similar_to_vector`` as migration 0021 defines it."""
    m = _migration_0021()
    return str(m._function_of_0014().replace(m._PARENT_ESTIMATE, m._PARTITION_ESTIMATE))


def _function_of_0027() -> str:
    old = _function_of_0021()
    assert old.count(_BINARY_ONLY) == 1 and old.count(_OLD_COMMENT) == 1
    return old.replace(_BINARY_ONLY, _EVERY_KIND).replace(_OLD_COMMENT, _NEW_COMMENT)


def upgrade() -> None:
    op.execute(LOAD_PGVECTOR + _function_of_0027())


def downgrade() -> None:
    op.execute(LOAD_PGVECTOR + _function_of_0021())
