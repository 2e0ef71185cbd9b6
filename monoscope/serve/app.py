"""The live browser: the front end plus its JSON API, as a FastAPI app.

GET  /                       the front end (static/index.html); /assets/* its files
GET  /config.js              tells the front end it runs live, and the model endpoints' limits
GET  /api/meta               meta record (records.py)
GET  /api/features           ?query=&sort=id|density|max_act|score&order=asc|desc&offset=&limit=
                             (features without a score last in either order; 422 for a query
                             over MAX_QUERY_CHARS)
GET  /api/features/{id}      feature record; 404 for an id that is not 0..n_features-1
GET  /api/features/{id}/similar  ?limit= -> {"items": [similar]}: the features whose
                             explanations are nearest this one's (meaning.py); 503 without an
                             embedding model
POST /api/search-meaning     {query, offset, limit} -> the explained features ranked by the
                             cosine of their explanation's embedding and the query's; 422
                             empty, 413 over MAX_QUERY_CHARS, 503 without an embedding model
GET  /api/map                map points (at most records.MAP_POINTS: a sample past that)
POST /api/fires              {"text": ...} -> per-token top features (fires.py); 422 empty,
                             413 too long, 503 when the model or SAE cannot be loaded
POST /api/steer              {feature, prompt, strength, relative, mode, positions,
                             max_new_tokens, temperature, seed, chat} -> unsteered vs
                             steered continuations (steering.py); 404 unknown feature, 422
                             bad input, 503 no model
POST /api/attribute          {prompt, target, top, chat} -> attribution and ablation of the
                             prompt's features to the next token (steering.py); 422, 503

Every request is bounded before its route runs (security.py: path, query string, body size;
414, 413), and every response carries the security headers. Errors are short JSON
{"detail": ...}: a validation error lists where and what, without echoing the input. The
Host header is checked by the server once its socket is bound (server.host_guarded).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time,
# and the request model is local to create_app.
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from monoscope.analyze.schema import FeatureStoreError
from monoscope.serve.catalog import ORDERS, SORTS
from monoscope.serve.fires import FiresEngine, FiresInputError
from monoscope.serve.meaning import (
    MAX_QUERY_CHARS,
    MeaningIndex,
    MeaningQueryError,
    MeaningUnavailable,
)
from monoscope.serve.model import ModelUnavailable
from monoscope.serve.steering import SteerEngine
from monoscope.serve.store import FeatureNotFound, FeatureStore
from monoscope.steer import SteeringError
from monoscope.web.security import Guard
from monoscope.web.server import require_server_extra

STATIC = Path(str(resources.files("monoscope.serve") / "static"))
MAX_PAGE = 500
"""Most features one list request returns."""
MAX_SIMILAR = 50
"""Most similar explanations one request returns."""
MAX_ID_CHARS = 20
"""Longest feature id text looked up (ids are below 2**63)."""
CHARS_PER_TOKEN = 16
"""Characters allowed per token of a text's token limit, checked before the model's lock is
taken and the text tokenized: English averages about 4."""
MAX_OFFSET = 2**31
"""Largest list offset: past the end a page is empty; a bigger number is a 422."""


def front_end_config(mode: str, **extra: Any) -> str:
    """config.js: the first script the page runs, telling it where its data comes from."""
    config = {"mode": mode, **extra}
    return f"window.MS = window.MS || {{}};\nMS.config = {json.dumps(config)};\n"


def create_app(
    store: FeatureStore,
    fires: FiresEngine | None = None,
    steer: SteerEngine | None = None,
    meaning: MeaningIndex | None = None,
):
    """The FastAPI app over `store`; `fires` None disables POST /api/fires, `steer` None
    POST /api/steer and /api/attribute (503); `meaning` defaults to the store's explanations
    with the default embedding model (loaded on the first search)."""
    require_server_extra()
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="monoscope", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard)
    _error_handlers(app)
    config_js = front_end_config(
        "live",
        fires={"max_tokens": fires.max_tokens} if fires is not None else None,
        steer=steer.limits() if steer is not None else None,
        search={"max_query_chars": MAX_QUERY_CHARS},
    )
    _browse_routes(app, store, meaning or MeaningIndex(store.catalog), config_js)
    _model_routes(app, store, fires, steer)
    # StaticFiles resolves each path and refuses any that leaves the folder (../, %2e%2e).
    app.mount("/assets", StaticFiles(directory=STATIC / "assets"), name="assets")
    return app


ERROR_STATUS = {
    FeatureNotFound: 404,
    SteeringError: 422,
    ModelUnavailable: 503,
    MeaningUnavailable: 503,
    FeatureStoreError: 503,
}
"""HTTP status of each error the engines raise (MeaningQueryError carries its own)."""


def _error_handlers(app) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def handler(status: int | None):
        def respond(request: Request, err: Exception) -> JSONResponse:
            code = status
            if code is None:
                assert isinstance(err, MeaningQueryError)  # the one error that has its own
                code = err.status
            return JSONResponse({"detail": str(err)}, status_code=code)

        return respond

    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes each bad value, which may be most of a 64 kB body.
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, handler(status))
    app.add_exception_handler(MeaningQueryError, handler(None))
    app.add_exception_handler(RequestValidationError, invalid)


def checked_id(store: FeatureStore, text: str | int) -> int:
    """store.feature_id, refusing an id too long to be one before parsing it (Python refuses
    to parse integers of over 4,300 digits) and without echoing all of it."""
    if isinstance(text, str) and len(text) > MAX_ID_CHARS:
        raise FeatureNotFound(
            f"no feature {text[:MAX_ID_CHARS]}… ({len(text):,} characters): "
            f"this store has ids 0..{store.n_features - 1}"
        )
    return store.feature_id(text)


def check_chars(text: str, max_tokens: int, what: str) -> None:
    """HTTP 413 for a text too long to be max_tokens tokens, before anything tokenizes it."""
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) > limit:
        from fastapi import HTTPException

        raise HTTPException(
            413,
            f"the {what} is {len(text):,} characters long; the limit is {limit:,} "
            f"(and {max_tokens} tokens)",
        )


def _browse_routes(app, store: FeatureStore, meaning: MeaningIndex, config_js: str) -> None:
    """The page, its config, and the read-only JSON API over the store."""
    from fastapi import Query
    from fastapi.responses import FileResponse, JSONResponse, Response
    from pydantic import BaseModel, Field

    class MeaningRequest(BaseModel):
        query: str
        offset: int = Field(0, ge=0, le=MAX_OFFSET)
        limit: int = Field(50, ge=1, le=MAX_PAGE)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/config.js")
    def config() -> Response:
        return Response(config_js, media_type="text/javascript")

    # JSONResponse directly: FastAPI's default encoder walks every value of a big record first.
    @app.get("/api/meta")
    def meta() -> JSONResponse:
        return JSONResponse(store.meta_record())

    @app.get("/api/features")
    def features(
        query: str = Query("", max_length=MAX_QUERY_CHARS),
        sort: Literal[SORTS] = "id",  # type: ignore[valid-type]
        order: Literal[ORDERS] = "asc",  # type: ignore[valid-type]
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
    ) -> JSONResponse:
        return JSONResponse(store.catalog.search(query, sort, order, offset, limit))

    @app.get("/api/features/{feature_id}")
    def feature(feature_id: str) -> JSONResponse:
        return JSONResponse(store.feature(checked_id(store, feature_id)))

    @app.get("/api/features/{feature_id}/similar")
    def similar(feature_id: str, limit: int = Query(10, ge=1, le=MAX_SIMILAR)) -> JSONResponse:
        return JSONResponse({"items": meaning.similar(checked_id(store, feature_id), limit)})

    @app.post("/api/search-meaning")
    def search_meaning(body: MeaningRequest) -> JSONResponse:
        return JSONResponse(meaning.search(body.query, body.offset, body.limit))

    rendered_map: list[bytes] = []  # the map's JSON, rendered on the first request

    @app.get("/api/map")
    def feature_map() -> Response:
        if not rendered_map:
            rendered_map.append(bytes(JSONResponse(store.map()).body))
        return Response(rendered_map[0], media_type="application/json")


def _model_routes(
    app, store: FeatureStore, fires: FiresEngine | None, steer: SteerEngine | None
) -> None:
    """The endpoints that run the model: what fires on a text, steering, attribution."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    Word = Annotated[str, Field(max_length=64)]  # bounded, as the errors quote the value

    class FiresRequest(BaseModel):
        text: str

    class SteerRequest(BaseModel):
        feature: int | str
        prompt: str
        strength: float | Word = 5.0
        relative: bool = True
        mode: Word = "clamp"
        positions: Word = "all"
        max_new_tokens: int = 32
        temperature: float = 0.7
        seed: int = 0
        chat: bool | None = None

    class AttributeRequest(BaseModel):
        prompt: str
        target: Word | None = None
        top: int = 20
        chat: bool = False

    @app.post("/api/fires")
    def fires_on_text(body: FiresRequest) -> JSONResponse:
        if fires is None:
            raise HTTPException(503, "this server runs without a model")
        check_chars(body.text, fires.max_tokens, "text")
        try:
            return JSONResponse(fires.run(body.text))
        except FiresInputError as err:
            raise HTTPException(err.status, str(err)) from err

    # Plain `def` routes run in the thread pool, off the event loop; the engines take the
    # model's lock, so browsing stays responsive while a generation runs.
    @app.post("/api/steer")
    def steer_feature(body: SteerRequest) -> JSONResponse:
        fid = checked_id(store, body.feature)
        if steer is None:
            raise HTTPException(503, "this server runs without a model")
        options = body.model_dump(exclude={"feature"})
        return JSONResponse(steer.steer(fid, **options))

    @app.post("/api/attribute")
    def attribute_prompt(body: AttributeRequest) -> JSONResponse:
        if steer is None:
            raise HTTPException(503, "this server runs without a model")
        return JSONResponse(steer.attribute(**body.model_dump()))
