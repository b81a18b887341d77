"""The embcat STAC API: ``create_app(settings)`` for
``uvicorn --factory embcat.api.app:create_app``.

Nothing is built at import time. ``create_app`` builds the app's settings tree
(``api.settings.AppSettings``) once, then the app: stac-fastapi's STAC routes with their
scope checks (``api.features.stac_route_dependencies``), and every feature router of
``FEATURES`` (``build_router(ctx)`` per feature module, called with the app's
``FeatureContext``). An app with a route that has no scope check is refused
(``api.features.check_protected``). The database pool is opened in the lifespan.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from stac_fastapi.api.app import StacApi
from stac_fastapi.api.middleware import ProxyHeaderMiddleware
from stac_fastapi.api.models import (
    create_get_request_model,
    create_post_request_model,
    create_request_model,
)
from stac_fastapi.extensions import (
    CollectionSearchExtension,
    FieldsExtension,
    FreeTextExtension,
    ItemCollectionFilterExtension,
    OffsetPaginationExtension,
    QueryExtension,
    SearchFilterExtension,
    SortExtension,
    TokenPaginationExtension,
)
from stac_fastapi.extensions.collection_search.collection_search import (
    CollectionSearchConformanceClasses,
)
from stac_fastapi.extensions.fields.fields import FieldsConformanceClasses
from stac_fastapi.extensions.filter.filter import FilterConformanceClasses
from stac_fastapi.extensions.free_text.free_text import FreeTextConformanceClasses
from stac_fastapi.extensions.query.query import QueryConformanceClasses
from stac_fastapi.extensions.sort.sort import SortConformanceClasses
from stac_fastapi.types.extension import ApiExtension
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from embcat.api import exchange, explorer, imagery, observability, score, uploads
from embcat.api.body_limit import BodySizeLimit
from embcat.api.core import CoreClient
from embcat.api.core_search import SearchPostRequest
from embcat.api.db import connection, create_pool
from embcat.api.errors import add_exception_handlers
from embcat.api.features import FeatureContext, check_protected, stac_route_dependencies
from embcat.api.limits import (
    ClientConcurrencyLimit,
    ExpensiveRequestLimit,
    TrustedProxyHeaders,
    parse_networks,
)
from embcat.api.queryables import FiltersClient, SortablesClient
from embcat.api.search_get import ItemsGetRequest, SearchGetRequest
from embcat.api.settings import ApiSettings, AppSettings
from embcat.api.similarity import SimilarityExtension
from embcat.api.transactions import transaction_extensions
from embcat.catalog.stac import STAC_VERSION

FeatureBuilder = Callable[[FeatureContext], APIRouter]
# The feature routers, in the order they are included: one builder per feature module.
FEATURES: tuple[FeatureBuilder, ...] = (
    explorer.build_router,
    exchange.build_router,
    uploads.build_router,
    imagery.build_router,
    score.build_router,
)

FILTER_CLASSES = [
    FilterConformanceClasses.FILTER,
    FilterConformanceClasses.BASIC_CQL2,
    FilterConformanceClasses.CQL2_JSON,
    FilterConformanceClasses.CQL2_TEXT,
    FilterConformanceClasses.ADVANCED_COMPARISON_OPERATORS,
    FilterConformanceClasses.BASIC_SPATIAL_FUNCTIONS,
    FilterConformanceClasses.SPATIAL_FUNCTIONS,
    FilterConformanceClasses.TEMPORAL_FUNCTIONS,
    FilterConformanceClasses.ARRAY_FUNCTIONS,
    FilterConformanceClasses.CASE_INSENSITIVE_COMPARISON,
]


# The sort extension's URIs of STAC API v1.0.0 as well as v1.1.0 (stac-fastapi's):
# clients written against 1.0 (pystac-client 0.9) match "https://api.stacspec.org/v1.0.*".
SORT_V100_SEARCH = "https://api.stacspec.org/v1.0.0/item-search#sort"
SORT_V100_FEATURES = "https://api.stacspec.org/v1.0.0/ogcapi-features#sort"


def _extensions(settings: ApiSettings) -> dict[str, Any]:
    filters = FiltersClient()
    sortables = SortablesClient()
    search_extensions: list[ApiExtension] = [
        QueryExtension(conformance_classes=[QueryConformanceClasses.SEARCH]),
        SortExtension(
            client=sortables,
            conformance_classes=[
                SortConformanceClasses.ITEM_SEARCH_SORT,
                SORT_V100_SEARCH,  # what pystac-client 0.9 looks for (v1.0.x)
                SortConformanceClasses.ITEM_SEARCH_SORTABLES,
            ],
        ),
        FieldsExtension(conformance_classes=[FieldsConformanceClasses.SEARCH]),
        SearchFilterExtension(
            client=filters,
            conformance_classes=[FilterConformanceClasses.SEARCH, *FILTER_CLASSES],
        ),
        TokenPaginationExtension(),
        FreeTextExtension(conformance_classes=[FreeTextConformanceClasses.SEARCH]),
    ]
    item_extensions: list[ApiExtension] = [
        QueryExtension(conformance_classes=[QueryConformanceClasses.ITEMS]),
        SortExtension(
            conformance_classes=[
                SortConformanceClasses.FEATURES_SORT,
                SORT_V100_FEATURES,
                SortConformanceClasses.FEATURES_SORTABLES,
            ]
        ),
        FieldsExtension(conformance_classes=[FieldsConformanceClasses.ITEMS]),
        ItemCollectionFilterExtension(
            client=filters,
            conformance_classes=[FilterConformanceClasses.ITEMS, *FILTER_CLASSES],
        ),
        TokenPaginationExtension(),
        FreeTextExtension(conformance_classes=[FreeTextConformanceClasses.ITEMS]),
    ]
    collection_search = CollectionSearchExtension.from_extensions(
        [
            FieldsExtension(conformance_classes=[FieldsConformanceClasses.COLLECTIONS]),
            FreeTextExtension(conformance_classes=[FreeTextConformanceClasses.COLLECTIONS]),
            OffsetPaginationExtension(),
        ]
    )
    collection_search.conformance_classes = [
        CollectionSearchConformanceClasses.COLLECTIONSEARCH.value,
        CollectionSearchConformanceClasses.BASIS.value,
        FieldsConformanceClasses.COLLECTIONS.value,
        FreeTextConformanceClasses.COLLECTIONS.value,
    ]
    return {
        "search": search_extensions,
        "items": item_extensions,
        "collections": collection_search,
    }


def _health(settings: ApiSettings) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def health(request: Request) -> JSONResponse:
        from embcat.catalog import migrate
        from embcat.catalog.checks import server_versions

        def work() -> dict[str, Any]:
            with connection(request) as conn:
                v = server_versions(conn)
                rev = migrate.current_revision(conn)
            head = migrate.head_revision()
            return {
                "status": "ok" if rev == head else "degraded",
                "database": "reachable",
                "postgres": v.postgres,
                "postgis": v.postgis,
                "pgvector": v.pgvector,
                "revision": rev,
                "head": head,
                "up_to_date": rev == head,
            }

        try:
            body = await run_in_threadpool(work)
        except Exception as exc:  # any failure means: not healthy
            return JSONResponse(
                {"status": "unavailable", "database": "unreachable", "description": str(exc)},
                status_code=503,
            )
        return JSONResponse(body, status_code=200)

    return health


API_ASSETS = "/api-assets"  # Swagger UI's files (a mount: no catalogue data)


def _add_api_docs(app: FastAPI, settings: ApiSettings, ctx: FeatureContext) -> None:
    """/api.html: Swagger UI with its JavaScript and CSS served by this API from the
    swagger-ui-bundle package, so that the page works without the internet."""
    if not settings.docs_url or not settings.openapi_url:
        return
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    app.mount(
        API_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="api-assets"
    )

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + str(settings.openapi_url),
            title=f"{settings.stac_fastapi_title} - API documentation",
            swagger_js_url=f"{root}{API_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{API_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{API_ASSETS}/favicon-32x32.png",
        )

    app.add_api_route(
        settings.docs_url,
        swagger_ui_html,
        methods=["GET"],
        name="swagger_ui_html",
        include_in_schema=False,
        dependencies=[ctx.public],
    )


def create_app(
    settings: ApiSettings | AppSettings | None = None,
    features: Sequence[FeatureBuilder] = FEATURES,
) -> FastAPI:
    """Build the API (pool opened in the lifespan; nothing connects before start-up).

    ``settings``: the app's settings tree, or its HTTP settings (the rest of the tree is
    then read from the environment, here, once); default: all from the environment."""
    tree = settings if isinstance(settings, AppSettings) else AppSettings.from_env(settings)
    settings = tree.api
    ctx = FeatureContext(tree)
    pool = create_pool(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()

    ext = _extensions(settings)
    extensions: list[ApiExtension] = [*ext["search"], *ext["items"], ext["collections"]]
    extensions.extend(transaction_extensions(settings))
    similarity = SimilarityExtension()
    extensions.append(similarity)
    search_post_extensions = [*ext["search"], similarity]

    app = FastAPI(
        title=settings.stac_fastapi_title,
        version=settings.stac_fastapi_version,
        description=settings.stac_fastapi_description,
        openapi_url=settings.openapi_url,
        docs_url=None,  # served from the swagger-ui-bundle package below (no CDN)
        redoc_url=None,
        root_path=settings.root_path,
        lifespan=lifespan,
    )
    app.state.pool = pool
    api = StacApi(
        app=app,
        settings=settings,
        client=CoreClient(
            landing_page_id=settings.stac_fastapi_landing_id,
            title=settings.stac_fastapi_title,
            description=settings.stac_fastapi_description,
        ),
        stac_version=STAC_VERSION,
        extensions=extensions,
        search_get_request_model=create_get_request_model(
            ext["search"], base_model=SearchGetRequest
        ),
        search_post_request_model=create_post_request_model(
            search_post_extensions, base_model=SearchPostRequest
        ),
        items_get_request_model=create_request_model(  # type: ignore[arg-type]
            "ItemCollectionUri",
            base_model=ItemsGetRequest,
            extensions=ext["items"],
            request_type="GET",
        ),
        collections_get_request_model=ext["collections"].GET,
        middlewares=[
            Middleware(
                ExpensiveRequestLimit,
                max_in_flight=settings.max_expensive_requests,
                expensive_body_bytes=settings.expensive_body_bytes,
                max_search_body_bytes=settings.max_search_body_bytes,
                body_timeout_s=settings.request_body_timeout_s,
            ),
            Middleware(
                ClientConcurrencyLimit,
                max_in_flight=settings.max_requests_per_client,
                networks=parse_networks(settings.trusted_proxies),
            ),
            Middleware(
                CORSMiddleware,
                allow_origins=["*"],
                allow_methods=["OPTIONS", "GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Content-Type", "Authorization", "X-API-Key"],
                max_age=600,
            ),
            Middleware(ProxyHeaderMiddleware),
            # stac-fastapi wraps the app in these in reverse order (the last is the
            # outermost): the forwarded headers of untrusted clients are removed before
            # ProxyHeaderMiddleware reads them; the per-client limit sits inside CORS, so
            # that a browser sees its 429, and the expensive-request bound inside it (a
            # client past its own limit takes no expensive slot).
            Middleware(TrustedProxyHeaders, networks=parse_networks(settings.trusted_proxies)),
            Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes),
        ],
        exceptions={},
        route_dependencies=stac_route_dependencies(ctx),
    )
    app.state.pool = pool
    app.state.settings = settings
    app.state.app_settings = tree
    # The per-app handles of the tree that the routes read (a test may swap one).
    app.state.similarity_settings = tree.similarity
    app.state.upload_settings = tree.uploads
    app.state.export_slots = threading.BoundedSemaphore(settings.export_max_streams)
    app.state.stac_api = api
    add_exception_handlers(app)
    app.add_api_route(
        "/health",
        _health(settings),
        methods=["GET"],
        name="health",
        tags=["Liveliness/Readiness"],
        dependencies=[ctx.public],
    )
    observability.install(app, tree.observability, dependencies=[ctx.read()])
    _add_api_docs(app, settings, ctx)
    for build in features:
        app.include_router(build(ctx))
    check_protected(app)
    return app
