"""`prunelog run` outlives its event log's server: opening retries with backoff, and a cycle cut
short by a lost connection waits for the log to come back, then the next cycle logs what the
journal holds and resumes the interrupted phase through events."""

from __future__ import annotations

import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_any,
    stop_when_event_set,
    wait_exponential,
)

from domain.errors import EventLogError, EventLogUnreachableError
from infrastructure.runtime import Runtime, Settings

# Backoff between attempts: 0.5 s, 1 s, 2 s … capped at 30 s; forever, until stopped.
WAIT = wait_exponential(multiplier=0.5, min=0.5, max=30)


class _StopFlag:
    """tenacity's stop_when_event_set wants an Event-like object."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.is_set = should_stop


def _retrying(
    should_stop: Callable[[], bool], on_retry: Callable[[str], None], kind: type[BaseException]
) -> Retrying:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        on_retry(f"{exc}; retrying in {delay:.1f}s (attempt {state.attempt_number})")

    return Retrying(
        retry=retry_if_exception_type(kind),
        wait=WAIT,
        stop=stop_any(stop_when_event_set(_StopFlag(should_stop))),  # type: ignore[arg-type]
        before_sleep=before_sleep,
        sleep=_sleeper(should_stop),
        reraise=True,
    )


def _sleeper(should_stop: Callable[[], bool]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    return sleep


def open_runtime(
    settings: Settings,
    should_stop: Callable[[], bool],
    on_retry: Callable[[str], None],
    factory: Callable[[Settings], Runtime] = Runtime,
) -> Runtime:
    """A Runtime, once its event log can be reached. Other errors (bad config, a corrupt
    file) are not retried: they will not fix themselves."""
    return _retrying(should_stop, on_retry, EventLogUnreachableError)(factory, settings)


def wait_for_log(
    rt: Runtime, should_stop: Callable[[], bool], on_retry: Callable[[str], None]
) -> None:
    """Returns once the event log answers again (or a stop was asked for)."""
    _retrying(should_stop, on_retry, EventLogError)(rt.log.head)
