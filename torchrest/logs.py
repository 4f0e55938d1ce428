"""How every torchrest process logs: text lines (the default) or, with `--log-format json`, one JSON object
per line for a log pipeline, and then a line per answered request too (logger `torchrest.access`):

    {"time": "2026-11-30T16:20:01.123Z", "level": "INFO", "logger": "torchrest.access", "process": "serve",
     "message": "POST /classify 200", "request_id": "...", "trace_id": "...", "span_id": "...",
     "route": "/classify", "model": "efficientnet_lite0", "task": "classify", "status": 200, "duration_ms": 12.3}

The ids are the request's (`X-Request-Id`) and its span's when tracing is on, so that a log line and a
trace find each other. Other lines carry what their `extra` gives of the same fields.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
TOP_LEVEL = ("serve", "optimize")  # a command's own process: its text lines name no role
FIELDS = ("request_id", "trace_id", "span_id", "route", "model", "task", "status", "code", "duration_ms")

access = logging.getLogger("torchrest.access")


def configure_logging(level: str, form: str, process: str) -> None:
    """The root logger of this process: `level`, in `form`; `process` names the process in each line."""
    handler = logging.StreamHandler()
    if form == JSON:
        handler.setFormatter(JsonFormatter(process))
    else:
        role = f" [{process}]" if process not in TOP_LEVEL else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{role}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access.disabled = form != JSON  # request lines only where a pipeline reads them


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))
