"""Who is calling: a bearer token (API clients) or the dashboard's session cookie."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pacs_node.admin import Principal, TokenStore

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class DicomwebAccess:
    """FastAPI dependencies of the DICOMweb routes; each gives the caller, or None when
    DICOMweb is open to anonymous callers."""

    store: Callable[..., Principal | None]
    search: Callable[..., Principal | None]
    retrieve: Callable[..., Principal | None]


def make_dicomweb_access(tokens: TokenStore, allow_anonymous: bool) -> DicomwebAccess:
    """Bearer tokens for DICOMweb: STOW-RS for ``admin`` and ``dicomweb-write``, QIDO-RS
    for ``admin``, ``worker`` and ``viewer``, WADO-RS for ``admin``, ``worker`` and viewers
    allowed to see patients. With ``allow_anonymous`` (a trusted network only) every call
    is accepted without a token."""
    if allow_anonymous:
        logger.warning(
            "DICOMweb is open: STOW-RS, QIDO-RS and WADO-RS answer anyone who can reach "
            "the HTTP port (dicomweb.allow_anonymous); keep it on a trusted network"
        )

        def anyone() -> None:
            return None

        return DicomwebAccess(anyone, anyone, anyone)
    principal, _, _ = make_auth(tokens)

    def needs(allowed: Callable[[Principal], bool], what: str) -> Callable[..., Principal]:
        def check(who: Principal = Depends(principal)) -> Principal:
            if not allowed(who):
                raise HTTPException(403, f"token {who.name!r} (role {who.role}) may not {what}")
            return who

        return check

    return DicomwebAccess(
        store=needs(lambda p: p.stores_dicomweb, "store instances by STOW-RS"),
        search=needs(lambda p: p.searches_dicomweb, "search by QIDO-RS"),
        retrieve=needs(
            lambda p: p.retrieves_dicomweb,
            "retrieve instances by WADO-RS (they carry patient identifiers)",
        ),
    )
