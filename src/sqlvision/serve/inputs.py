"""Images out of a predict request: multipart uploads (one or many), raw bytes, or base64 JSON,
within the upload caps; each checked (format, whole, pixel cap) before it is decoded."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from sqlvision.imaging.probe import probe
from sqlvision.serve.config import ServeConfig
from sqlvision.serve.problems import Problem

MULTIPART = "multipart/form-data"
#: the request body's OpenAPI description (the handler reads the body itself)
REQUEST_BODY = {
    "required": True,
    "content": {
        MULTIPART: {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "description": "base64 of one image"},
            "images": {"type": "array", "items": {"type": "string"}, "description": "base64 images"},
            "top_k": {"type": "integer", "minimum": 1}, "min_prob": {"type": "number"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


@dataclass
class Upload:
    """The images of one request, and options given in the body (JSON or form fields)."""

    images: list[bytes]
    options: dict[str, Any]


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 once it passes ``cap`` bytes (declared or not)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large(int(declared), cap)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(size, cap)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, cap: int) -> Problem:
    return Problem(413, f"the upload is larger than the server's cap of {cap:,} bytes "
                        f"({size:,} bytes or more)", "send a smaller image, or restart the "
                        "server with a larger --max-upload")


def _base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise Problem(400, f"{where} must be a base64 string")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(400, f"{where} is not valid base64") from None


async def read_upload(request: Request, config: ServeConfig) -> Upload:
    """The images and body options of a predict request, or a 4xx problem saying what is wrong."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, config.max_upload_bytes)
    options: dict[str, Any] = {}
    if media == MULTIPART:
        request._body = body  # parsed from what was read, within the cap
        async with request.form(max_files=config.max_images, max_fields=16,
                                max_part_size=64 * 1024) as form:
            images = [await v.read() for _, v in form.multi_items() if isinstance(v, UploadFile)]
            options = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    elif media == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Problem(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise Problem(400, 'the JSON body must be an object: {"image": BASE64} or '
                               '{"images": [BASE64, ...]}')
        listed = data.get("images", [])
        if not isinstance(listed, list):
            raise Problem(400, '"images" must be a list of base64 strings')
        images = [_base64(data["image"], "image")] if "image" in data else []
        images += [_base64(v, f"images[{i}]") for i, v in enumerate(listed)]
        options = {k: data[k] for k in ("top_k", "min_prob") if k in data}
    elif media in ("application/x-www-form-urlencoded", "text/plain"):
        raise Problem(415, f"cannot read images from {media}",
                      "send multipart/form-data (curl -F image=@FILE), raw image bytes, or JSON "
                      "with base64 images")
    else:
        images = [body] if body else []
    if not images:
        raise Problem(400, "no image in the request",
                      "send one: curl -F image=@shoe.jpg URL (or raw bytes, or base64 JSON)")
    if len(images) > config.max_images:
        raise Problem(413, f"{len(images)} images in one request; the cap is {config.max_images}",
                      "split the request")
    return Upload(images, options)


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse what is not a whole image (422) or has more than ``max_pixels`` pixels (413),
    from its header, before any decoding."""
    info = probe(data, 0)
    if max_pixels and info.width * info.height > max_pixels:
        raise Problem(413, f"the image has {info.width}x{info.height} = "
                           f"{info.width * info.height:,} pixels; the cap is {max_pixels:,}",
                      "send a smaller image, or restart the server with a larger --max-pixels")


def number(options: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A numeric body option within ``[low, high]`` (400 otherwise)."""
    value = options.get(key, default)
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise Problem(400, f"{key} must be a number") from None
    if not low <= result <= high:
        raise Problem(400, f"{key} must be between {low:g} and {high:g}")
    return result
