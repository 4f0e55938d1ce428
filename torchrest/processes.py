"""What every process the supervisor starts (the engine, each front-end) does first, before anything else."""

from __future__ import annotations

import ctypes
import signal

from torchrest.config import ServerConfig
from torchrest.logs import configure_logging

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def child_process_setup(config: ServerConfig, role: str, name: str) -> None:
    """What every process the supervisor starts does first: end with the supervisor (a killed supervisor
    must not leave orphans holding the port), take a name `top` and `ps -o comm` show (`name`, at most
    15 characters), and log as the supervisor does, naming its `role`."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))
    except (OSError, AttributeError):  # not Linux: the supervisor's stop still ends its children
        pass
    configure_logging(config.log_level, config.log_format, role)
