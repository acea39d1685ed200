"""A trio loop on a daemon thread, for test parts that outlive one test's own loop
(a module-scoped forwarder, the browser tests' simulators)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import trio

START_TIMEOUT = 10.0


class TrioThread:
    """Runs `serve(started)` in its own trio loop: `start_thread()` returns once `started()`
    was called, `stop()` cancels the loop and joins the thread."""

    name = "trio thread"

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start_thread(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(START_TIMEOUT)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            await self.serve(self._started.set)

    async def serve(self, started: Callable[[], None]) -> None:
        raise NotImplementedError
