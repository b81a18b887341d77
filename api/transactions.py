"""Transactions (items and collections) and bulk items, behind the ``write`` scope.

Item PUT/PATCH answer 204 and DELETE is idempotent (204 also when the item was already
gone; 404 only for an unknown collection), as stac-api-validator expects. The scope
check is a route dependency declared in api/features.py (``STAC_WRITES``, given to
stac-fastapi's ``route_dependencies``); a key limited to one collection may only change
that collection's items. Every body is validated
(catalog.stac checks) before anything is written; each request is one transaction.

PATCH takes a JSON Patch (RFC 6902, a list body; applied by ``jsonpatch``) or a JSON
Merge Patch (RFC 7386, an object body; ``json-merge-patch``). A patch that cannot be
applied is a 400 naming the op; a failed ``test`` op is a 409; nothing is written then.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Annotated, Any

import attr
import json_merge_patch
import jsonpatch
import jsonpointer
from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from stac_fastapi.api.models import CollectionUri, GeoJSONResponse, ItemUri
from stac_fastapi.api.routes import create_async_endpoint
from stac_fastapi.extensions import BulkTransactionExtension, TransactionExtension
from stac_fastapi.extensions.bulk_transactions.bulk_transactions import (
    AsyncBaseBulkTransactionsClient,
    BulkTransactionModel,
    Items,
)
from stac_fastapi.extensions.transaction.client import AsyncBaseTransactionsClient
from stac_fastapi.types.extension import ApiExtension
from starlette.concurrency import run_in_threadpool

from embcat.api.db import base_url, connection
from embcat.api.settings import ApiSettings
from embcat.catalog import stac as stacrows
from embcat.catalog.errors import Conflict, InvalidInput


def _as_dict(model: Any, what: str = "the body") -> dict[str, Any]:
    if model is None:
        raise InvalidInput(f"{what} is missing: send a JSON object")
    if isinstance(model, dict):
        return model
    if not hasattr(model, "model_dump"):
        raise InvalidInput(f"{what} must be a JSON object")
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return dumped


def _failed_op(exc: Exception) -> dict[str, Any]:
    """The operation jsonpatch tied to its error (empty when it names none)."""
    op = getattr(exc, "op", None)
    op = getattr(op, "operation", op)
    return op if isinstance(op, dict) else {}


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 JSON Patch on a copy of ``doc`` (jsonpatch validates every op first).

    A failed ``test`` op is a :class:`Conflict` (the document is not in the state the
    client expected, RFC 5789's 409); any other patch that cannot be applied (unknown op,
    missing member or index, malformed pointer) is :class:`InvalidInput`.
    """
    try:
        patched: dict[str, Any] = jsonpatch.JsonPatch(ops).apply(doc)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Conflict(f"JSON Patch test failed at {_failed_op(exc).get('path')}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        op = _failed_op(exc)
        source = f"{op['from']} -> " if "from" in op else ""
        where = f" ({op.get('op')} {source}{op.get('path')})" if op else ""
        # jsonpointer's messages can quote the whole member they searched: keep them short
        cause = textwrap.shorten(str(exc), 200)
        raise InvalidInput(f"JSON Patch cannot be applied{where}: {cause}") from None
    return patched


def _patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    if isinstance(patch, list):
        return _json_patch(doc, [_as_dict(p) for p in patch])
    # RFC 7386 merge patch; json_merge_patch.merge changes its first argument in place.
    result: dict[str, Any] = json_merge_patch.merge(copy.deepcopy(doc), _as_dict(patch))
    return result


@attr.s
class TransactionsClient(AsyncBaseTransactionsClient):
    async def create_item(  # type: ignore[override]
        self, collection_id: str, item: Any, **kwargs: Any
    ) -> dict[str, Any] | Response:
        request: Request = kwargs["request"]
        body = _as_dict(item)
        features = body["features"] if body.get("type") == "FeatureCollection" else [body]
        if not isinstance(features, list):
            raise InvalidInput("a FeatureCollection needs a features array")
        records = [stacrows.validate_item(f, collection_id) for f in features]
        base = base_url(request)
        single = body.get("type") != "FeatureCollection"

        def work() -> dict[str, Any] | None:
            # The answer is built inside the write's transaction: an item that could not
            # be served back rolls the write back instead of answering an error after it.
            with connection(request) as conn:
                stacrows.insert_items(conn, records)
                if not single:
                    return None
                return stacrows.get_item(conn, collection_id, records[0].id, base)

        created = await run_in_threadpool(work)
        if created is None:
            return Response(status_code=201)
        return created

    async def _item(self, request: Request, collection_id: str, item_id: str) -> dict[str, Any]:
        base = base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                return stacrows.get_item(conn, collection_id, item_id, base)

        return await run_in_threadpool(work)

    async def update_item(
        self, collection_id: str, item_id: str, item: Any, **kwargs: Any
    ) -> Response:
        request: Request = kwargs["request"]
        body = _as_dict(item)
        if body.get("id") != item_id:
            raise InvalidInput(f"the body's id {body.get('id')!r} differs from the path's")
        record = stacrows.validate_item(body, collection_id)
        return await _replace(request, record, collection_id, item_id)

    async def patch_item(
        self, collection_id: str, item_id: str, patch: Any, **kwargs: Any
    ) -> Response:
        request: Request = kwargs["request"]
        if patch is None:
            raise InvalidInput("the patch is missing: send a JSON object or a JSON Patch array")
        current = await self._item(request, collection_id, item_id)
        patched = _patch(current, patch)
        if patched.get("id") != item_id:
            raise InvalidInput("a patch cannot change the item id")
        record = stacrows.validate_item(patched, collection_id)
        return await _replace(request, record, collection_id, item_id)

    async def delete_item(self, item_id: str, collection_id: str, **kwargs: Any) -> Response:
        request: Request = kwargs["request"]

        def work() -> None:
            with connection(request) as conn:
                stacrows.delete_item(conn, collection_id, item_id, missing_ok=True)

        await run_in_threadpool(work)
        return Response(status_code=204)

    async def _collection(self, request: Request, collection_id: str) -> dict[str, Any]:
        base = base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                return stacrows.get_collection(conn, collection_id, base)

        return await run_in_threadpool(work)

    async def create_collection(  # type: ignore[override]
        self, collection: Any, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        body = _as_dict(collection)
        base = base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                cid = stacrows.insert_collection(conn, body)
                return stacrows.get_collection(conn, cid, base)

        return await run_in_threadpool(work)

    async def update_collection(  # type: ignore[override]
        self, collection_id: str, collection: Any, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        body = _as_dict(collection)
        base = base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                stacrows.update_collection(conn, collection_id, body)
                return stacrows.get_collection(conn, collection_id, base)

        return await run_in_threadpool(work)

    async def patch_collection(  # type: ignore[override]
        self, collection_id: str, patch: Any, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        if patch is None:
            raise InvalidInput("the patch is missing: send a JSON object or a JSON Patch array")
        current = await self._collection(request, collection_id)
        patched = _patch(current, patch)
        base = base_url(request)

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                stacrows.update_collection(conn, collection_id, patched)
                return stacrows.get_collection(conn, collection_id, base)

        return await run_in_threadpool(work)

    async def delete_collection(self, collection_id: str, **kwargs: Any) -> Response:
        request: Request = kwargs["request"]

        def work() -> None:
            with connection(request) as conn:
                stacrows.delete_collection(conn, collection_id)

        await run_in_threadpool(work)
        return Response(status_code=204)


@attr.s
class BulkTransactionsClient(AsyncBaseBulkTransactionsClient):
    async def bulk_item_insert(  # type: ignore[override]
        self, items: Any, chunk_size: int | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        request: Request = kwargs["request"]
        collection_id = kwargs.get("collection_id") or request.path_params["collection_id"]
        if items is None:
            raise InvalidInput("the body is missing: send {'items': {id: item, ...}}")
        method = getattr(items.method, "value", items.method)
        records = []
        for key, item in items.items.items():
            record = stacrows.validate_item(_as_dict(item, f"item {key!r}"), collection_id)
            if record.id != key:
                raise InvalidInput(f"bulk key {key!r} differs from the item's id {record.id!r}")
            records.append(record)

        def work() -> int:
            with connection(request) as conn:
                return stacrows.insert_items(conn, records, upsert=method == "upsert")

        count = await run_in_threadpool(work)
        return {"received": len(records), "success": count, "skipped": 0, "errors": []}


@attr.s
class _PostItemBody(CollectionUri):
    """Create item: any JSON object; catalog.stac.validate_item checks it (links optional)."""

    item: Annotated[dict[str, Any], Body()] = attr.ib(default=None)


@attr.s
class _PutItemBody(ItemUri):
    item: Annotated[dict[str, Any], Body()] = attr.ib(default=None)


@attr.s
class ItemTransactionExtension(TransactionExtension):
    """The transaction extension with item bodies validated by catalog.stac (stac-pydantic
    insists on ``links``, which the Transaction spec's own examples leave out)."""

    def register_create_item(self) -> None:
        self.router.add_api_route(
            name="Create Item",
            path="/collections/{collection_id}/items",
            status_code=201,
            response_class=GeoJSONResponse,
            methods=["POST"],
            endpoint=create_async_endpoint(self.client.create_item, _PostItemBody),
            dependencies=self.route_dependencies,
        )

    def register_update_item(self) -> None:
        self.router.add_api_route(
            name="Update Item",
            path="/collections/{collection_id}/items/{item_id}",
            status_code=204,
            response_class=self.response_class,
            methods=["PUT"],
            endpoint=create_async_endpoint(self.client.update_item, _PutItemBody),
            dependencies=self.route_dependencies,
        )


@attr.s
class _BulkItemsBody(CollectionUri):
    """Bulk items: the path's ``collection_id`` (declared in the OpenAPI document) + body."""

    items: Annotated[Items, Body()] = attr.ib(default=None)


@attr.s
class ItemsBulkTransactionExtension(BulkTransactionExtension):
    """The bulk transaction extension with ``collection_id`` declared as a path parameter
    (stac-fastapi's own route takes the body alone, so the document omits it)."""

    def register(self, app: FastAPI) -> None:
        router = APIRouter(prefix=app.state.router_prefix)
        router.add_api_route(
            name="Bulk Create Item",
            path="/collections/{collection_id}/bulk_items",
            response_model=BulkTransactionModel,
            responses={200: {"content": {"application/json": {}}, "model": BulkTransactionModel}},
            response_class=JSONResponse,
            response_model_exclude_unset=False,
            methods=["POST"],
            endpoint=create_async_endpoint(self.client.bulk_item_insert, _BulkItemsBody),
            dependencies=self.route_dependencies,
        )
        app.include_router(router, tags=["Bulk Transaction Extension"])


def transaction_extensions(settings: ApiSettings) -> list[ApiExtension]:
    return [
        ItemTransactionExtension(client=TransactionsClient(), settings=settings),
        ItemsBulkTransactionExtension(client=BulkTransactionsClient()),
    ]


async def _replace(request: Request, record: Any, collection_id: str, item_id: str) -> Response:
    """Write a validated item over the stored one (PUT and PATCH), in one transaction that
    rolls back unless the stored item can be served again."""
    base = base_url(request)

    def work() -> None:
        with connection(request) as conn:
            stacrows.update_item(conn, record)
            stacrows.get_item(conn, collection_id, item_id, base)  # servable, or roll back

    await run_in_threadpool(work)
    return Response(status_code=204)
