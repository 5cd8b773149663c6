"""Pages: the dashboard (/, needs a session: else to /login), the login page, the API docs (/docs,
/openapi.json, behind `docs_reader`) and /favicon.ico. Pages get a strict Content-Security-Policy and no-store."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from web.access import docs_reader
from web.auth import TokenError
from web.state import SESSION_COOKIE, WebState, web_state

router = APIRouter(include_in_schema=False)

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _page(state: WebState, request: Request, name: str, read_only: bool = False) -> HTMLResponse:
    resp = state.templates.TemplateResponse(request, name, {"v": state.asset_version, "read_only": read_only})
    resp.headers["Content-Security-Policy"] = PAGE_CSP
    resp.headers["Cache-Control"] = "no-store"
    return resp


@router.get("/")
async def dashboard(request: Request, state: WebState = Depends(web_state)):
    token = request.cookies.get(SESSION_COOKIE)
    try:
        payload = state.session_of(token)
    except TokenError:
        return RedirectResponse("/login", status_code=303)
    # a read-only session gets a dashboard without write controls (the API refuses its writes anyway)
    return _page(state, request, "index.html", read_only=not state.keys.can_write(str(payload["kid"])))


@router.get("/login")
async def login_page(request: Request, state: WebState = Depends(web_state)):
    return _page(state, request, "login.html")


@router.get("/openapi.json")
async def openapi_json(request: Request, who: str = Depends(docs_reader)):
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs(who: str = Depends(docs_reader)):
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="BESS edge API",
        swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url="/static/img/favicon.svg",
    )


@router.get("/favicon.ico")
async def favicon():
    return RedirectResponse("/static/img/favicon.svg", status_code=308)
