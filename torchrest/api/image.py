"""POST /<task> (each task's route: /classify, /detect, ... and any task of one's own): one image in, the
task's answer out, in the original image's pixels. `/classify` keeps the seed's contract byte for byte.

    pick the model (?model=NAME: 404/503; 400 when it does not do this task) -> the task's options from the
    query (400) -> room in the queue (503 if full) -> read body (408/413/415/400) -> admit (503 if the queue
    filled meanwhile) -> runtime: deadline (504), decode into the batch (400/413), model (500) -> the task's
    answer (JSON, or a PNG mask: 413 past --max-body-mb); a client that leaves while queued has its job
    cancelled

The room is checked first, so an overloaded server mostly answers 503 without reading or decoding anything;
the place is taken only once the body is in, so a slow upload holds none.
"""

from __future__ import annotations

import asyncio
import time

from torchrest.admission import admitted, room_for
from torchrest.api.app import AppState, Handler
from torchrest.api.forms import read_image
from torchrest.api.guards import inference
from torchrest.api.http import Request, Response
from torchrest.api.lifecycle import deadline_s, in_time, until_disconnect
from torchrest.errors import AnswerTooLarge, TaskFailed, TaskNotServed, TorchrestError
from torchrest.served import ServedModel, tasks_by_route
from torchrest.tasks import Task
from torchrest.tasks.registry import installed_tasks


def endpoint(task: Task) -> Handler:
    """The handler of `task`'s route."""

    async def answer(request: Request, state: AppState) -> Response:
        runtime = state.models.runtime(request.query.get("model"))  # 404 unknown, 503 not loaded (yet)
        head = head_of(runtime.model, task)
        options = task.http_options(request.query)
        config = state.config
        deadline = deadline_s(request, config.timeout_ms)
        times = request.times
        times.task = task.name
        room_for(runtime, deadline)  # 503 before the body is read; a slow upload holds no place meanwhile
        admitted_s = time.monotonic()
        times.mark("admission", request.started_s, admitted_s)
        data = await in_time(read_image(request, config.max_body_bytes), config.read_timeout)
        times.mark("body read", admitted_s, time.monotonic())
        with admitted(runtime, deadline):
            answering = runtime.infer(data, deadline, request.request_id, times, task.name, options)
            answered = await until_disconnect(answering, request)
        labels, name, accept = runtime.model.labels, runtime.name, request.headers.get("accept", "")
        try:
            if task.encodes_off_loop(answered):
                body, content_type = await asyncio.to_thread(
                    task.http_body, answered, options, head, labels, name, accept
                )
            else:
                body, content_type = task.http_body(answered, options, head, labels, name, accept)
        except TorchrestError:
            raise
        except Exception as exc:  # the task's own code: this request fails, named, and the server goes on
            raise TaskFailed(f"task {task.name} failed to write its answer: {type(exc).__name__}: {exc}") from exc
        if len(body) > config.max_body_bytes:
            raise AnswerTooLarge(
                f"the answer is {len(body) / 2**20:.1f} MiB, over the limit of {config.max_body_mb:g} MiB "
                "(--max-body-mb): send a smaller image"
            )
        total_s = time.monotonic() - request.started_s
        runtime.observe_total(total_s)
        return Response(200, body, content_type=content_type, headers={"server-timing": times.header(total_s)})

    answer.__name__ = task.name
    return answer


def head_of(model: ServedModel, task: Task) -> object:
    """The model's head for `task`; 400 naming what it does when it does not do this."""
    heads = model.heads
    if heads is None or task.name not in heads.by_task:
        does = " and ".join(model.tasks)
        own = f" (POST {heads.task(model.tasks[0]).route})" if heads is not None else ""
        raise TaskNotServed(f"model {model.name} does not {task.name}: it does {does}{own}")
    return heads.by_task[task.name]


ENDPOINTS: dict[str, Handler] = {task.route: endpoint(task) for task in installed_tasks()}
_served_routes: dict[tuple[str, str], dict[str, Handler]] = {}  # (route, the task's import path) -> methods


def served_route(state: AppState, path: str) -> dict[str, Handler] | None:
    """The route of a task that is not installed but that a loaded model serves (`--task package.module:Class`,
    a folder's config.json); None when no model's task has this route."""
    task = tasks_by_route(state.models).get(path)
    if task is None:
        return None
    key = (path, f"{type(task).__module__}:{type(task).__qualname__}")
    if key not in _served_routes:
        _served_routes[key] = {"POST": inference(endpoint(task))}
    return _served_routes[key]
