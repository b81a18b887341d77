"""The data-access layer: the only code that names the catalogue's tables.

Every table of the schema (``collections``, ``items`` and ``item_tombstones``,
``embeddings`` (partitioned by space), ``embedding_spaces``, ``publishes``, the shards',
the mirror's, the export's, the imagery's and the API keys') is read and written through
the modules of this package; the rest of ``catalog``, all of ``api`` and the CLI call them
instead of writing SQL that names a table (``tests/test_store_boundary.py`` holds the
rule). Filters render themselves for items or for embedding rows
(:mod:`embcat.catalog.filters`); the reads here take them rendered.
"""
