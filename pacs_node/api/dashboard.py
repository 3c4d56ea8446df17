"""The web dashboard: login, live job table, job page with the before/after viewer, and
throughput and failure charts. Server-rendered (Jinja2) with a little JavaScript."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pacs_node.admin import Principal, TokenStore
from pacs_node.api.auth import COOKIE
from pacs_node.db.models import JobStatus, utcnow
from pacs_node.db.repository import JobRepository

TEMPLATES = Path(__file__).resolve().parent / "templates"
CHART_DAYS = 14


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


def _daily_chart(repository: JobRepository) -> dict[str, Any]:
    """Jobs created per day for the last CHART_DAYS days, by final state, and failure codes."""
    since = utcnow() - timedelta(days=CHART_DAYS)
    jobs = repository.list_jobs(since=since, limit=100000)
    days = [
        (utcnow() - timedelta(days=n)).date().isoformat() for n in range(CHART_DAYS - 1, -1, -1)
    ]
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    failures: Counter[str] = Counter()
    instances: Counter[str] = Counter()
    for job in jobs:
        day = job.created_at.date().isoformat()
        per_day[day][job.status.value] += 1
        instances[day] += job.instance_count
        if job.status is JobStatus.FAILED:
            failures[job.error_code or "unknown"] += 1
    peak = max([sum(per_day[d].values()) for d in days] + [1])
    bars = []
    for index, day in enumerate(days):
        y = 150.0
        for state, colour in (("DONE", "#2e7d32"), ("FAILED", "#c62828"), ("SKIPPED", "#9e9e9e")):
            height = 140.0 * per_day[day][state] / peak
            if height:
                y -= height
                bars.append({"x": 10 + index * 40, "y": y, "h": height, "colour": colour,
                             "title": f"{day}: {per_day[day][state]} {state}"})  # fmt: skip
    return {"days": days, "bars": bars, "peak": peak, "failures": failures.most_common(),
            "instances": [instances[d] for d in days], "total": len(jobs)}  # fmt: skip


def create_dashboard_router(
    repository: JobRepository,
    tokens: TokenStore,
    page_user: Callable[[Request], Principal | None],
) -> APIRouter:
    """``/ui`` pages; unauthenticated page requests go to the login page."""
    router = APIRouter(include_in_schema=False)
    env = _environment()

    def render(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context))

    def signed_in(request: Request) -> Principal | RedirectResponse:
        who = page_user(request)
        return who if who is not None else RedirectResponse("/ui/login", status_code=303)

    @router.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    @router.get("/ui/login")
    def login_page() -> HTMLResponse:
        return render("login.html", user=None)

    @router.post("/ui/session")
    def login(payload: dict[str, str] = Body(...)) -> Response:
        who = tokens.authenticate(str(payload.get("token", "")).strip())
        if who is None:
            raise HTTPException(401, "invalid or revoked token")
        response = JSONResponse({"name": who.name, "role": who.role})
        response.set_cookie(COOKIE, str(payload["token"]).strip(), httponly=True,
                            samesite="strict", max_age=12 * 3600)  # fmt: skip
        return response

    @router.post("/ui/logout")
    def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("/ui/", response_model=None)
    def jobs_page(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, RedirectResponse):
            return who
        return render("jobs.html", user=who)

    @router.get("/ui/jobs/{job_id}", response_model=None)
    def job_page(request: Request, job_id: int) -> Response:
        who = signed_in(request)
        if isinstance(who, RedirectResponse):
            return who
        job = repository.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        model_lines = [e.message for e in job.events if " enhanced " in e.message]
        maps = job.secondary_outputs  # the uncertainty map, shown apart
        return render("job.html", user=who, job=job, model_lines=model_lines,
                      patient=who.sees_patient, maps=maps)  # fmt: skip

    @router.get("/ui/stats", response_model=None)
    def stats_page(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, RedirectResponse):
            return who
        return render("stats.html", user=who, chart=_daily_chart(repository))

    return router
