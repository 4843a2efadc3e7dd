"""``python -m service``: run the app with uvicorn on the settings' host and port.

Prefer this over the bare ``uvicorn service.app:app`` command in deployments: after a
SIGTERM it drains and exits with status 0 (uvicorn's CLI re-raises the signal after its
graceful shutdown, so the process ends "killed by SIGTERM"), and it takes host, port and
log level from the ``POLYNL_*`` settings.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn

from service.settings import get_settings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Same as uvicorn's, minus re-raising the signal at the end: a drained shutdown is
        # a clean exit.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    settings = get_settings()
    config = uvicorn.Config(
        "service.app:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # service.middleware logs each request with its X-Request-ID instead.
        access_log=False,
        # Requests already accepted get their answer before the process exits.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
