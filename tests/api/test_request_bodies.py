"""Request bodies that are JSON but not an object (``[]``, ``null``, ``"x"``, ``1``) get a
400 JSON error with a message on every POST/PUT operation that takes a JSON body, never a
500; a filter nested past the cap gets a 400 on GET and POST, as text and as JSON."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

NON_OBJECTS = [b"[]", b"null", b'"x"', b"1", b"true", b"[{}]"]


def _json_body_operations() -> list[tuple[str, str]]:
    from embcat.api.app import create_app
    from embcat.api.settings import ApiSettings

    spec = create_app(ApiSettings(database_url="postgresql://unused@127.0.0.1:1/x")).openapi()
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = (op.get("requestBody") or {}).get("content") or {}
            if method in ("post", "put") and "application/json" in content:
                schema = content["application/json"].get("schema") or {}
                # An optional body (object or null): a JSON null is "no body" there.
                optional = {"type": "null"} in schema.get("anyOf", [])
                ops.append((method.upper(), path, optional))
    return sorted(ops)


OPERATIONS = _json_body_operations()


@pytest.fixture(scope="module")
def admin(database_url: str) -> Iterator[str]:
    from embcat.catalog.keys import create_key

    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "bodies-admin", ["admin"])
    yield secret
    with psycopg.connect(database_url) as conn:
        conn.execute("delete from api_keys where id = %s", (key_id,))


def test_the_operations_are_found() -> None:
    found = {(method, path) for method, path, _ in OPERATIONS}
    assert ("POST", "/search") in found
    assert ("POST", "/collections/{collection_id}/items") in found
    assert ("POST", "/collections/{collection_id}/bulk_items") in found


@pytest.mark.parametrize(("method", "path", "optional"), OPERATIONS, ids=str)
def test_non_object_json_body_is_400(
    live_server: str, seeded: tuple[str, Any], admin: str, method: str, path: str, optional: bool
) -> None:
    cid = f"bodies-{uuid.uuid4().hex[:6]}"  # never created: a body check must come first
    if "{collection_id}" in path and method == "POST" and "items" not in path:
        cid = seeded[0]
    url = live_server + re.sub(r"\{[^}]+\}", "x", path.replace("{collection_id}", cid))
    for body in NON_OBJECTS:
        if optional and body == b"null":
            continue
        r = httpx.request(
            method,
            url,
            content=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert r.status_code == 400, (method, path, body, r.status_code, r.text[:300])
        err = r.json()
        assert err["code"] == "InvalidInput" and err["description"], err


def _not_chain(depth: int) -> str:
    """CQL2 JSON text of ``depth`` NOTs around a comparison (built as text: json.dumps
    itself would recurse)."""
    base = '{"op": "=", "args": [{"property": "id"}, "a"]}'
    return '{"op": "not", "args": [' * depth + base + "]}" * depth


@pytest.mark.parametrize("depth", [60, 400, 5000])
def test_deep_cql2_json_is_400_on_post_and_get(live_server: str, depth: int) -> None:
    text = '{"filter": ' + _not_chain(depth) + ', "filter-lang": "cql2-json"}'
    r = httpx.post(
        live_server + "/search",
        content=text,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text[:300]
    if depth < 450:  # deeper still, the JSON decoder itself refuses the body
        assert "deep" in r.json()["description"]
    # In the query string: at most 200 deep (the URL stays under the server's 16 KiB).
    r = httpx.get(
        live_server + "/search",
        params={"filter": _not_chain(min(depth, 200)), "filter-lang": "cql2-json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text[:300]
    assert "deep" in r.json()["description"]
    r = httpx.post(
        live_server + "/search",
        json={"filter": _not_chain(depth), "filter-lang": "cql2-json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text[:300]  # CQL2 JSON as a string in the body


def test_shallow_nesting_still_works(live_server: str, seeded: tuple[str, Any]) -> None:
    cid = seeded[0]
    # 20 NOTs: an even number, so the filter is id = first item's id
    first = seeded[1][0]["id"]
    node: dict[str, Any] = {"op": "=", "args": [{"property": "id"}, first]}
    for _ in range(20):
        node = {"op": "not", "args": [node]}
    r = httpx.post(live_server + "/search", json={"collections": [cid], "filter": node}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert [f["id"] for f in r.json()["features"]] == [first]
    text = "NOT " * 20 + f"(id = '{first}')"
    r = httpx.get(
        live_server + "/search",
        params={"collections": cid, "filter": text, "filter-lang": "cql2-text"},
        timeout=30,
    )
    assert r.status_code == 200, r.text[:300]
    assert [f["id"] for f in r.json()["features"]] == [first]


def _deep_texts(n: int) -> list[str]:
    return [
        "(" * n + "id = 'a'" + ")" * n,
        "NOT " * n + "id = 'a'",
        "casei(" * n + "id" + ")" * n + " = 'a'",
    ]


def test_deep_cql2_text_is_400(live_server: str, seeded: tuple[str, Any]) -> None:
    for expr in _deep_texts(2000):  # in the query string (URL under 16 KiB)
        for path in ("/search", f"/collections/{seeded[0]}/items"):
            r = httpx.get(
                live_server + path,
                params={"filter": expr, "filter-lang": "cql2-text"},
                timeout=30,
            )
            assert r.status_code == 400, (path, expr[:20], r.status_code, r.text[:300])
    for expr in _deep_texts(20000):  # in a body (the Rust parser would crash on these)
        r = httpx.post(
            live_server + "/search", json={"filter": expr, "filter-lang": "cql2-text"}, timeout=30
        )
        assert r.status_code == 400, (expr[:20], r.status_code, r.text[:300])
    assert httpx.get(live_server + "/conformance", timeout=30).status_code == 200  # still up


@pytest.mark.parametrize("name", ["query", "intersects"])
def test_deep_json_query_parameters_are_400(live_server: str, name: str) -> None:
    for value in ("[" * 4000, "[" * 2000 + "]" * 2000):
        r = httpx.get(live_server + "/search", params={name: value}, timeout=30)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
