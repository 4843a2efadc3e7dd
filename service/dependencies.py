"""FastAPI dependencies: the service state, settings and the optional API key check.

Routes declare these; nothing in the data path reads globals. They are ``async def``
although nothing in them awaits: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hop (and GIL hand-off) per dependency per request, which on a small model cost
more than the inference.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import NotReady, Unauthorized
from service.settings import Settings
from service.state import ServiceState

# auto_error=False: a missing header is our 401 in our error shape, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Required only when POLYNL_API_KEY is set.")


async def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise NotReady("the service is starting")
    assert isinstance(state, ServiceState)
    return state


async def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


def _check_key(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # Constant time: the comparison must not reveal how many leading bytes were right.
    if not hmac.compare_digest(given, expected):
        raise Unauthorized()


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token, when ``POLYNL_API_KEY`` is set."""
    _check_key(settings, credentials)


async def require_api_key_for_metrics(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token on /metrics, when ``POLYNL_PROTECT_METRICS`` is also true."""
    if settings.protect_metrics:
        _check_key(settings, credentials)


StateDep = Annotated[ServiceState, Depends(get_state)]
