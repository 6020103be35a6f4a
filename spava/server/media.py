"""Media URLs of a chat request -> what `Pipeline.submit` takes (a local path or encoded bytes).

Runs on the server's event loop. Three schemes:
- `file://`: only under `--allowed-local-media-path` (refused when unset); symlinks and `..` are
  resolved first, so the real file must lie inside that folder. Passed on as a path (no copy).
- `data:<mime>;base64,...`: `video/*` for video_url parts, `image/*` for image_url parts; decoded.
- `http(s)://`: fetched with httpx as a stream, with a byte limit (413 past it), a deadline for the
  whole download, and (when configured) an allowed-host list checked on every redirect.
Every failure is an `APIError` that names the message part (`param`) and what to change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from spava.server.errors import APIError, bad_request
from spava.server.options import ServerOptions

_DECODE_IN_THREAD_BYTES = 1 << 20  # base64 payloads larger than this are decoded off the event loop


@dataclass(frozen=True)
class MediaRef:
    """One media part of a request: `kind` is "video" or "image"; `param` names it for errors."""

    kind: str
    url: str
    param: str


@dataclass(frozen=True)
class MediaInput:
    """A resolved media item: a local file path or the encoded bytes."""

    kind: str
    path: str | None = None
    data: bytes | None = None

    @property
    def value(self) -> str | bytes:
        return self.path if self.path is not None else self.data


def _too_large(ref: MediaRef, num_bytes: int | None, limit: int) -> APIError:
    size = f" ({num_bytes} bytes)" if num_bytes is not None else ""
    return APIError(413, f"{ref.param}: the {ref.kind}{size} is larger than the server's limit of {limit} bytes "
                         "(--max-media-bytes); send a smaller file", param=ref.param, code="media_too_large")


class MediaResolver:
    """Resolves `MediaRef`s with the operator's rules; owns one httpx client (close with `aclose`)."""

    def __init__(self, options: ServerOptions, transport=None):
        import httpx

        self.options = options
        hooks = {"request": [self._check_host]} if options.allowed_media_domains else {}
        self._client = httpx.AsyncClient(follow_redirects=True, max_redirects=5, transport=transport,
                                         timeout=httpx.Timeout(options.media_fetch_timeout_s), event_hooks=hooks)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, ref: MediaRef) -> MediaInput:
        scheme = urlsplit(ref.url).scheme.lower()
        if scheme == "file":
            return MediaInput(ref.kind, path=self._local_path(ref))
        if scheme == "data":
            return MediaInput(ref.kind, data=await self._decode_data_url(ref))
        if scheme in ("http", "https"):
            return MediaInput(ref.kind, data=await self._fetch(ref))
        raise bad_request(f"{ref.param}: URL scheme {scheme or '(none)'!r} is not supported; use file://, data: "
                          "or http(s)://", ref.param, "unsupported_url")

    # ----- file:// ---------------------------------------------------------------------------------

    def _local_path(self, ref: MediaRef) -> str:
        root = self.options.allowed_local_media_path
        if root is None:
            raise APIError(403, f"{ref.param}: file:// URLs are refused: the server was started without "
                                "--allowed-local-media-path", type="permission_error", param=ref.param,
                           code="local_media_not_allowed")
        parts = urlsplit(ref.url)
        if parts.netloc not in ("", "localhost"):
            raise bad_request(f"{ref.param}: file:// URLs must name a local file (file:///path), got host "
                              f"{parts.netloc!r}", ref.param, "unsupported_url")
        path = os.path.realpath(unquote(parts.path))
        if os.path.commonpath([path, root]) != root:
            raise APIError(403, f"{ref.param}: {unquote(parts.path)!r} is outside the folder this server may read "
                                f"({root}, --allowed-local-media-path)", type="permission_error", param=ref.param,
                           code="local_media_not_allowed")
        if not os.path.isfile(path):
            raise bad_request(f"{ref.param}: {unquote(parts.path)!r} is not a file", ref.param, "media_not_found")
        return path

    # ----- data: -----------------------------------------------------------------------------------

    async def _decode_data_url(self, ref: MediaRef) -> bytes:
        header, separator, payload = ref.url[len("data:"):].partition(",")
        mime, *params = header.split(";")
        if not separator or "base64" not in params:
            raise bad_request(f"{ref.param}: data URLs must be base64 (data:<type>;base64,<data>)", ref.param,
                              "invalid_data_url")
        expected = f"{ref.kind}/"
        if not mime.lower().startswith(expected):
            raise bad_request(f"{ref.param}: a {ref.kind}_url data URL needs a {expected}* media type, got "
                              f"{mime or '(none)'!r}", ref.param, "invalid_data_url")
        limit = self.options.max_media_bytes
        estimate = len(payload) * 3 // 4
        if estimate - 2 > limit:
            raise _too_large(ref, estimate, limit)
        try:
            if len(payload) > _DECODE_IN_THREAD_BYTES:
                data = await asyncio.to_thread(base64.b64decode, payload, validate=True)
            else:
                data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise bad_request(f"{ref.param}: the data URL is not valid base64 ({error})", ref.param,
                              "invalid_data_url") from None
        if len(data) > limit:
            raise _too_large(ref, len(data), limit)
        if not data:
            raise bad_request(f"{ref.param}: the data URL holds no bytes", ref.param, "invalid_data_url")
        return data

    # ----- http(s):// ------------------------------------------------------------------------------

    async def _check_host(self, request) -> None:
        host = (request.url.host or "").lower()
        if host not in self.options.allowed_media_domains:
            raise PermissionError(host)

    async def _fetch(self, ref: MediaRef) -> bytes:
        import httpx

        timeout = self.options.media_fetch_timeout_s
        host = urlsplit(ref.url).hostname or "?"
        try:
            return await asyncio.wait_for(self._download(ref), timeout)
        except PermissionError as error:
            raise APIError(403, f"{ref.param}: host {str(error) or host!r} is not in the server's allowed media "
                                "domains (--allowed-media-domains)", type="permission_error", param=ref.param,
                           code="media_domain_not_allowed") from None
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise bad_request(f"{ref.param}: fetching {ref.url!r} did not finish within {timeout:g} s "
                              "(--media-fetch-timeout)", ref.param, "media_fetch_timeout") from None
        except httpx.TooManyRedirects:
            raise bad_request(f"{ref.param}: {ref.url!r} redirects too often", ref.param,
                              "media_fetch_failed") from None
        except (httpx.TransportError, httpx.InvalidURL) as error:
            raise bad_request(f"{ref.param}: could not fetch {ref.url!r}: host {host!r} is unreachable or refused "
                              f"the connection ({type(error).__name__}: {error})", ref.param,
                              "media_fetch_failed") from None

    async def _download(self, ref: MediaRef) -> bytes:
        limit = self.options.max_media_bytes
        async with self._client.stream("GET", ref.url) as response:
            if response.status_code != 200:
                raise bad_request(f"{ref.param}: fetching {ref.url!r} returned HTTP {response.status_code}",
                                  ref.param, "media_fetch_failed")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(ref, int(declared), limit)
            buffer = bytearray()
            async for piece in response.aiter_bytes():
                buffer += piece
                if len(buffer) > limit:
                    raise _too_large(ref, None, limit)
        if not buffer:
            raise bad_request(f"{ref.param}: {ref.url!r} returned no bytes", ref.param, "media_fetch_failed")
        return bytes(buffer)
