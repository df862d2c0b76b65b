"""An asyncio event loop in a thread of its own: where `stsun serve`'s HTTP and gRPC fronts run
while the supervisor's threads watch the server."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """``coro``'s result, run on the loop; cancelled and TimeoutError after ``timeout`` s."""
        done = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return done.result(timeout)
        except TimeoutError:
            done.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
