"""The data-access layer: the only code that names the catalogue's tables.

``collections``, ``items``, ``embeddings`` (partitioned by space) and ``embedding_spaces``
are read and written through the modules of this package; the rest of ``catalog`` and
all of ``api`` call them instead of writing SQL that names a table. Filters render
themselves for items or for embedding rows (:mod:`embcat.catalog.filters`).
"""
