"""The one HTTP client of embcat's outgoing requests (``embcat mirror``, remote publish).

- **Bounded retries with exponential backoff** (stamina): connection failures
  (``httpx.ConnectError`` / ``ConnectTimeout``) and answers 502, 503, 504 and 429 are tried
  again, up to ``attempts`` times within ``retry_timeout_s`` seconds; a ``Retry-After``
  (seconds or an HTTP date) is honoured, capped at ``max_retry_after_s``. Every other
  answer (400, 401, 404, ...) is final at once. Every request embcat sends is safe to
  repeat (exports are deterministic for an ``as_of``, uploads name their offset, a commit
  of a published run is idempotent).
- **Credentials to the origin only**: the headers given (``Authorization``) go to the
  scheme, host and port of ``base_url`` and to no other host (asset hrefs and links may
  name others); httpx drops them on a redirect to another origin as well.
- **Bounds per request**: a body is read as a stream within ``limit`` bytes and within
  ``deadline_s`` seconds in total (a body trickling one byte at a time ends at the
  deadline, give or take one read timeout); ``Content-Length`` beyond the limit is refused
  before the body is read.
"""

from __future__ import annotations

import email.utils
import io
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import stamina

from embcat.catalog.errors import EmbcatError

RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
ERROR_BODY_BYTES = 64 << 10  # of an error answer only its start is read (its message)


class RemoteError(EmbcatError):
    """The remote server answered with an error or something that is not what we expect."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a request is tried again (stamina's backoff parameters)."""

    attempts: int = 5
    retry_timeout_s: float = 120.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 30.0
    wait_jitter_s: float = 1.0
    max_retry_after_s: float = 60.0


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def origin_of(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit."""
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return u.scheme, u.host.lower(), port


class OriginAuth(httpx.Auth):
    """Credentials for one origin only: requests to any other host (asset hrefs, links)
    go without them."""

    def __init__(self, origin_url: str, headers: dict[str, str]) -> None:
        self.origin = origin_of(origin_url)
        self.headers = dict(headers)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.headers and origin_of(request.url) == self.origin:
            request.headers.update(self.headers)
        yield request


def retry_after_s(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass
class Answer:
    """A response read within the bounds: status, headers and the body's bytes."""

    status: int
    headers: httpx.Headers
    content: bytes
    url: str

    def json(self) -> Any:
        import json

        return json.loads(self.content)

    def message(self) -> str:
        """The error text of a JSON error answer (``description`` / ``detail``) or its start."""
        try:
            body = self.json()
        except ValueError:
            return self.content[:200].decode("utf-8", "replace")
        if isinstance(body, dict):
            text = body.get("description") or body.get("detail")
            if text:
                return str(text)
        return self.content[:200].decode("utf-8", "replace")


class _Transient(Exception):
    """An answer worth retrying (429, 502-504); carries it for after the last attempt."""

    def __init__(self, answer: Answer, wait_s: float | None) -> None:
        super().__init__(f"HTTP {answer.status}")
        self.answer = answer
        self.wait_s = wait_s


class HttpClient:
    """httpx with the bounds, retries and origin-only credentials above.

    ``fetch`` returns an ``Answer`` (status < 300, or any status with ``check=False``);
    redirects are refused unless ``follow_redirects`` is given per request; error answers
    raise ``RemoteError`` through ``error`` (a hook the caller may replace to map statuses
    to its own errors).
    """

    def __init__(
        self,
        base_url: str,
        credentials: dict[str, str] | None = None,
        *,
        timeout_s: float = 120.0,
        deadline_s: float = 600.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        error: Callable[[Answer, str], EmbcatError] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.deadline_s = deadline_s
        self.retry = retry
        self.error = error or default_error
        self.client = httpx.Client(
            base_url=self.base_url,
            auth=OriginAuth(self.base_url, credentials or {}),
            timeout=timeout_s,
            follow_redirects=False,
        )

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _hook(self, exc: Exception) -> bool | float:
        if isinstance(exc, _Transient):
            if exc.wait_s is not None:
                return min(exc.wait_s, self.retry.max_retry_after_s)
            return True
        return isinstance(exc, RETRY_ERRORS)

    def fetch(
        self,
        method: str,
        url: str,
        what: str,
        *,
        limit: int,
        deadline_s: float | None = None,
        on_bytes: Callable[[int], None] | None = None,
        check: bool = True,
        content: bytes | Callable[[], Iterable[bytes]] | None = None,
        **kwargs: Any,
    ) -> Answer:
        """One request, tried again on connection failures and 429/502/503/504 within the
        retry policy. ``content`` may be a callable that makes the body anew per attempt
        (a generator cannot be sent twice)."""
        answer: Answer | None = None
        try:
            for attempt in stamina.retry_context(
                on=self._hook,
                attempts=self.retry.attempts,
                timeout=self.retry.retry_timeout_s,
                wait_initial=self.retry.wait_initial_s,
                wait_max=self.retry.wait_max_s,
                wait_jitter=self.retry.wait_jitter_s,
            ):
                with attempt:
                    body = content() if callable(content) else content
                    answer = self._once(
                        method, url, what, limit=limit, on_bytes=on_bytes,
                        deadline_s=deadline_s or self.deadline_s, content=body, **kwargs,
                    )  # fmt: skip
        except _Transient as exc:  # retries used up: the last answer stands
            answer = exc.answer
        assert answer is not None
        if check and answer.status >= 300:
            raise self.error(answer, what)
        return answer

    def _once(
        self,
        method: str,
        url: str,
        what: str,
        *,
        limit: int,
        deadline_s: float,
        on_bytes: Callable[[int], None] | None,
        **kwargs: Any,
    ) -> Answer:
        started = time.monotonic()
        buf = io.BytesIO()
        with self.client.stream(method, url, **kwargs) as r:
            if r.status_code >= 300:  # an error message, not a payload: its start is enough
                for chunk in r.iter_bytes():
                    buf.write(chunk)
                    if buf.tell() >= ERROR_BODY_BYTES or time.monotonic() - started > deadline_s:
                        break
                answer = Answer(r.status_code, r.headers, buf.getvalue(), str(r.url))
                if r.status_code in RETRY_STATUSES:
                    raise _Transient(answer, retry_after_s(r.headers.get("retry-after")))
                return answer
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RemoteError(
                    f"{what}: the remote announces {int(declared):,} bytes, more than the"
                    f" {limit:,} accepted per answer (EMBCAT_MIRROR_MAX_PAGE_BYTES /"
                    " _MAX_JSON_BYTES; --page-rows makes export pages smaller)"
                )
            total = 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise RemoteError(
                        f"{what}: the answer exceeds the {limit:,} bytes accepted per answer"
                        " (EMBCAT_MIRROR_MAX_PAGE_BYTES / _MAX_JSON_BYTES; --page-rows makes"
                        " export pages smaller)"
                    )
                if time.monotonic() - started > deadline_s:
                    raise RemoteError(
                        f"{what}: the answer took more than {deadline_s:g} s ({total:,} bytes"
                        " so far); refused (EMBCAT_MIRROR_REQUEST_DEADLINE_S)"
                    )
                buf.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            return Answer(r.status_code, r.headers, buf.getvalue(), str(r.url))

    def get_json(self, url: str, what: str, *, limit: int, **kwargs: Any) -> Any:
        answer = self.fetch("GET", url, what, limit=limit, **kwargs)
        try:
            return answer.json()
        except ValueError:
            raise RemoteError(f"{what}: the remote's answer is not JSON") from None


def default_error(answer: Answer, what: str) -> EmbcatError:
    """``RemoteError`` naming the status and the remote's message (``NotFound`` for 404;
    a redirect is named with where it points)."""
    from embcat.catalog.errors import NotFound

    if 300 <= answer.status < 400:
        where = answer.headers.get("location", "?")
        return RemoteError(
            f"{what}: the remote redirects (HTTP {answer.status}) to {where}; a mirror follows"
            " no redirects: give the URL of the embcat or STAC API itself"
        )
    if answer.status == 404:
        return NotFound(f"{what}: {answer.message()}")
    return RemoteError(f"{what}: HTTP {answer.status}: {answer.message()}")
