"""Route guards: what a handler needs before it runs, declared where the route is.

    "/classify": {"POST": inference(classify)}                      an API key, when keys are configured
    "/v2/repository/models/{name}/load": {"POST": admin(load)}      the admin token, always

The check comes before admission and before the body is read: a refused request costs a header lookup.
"""

from __future__ import annotations

import functools

from torchrest.api.app import AppState, Handler
from torchrest.api.http import Request, Response


def inference(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: Request, state: AppState) -> Response:
        state.access.check_inference(request.headers.get("authorization"), request.headers.get("x-api-key"))
        return await handler(request, state)

    return guarded


def admin(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: Request, state: AppState) -> Response:
        state.access.check_admin(request.headers.get("authorization"))
        return await handler(request, state)

    return guarded
