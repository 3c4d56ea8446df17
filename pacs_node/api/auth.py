"""Who is calling: a bearer token (API clients) or the dashboard's session cookie."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pacs_node.admin import Principal, TokenStore

COOKIE = "pacs_node_token"


def make_auth(
    tokens: TokenStore,
) -> tuple[
    Callable[..., Principal], Callable[..., Principal], Callable[[Request], Principal | None]
]:
    """FastAPI dependencies: (any valid token, admin token) and a plain lookup for pages.

    The token comes from ``Authorization: Bearer`` or, for the dashboard, from its
    HttpOnly, SameSite=Strict session cookie (which a cross-site form cannot send).
    """
    bearer = HTTPBearer(auto_error=False, description="API token (`pacs-node tokens create`)")

    def lookup(
        request: Request, credentials: HTTPAuthorizationCredentials | None = None
    ) -> Principal | None:
        token = credentials.credentials if credentials else request.cookies.get(COOKIE)
        return tokens.authenticate(token) if token else None

    def principal(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Principal:
        if credentials is None and COOKIE not in request.cookies:
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        found = lookup(request, credentials)
        if found is None:
            raise HTTPException(401, "invalid or revoked token", {"WWW-Authenticate": "Bearer"})
        return found

    def administrator(who: Principal = Depends(principal)) -> Principal:
        if not who.is_admin:
            raise HTTPException(403, f"token {who.name!r} has role {who.role}; admin required")
        return who

    def page_user(request: Request) -> Principal | None:
        return lookup(request)

    return principal, administrator, page_user
