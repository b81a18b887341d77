"""Stored STAC documents as the extension schemas they declare want them (issue 19).

Collections: ``emb:chip_layout.chip_size`` / ``.stride`` integers become ``[n, n]``; the
``processing:*`` fields move from the top level into a provider with the ``processor``
role (processing extension v1.2.0); ``summaries`` are added where missing (emb:type,
emb:dimensions, data_type, gsd); the MLM extension is no longer declared on the collection
(the encoder's MLM item is the ``emb:model`` link; ``mlm:name`` is kept as
``embcat:encoder``); ``emb:source-data`` links whose href is a path of the encoding
machine become ``file://`` URIs.
Items: ``emb:quantization.scale`` / ``.offset`` numbers become one-element arrays;
``derived_from`` links to a path become ``file://`` URIs. Only rows that need it are
rewritten. The downgrade restores the integer/number forms and the paths.

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None

MLM_14 = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
EMB = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"

# A path href as a file:// URI (the characters a URI path cannot hold are escaped).
FILE_URI = (
    "'file://' || replace(replace(replace(replace({h}, '%', '%25'), ' ', '%20'),"
    " '\"', '%22'), '\\', '%5C')"
)


def _links_sql(column: str, rel: str, forward: bool) -> str:
    href = "l->>'href'"
    if forward:
        cond = f"l->>'rel' = '{rel}' AND {href} LIKE '/%' AND {href} NOT LIKE '//%'"
        new = FILE_URI.format(h=href)
    else:
        cond = f"l->>'rel' = '{rel}' AND {href} LIKE 'file:///%'"
        new = (
            f"replace(replace(replace(replace(substr({href}, 8), '%5C', '\\'), '%22', '\"'),"
            " '%20', ' '), '%25', '%')"
        )
    return (
        f"(SELECT coalesce(jsonb_agg(CASE WHEN {cond} THEN jsonb_set(l, '{{href}}',"
        f" to_jsonb({new})) ELSE l END ORDER BY n), '[]'::jsonb)"
        f" FROM jsonb_array_elements({column}) WITH ORDINALITY AS t(l, n))"
    )


def _needs(column: str, rel: str, forward: bool) -> str:
    pattern = "^/[^/]" if forward else "^file:///"
    return (
        f"jsonb_typeof({column}) = 'array' AND {column} @? "
        f'\'$[*] ? (@.rel == "{rel}" && @.href like_regex "{pattern}")\''
    )


UPGRADE = f"""
-- collections: chip_layout sizes as [h, w]
UPDATE collections SET stac = jsonb_set(stac, '{{emb:chip_layout,chip_size}}',
    jsonb_build_array(stac->'emb:chip_layout'->'chip_size', stac->'emb:chip_layout'->'chip_size'))
WHERE jsonb_typeof(stac->'emb:chip_layout'->'chip_size') = 'number';
UPDATE collections SET stac = jsonb_set(stac, '{{emb:chip_layout,stride}}',
    jsonb_build_array(stac->'emb:chip_layout'->'stride', stac->'emb:chip_layout'->'stride'))
WHERE jsonb_typeof(stac->'emb:chip_layout'->'stride') = 'number';

-- collections: processing:* into a processor provider
UPDATE collections c SET stac = (c.stac - ARRAY(SELECT k FROM jsonb_object_keys(c.stac) k
        WHERE k LIKE 'processing:%'))
    || jsonb_build_object('providers', coalesce(c.stac->'providers', '[]'::jsonb)
        || jsonb_build_array(jsonb_build_object('name', 'embcat', 'roles',
           jsonb_build_array('processor')) || (SELECT jsonb_object_agg(key, value)
           FROM jsonb_each(c.stac) WHERE key LIKE 'processing:%')))
WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(c.stac) k WHERE k LIKE 'processing:%');

-- collections: summaries
UPDATE collections SET stac = stac || jsonb_build_object('summaries', jsonb_strip_nulls(
    jsonb_build_object(
        'emb:type', CASE WHEN stac ? 'emb:type' THEN jsonb_build_array(stac->'emb:type') END,
        'emb:dimensions', CASE WHEN stac ? 'emb:dimensions'
            THEN jsonb_build_array(stac->'emb:dimensions') END,
        'data_type', CASE WHEN stac ? 'data_type' THEN jsonb_build_array(stac->'data_type') END,
        'gsd', CASE WHEN stac ? 'gsd' THEN jsonb_build_array(stac->'gsd') END)))
WHERE stac->'stac_extensions' ? '{EMB}' AND NOT stac ? 'summaries';

-- collections: MLM is the emb:model item's, not the collection's
UPDATE collections c SET stac = (c.stac - ARRAY(SELECT k FROM jsonb_object_keys(c.stac) k
        WHERE k LIKE 'mlm:%'))
    || jsonb_build_object('stac_extensions', (c.stac->'stac_extensions') - '{MLM_14}')
    || CASE WHEN c.stac ? 'mlm:name' AND NOT c.stac ? 'embcat:encoder'
        THEN jsonb_build_object('embcat:encoder', c.stac->'mlm:name') ELSE '{{}}'::jsonb END
WHERE c.stac->'stac_extensions' ? '{EMB}' AND c.stac->'stac_extensions' ? '{MLM_14}';

-- collections: source-data paths as file:// URIs
UPDATE collections SET stac = jsonb_set(stac, '{{links}}',
    {_links_sql("stac->'links'", "emb:source-data", True)})
WHERE {_needs("stac->'links'", "emb:source-data", True)};

-- items: quantization scale/offset as arrays
UPDATE items SET properties = jsonb_set(properties, '{{emb:quantization,scale}}',
    jsonb_build_array(properties->'emb:quantization'->'scale'))
WHERE jsonb_typeof(properties->'emb:quantization'->'scale') = 'number';
UPDATE items SET properties = jsonb_set(properties, '{{emb:quantization,offset}}',
    jsonb_build_array(properties->'emb:quantization'->'offset'))
WHERE jsonb_typeof(properties->'emb:quantization'->'offset') = 'number';

-- items: derived_from paths as file:// URIs
UPDATE items SET links = {_links_sql("links", "derived_from", True)}
WHERE {_needs("links", "derived_from", True)};
"""

DOWNGRADE = f"""
UPDATE items SET links = {_links_sql("links", "derived_from", False)}
WHERE {_needs("links", "derived_from", False)};
UPDATE items SET properties = jsonb_set(properties, '{{emb:quantization,scale}}',
    properties->'emb:quantization'->'scale'->0)
WHERE jsonb_typeof(properties->'emb:quantization'->'scale') = 'array'
  AND jsonb_array_length(properties->'emb:quantization'->'scale') = 1;
UPDATE items SET properties = jsonb_set(properties, '{{emb:quantization,offset}}',
    properties->'emb:quantization'->'offset'->0)
WHERE jsonb_typeof(properties->'emb:quantization'->'offset') = 'array'
  AND jsonb_array_length(properties->'emb:quantization'->'offset') = 1;
UPDATE collections SET stac = jsonb_set(stac, '{{links}}',
    {_links_sql("stac->'links'", "emb:source-data", False)})
WHERE {_needs("stac->'links'", "emb:source-data", False)};
UPDATE collections SET stac = jsonb_set(stac, '{{emb:chip_layout,chip_size}}',
    stac->'emb:chip_layout'->'chip_size'->0)
WHERE jsonb_typeof(stac->'emb:chip_layout'->'chip_size') = 'array';
UPDATE collections SET stac = jsonb_set(stac, '{{emb:chip_layout,stride}}',
    stac->'emb:chip_layout'->'stride'->0)
WHERE jsonb_typeof(stac->'emb:chip_layout'->'stride') = 'array';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
