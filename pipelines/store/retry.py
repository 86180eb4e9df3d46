"""Retries of Qdrant server requests: which errors are worth another try, and the backoff.

A Qdrant server that restarts, fails over a shard or sheds load answers for a few seconds
with refused connections, timeouts, HTTP 5xx/429 or gRPC ``UNAVAILABLE``. Every write the
index job sends is idempotent (points are keyed by the UUID5 of their URI, payload updates
and deletes name their points), so such a request is simply sent again after an
exponential backoff with jitter. Anything else (a 400 for a malformed point, a 404 for a
missing collection, an authentication error) is raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("adaclip.store")

T = TypeVar("T")

RETRY_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_GRPC_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


@dataclass(frozen=True)
class RetryPolicy:
    """How a request is retried.

    Attributes:
        attempts: tries in all, the first included.
        base_s: delay before the second try; doubles per try, capped at ``cap_s``, each
            delay drawn uniformly from [d/2, d]. The defaults wait about 15 to 30 s in all,
            enough for a Qdrant pod to restart.
        cap_s: the longest single delay.
    """

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, retry: int) -> float:
        d = min(self.cap_s, self.base_s * 2 ** (retry - 1))
        return d / 2 + random.uniform(0, d / 2)


def is_transient(err: BaseException) -> bool:
    """True for errors a healthy server would not give: connection, timeout, 5xx, 429,
    gRPC UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED / ABORTED."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(err, UnexpectedResponse):
        return err.status_code in RETRY_HTTP_STATUS
    if isinstance(err, ResponseHandlingException):  # the transport failed (httpx error)
        return True
    if isinstance(err, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    code = getattr(err, "code", None)  # grpc.RpcError (grpc is imported only with gRPC)
    if callable(code) and type(err).__module__.startswith("grpc"):
        try:
            name = getattr(code(), "name", "")
        except Exception:  # an RpcError that is not a call: no status to read
            return False
        return name in RETRY_GRPC_CODES
    return False


def with_retries(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, sent again after a transient error until ``policy.attempts`` are spent.

    Raises:
        the last error, when it is not transient or no attempt is left.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as err:
            if attempt >= policy.attempts or not is_transient(err):
                raise
            delay = policy.delay(attempt)
            log.warning(
                "%s failed (try %d/%d), again in %.1fs: %s: %s",
                what, attempt, policy.attempts, delay, type(err).__name__, str(err)[:200],
            )  # fmt: skip
            sleep(delay)
    raise AssertionError("unreachable")
