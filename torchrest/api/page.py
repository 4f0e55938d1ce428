"""The web page for people: `GET /` in a browser (Accept: text/html) serves it; API clients keep the JSON.

    /             the page (static/index.html), or the server's JSON description
    /web/app.js, /web/style.css   its script and style, shipped in the package, read once
    /web/stats    the small JSON feed its charts poll, built only when asked: per model, cumulative
                  answers by outcome, recent latency percentiles and batch size, queue depth, in-flight

The page tries a model (file, drop, paste or camera -> POST to the route of the task picked among the
model's tasks, its own first; the Server-Timing header split into queue, decode and inference):

    classify  /classify?top_k=5: the top five labels
    detect    /detect: the boxes drawn over the photo (they are in its original pixels), and listed
    segment   /segment: the mask's class ids coloured over the photo, and a legend of the classes present
    embed     /embed: two photos, A and B: each one's dimensions, then their cosine similarity

and watches the server (a table of the models and their tasks, charts over the last three minutes).
"""

from __future__ import annotations

import time
from importlib import resources

from torchrest import __version__
from torchrest.api.app import AppState
from torchrest.api.health import info
from torchrest.api.http import Request, Response, json_response

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
STATIC = {
    name: (
        resources.files("torchrest.api").joinpath("static", name).read_bytes(),
        CONTENT_TYPES["." + name.split(".")[-1]],
    )
    for name in ("index.html", "app.js", "style.css")
}
# the files change only with the package: browsers may keep them a while
CACHE = {"cache-control": "public, max-age=300"}


async def front_door(request: Request, state: AppState) -> Response:
    """The page for a browser, the JSON description for everyone else."""
    if "text/html" in request.headers.get("accept", ""):
        body, content_type = STATIC["index.html"]
        return Response(200, body, content_type=content_type, headers={"cache-control": "no-cache"})
    return await info(request, state)


async def script(request: Request, state: AppState) -> Response:
    body, content_type = STATIC["app.js"]
    return Response(200, body, content_type=content_type, headers=CACHE)


async def style(request: Request, state: AppState) -> Response:
    body, content_type = STATIC["style.css"]
    return Response(200, body, content_type=content_type, headers=CACHE)


async def stats(request: Request, state: AppState) -> Response:
    activity = await state.models.activity()
    models = []
    for entry in state.models.entries.values():
        runtime, heads = entry.runtime, entry.model.heads
        row: dict[str, object] = {
            "name": entry.name,
            "version": entry.version,
            "state": entry.state,
            "tasks": list(entry.model.tasks),
            # how the page offers each task (its route, view, query and help): the tasks say, the page asks
            "views": {name: task.page() for name, task in heads.tasks_by_name.items()} if heads is not None else {},
            "backend": runtime.info.backend if runtime else None,
            "default": entry.name == state.models.default,
        }
        if runtime is not None and entry.name in activity:
            row |= activity[entry.name]
        models.append(row)
    payload = {"time": time.time(), "version": __version__, "ready": state.not_ready_reason() is None}
    return json_response(200, payload | {"models": models}, headers={"cache-control": "no-store"})
