"""Helpers several test modules share that are not fixtures: one-line start-up failures, raw gRPC requests
and the gRPC client scenarios (tests/grpc_clients.py, each in a process of its own), thread priorities,
forged images. Test modules import these from here (or from conftest.py), never from each other."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

from PIL import Image

from tests.conftest import ADMIN_TOKEN

CLIENTS = Path(__file__).with_name("grpc_clients.py")


def assert_one_line_failure(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("torchrest: error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`torchrest ARGV` run in this process (torchrest.cli.main), for a command that ends at once (a start-up
    or argument error, --help): its status and what it wrote, as a subprocess would have given them, without
    a process start (and torch's import) each. What the command sets for its process is put back: the
    logging set-up, torch's threads and its flushing of denormal floats (which Hypothesis refuses to run
    beside)."""
    import torch

    from torchrest import cli

    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(list(argv))
            except SystemExit as exc:  # argparse: --help, or a flag it cannot parse
                status = exc.code if isinstance(exc.code, int) else 2
    finally:
        root.handlers[:], root.level = handlers, level
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
    # a command that got as far as serving lowered this thread (--event-loop-nice), and every process the
    # tests start after it would inherit that: such a command is for a subprocess
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == nice, f"torchrest {argv} began serving"
    return subprocess.CompletedProcess(["torchrest", *argv], status, out.getvalue(), err.getvalue())


def start(*args: str) -> subprocess.CompletedProcess[str]:
    """`torchrest serve ARGS` that is expected to fail before it serves (on a free port, if it got that far)."""
    return run_cli("serve", *(() if "--port" in args else ("--host", "127.0.0.1", "--port", "0")), *args)


def forged_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header then claims width x height (a decompression bomb's signature)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def clients(scenario: str, address: str, argument: str = ADMIN_TOKEN) -> dict:  # type: ignore[type-arg]
    """tests/grpc_clients.py SCENARIO ADDRESS ARGUMENT (the admin token, or the model for `answers`)."""
    result = subprocess.run(
        [sys.executable, str(CLIENTS), scenario, address, argument], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def infer_request(model: str, photo: bytes, images: int = 1) -> bytes:
    """A ModelInferRequest for `model` with `images` copies of one image, as raw protobuf (the protocol's
    field numbers), so this process needs no generated module of the `inference` package."""

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    tensor = field(1, b"image") + field(2, b"BYTES") + varint(3 << 3 | 0) + varint(images)
    raw = (len(photo).to_bytes(4, "little") + photo) * images
    return field(1, model.encode()) + field(5, tensor) + field(7, raw)


def thread_nice_values(pid: int) -> dict[int, int]:
    """Every thread of `pid`: its nice value (field 19 of /proc/PID/task/TID/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values[int(task.name)] = int(fields[16])  # fields after the command name start at field 3
    return values
