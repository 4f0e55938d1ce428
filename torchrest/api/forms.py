"""Stage 1 of a request: the HTTP body -> the encoded image bytes.

Two shapes are accepted: `multipart/form-data` with a field `image` (the seed's `curl -F image=@cat.jpg`)
and a raw body with `Content-Type: image/*` or `application/octet-stream`. The multipart body is parsed
as it streams in by python-multipart; only the `image` part is kept, other fields are skipped.
"""

from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from torchrest.api.http import Request
from torchrest.errors import MalformedRequest, MissingImage, UnsupportedMediaType

IMAGE_FIELD = b"image"
RAW_TYPES = ("image/", "application/octet-stream")


async def read_image(request: Request, limit_bytes: int) -> bytes:
    media_type, options = parse_options_header(request.content_type)
    media = media_type.decode("latin-1").lower()
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedRequest("multipart/form-data without a boundary")
        return await _read_multipart(request, boundary, limit_bytes)
    if media.startswith(RAW_TYPES):
        data = await request.body(limit_bytes)
        if not data:
            raise MissingImage("empty body: send the image bytes, or a multipart field 'image'")
        return data
    shown = media or "none"
    raise UnsupportedMediaType(
        f"content type {shown!r} is not supported: use multipart/form-data with a field 'image' "
        "(curl -F image=@photo.jpg) or a raw body with Content-Type image/*"
    )


class _ImagePart:
    """python-multipart callbacks that collect the first part named `image`."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.found = False
        self.complete = False
        self._in_image = False
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._in_image = False

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition" and not self.found:
            _, params = parse_options_header(bytes(self._header_value))
            if params.get(b"name") == IMAGE_FIELD:
                self._in_image = self.found = True
        self._header_name.clear()
        self._header_value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_image:
            self.data += data[start:end]

    def _part_end(self) -> None:
        if self._in_image:
            self.complete = True
            self._in_image = False


async def _read_multipart(request: Request, boundary: bytes, limit_bytes: int) -> bytes:
    part = _ImagePart()
    parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.body_chunks(limit_bytes):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedRequest(f"malformed multipart body: {exc}") from None
    if not part.found:
        raise MissingImage("no multipart field named 'image' (curl -F image=@photo.jpg)")
    if not part.complete:
        raise MalformedRequest("multipart body ends inside the 'image' field")
    if not part.data:
        raise MissingImage("the multipart field 'image' is empty")
    return bytes(part.data)
