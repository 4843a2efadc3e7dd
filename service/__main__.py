"""``python -m service``: run the app with uvicorn on the settings' host and port.

Prefer this over the bare ``uvicorn service.app:app`` command in deployments: after a
SIGTERM it drains and exits with status 0 (uvicorn's CLI re-raises the signal after its
graceful shutdown, so the process ends "killed by SIGTERM"), it takes host, port and log
level from the ``POLYNL_*`` settings, and it runs ``POLYNL_WORKERS`` server processes
(``service.workers``: each worker binds the port with ``SO_REUSEPORT`` and serves on its
own; this process supervises them, passes SIGTERM on, and exits 0 once all have drained).
"""

from __future__ import annotations

import sys

from service.settings import get_settings
from service.workers import (
    DrainingServer,
    Supervisor,
    configure_supervisor_logging,
    serve_worker,
    uvicorn_config,
)


def main() -> None:
    settings = get_settings()
    if settings.worker_count > 1:
        configure_supervisor_logging(settings.log_level)
        supervisor = Supervisor(serve_worker, settings.host, settings.port, settings.worker_count)
        sys.exit(supervisor.run())
    DrainingServer(uvicorn_config(settings)).run()


if __name__ == "__main__":
    main()
