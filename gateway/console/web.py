"""The console's pages (docs/console.md). Every page checks the session first (none: `303` to the sign-in
page, nothing logged), then the officer's role on the query itself (a `dpo` reads its administration's
events only, whatever the query string says; only a `dpa` sees officers' console events), then writes
its access-log event (`console.<page>`), durably, before it shows anything: without the event, the page
answers 503 and shows nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from gateway.api.audit import index_current, index_reads, integrity_report
from gateway.api.fields import _nin
from gateway.audit import merkle, notes
from gateway.audit.index import AuditIndex
from gateway.audit.offline import EXPORT_FIELDS, csv_row
from gateway.audit.proofs import NotProvable, receipt_proof
from gateway.audit.record import AccessRecord, rfc3339
from gateway.audit.rows import EventFilter
from gateway.console import STATIC_DIR, Console
from gateway.console.accounts import Busy
from gateway.console.alerts import RULES
from gateway.console.i18n import LANG_COOKIE, pick, translator
from gateway.console.oidc import OidcError
from gateway.console.overview import rates_chart, rollup_rows, summarise, volume_chart, window_start
from gateway.console.sessions import COOKIE, MAX_S, Session
from gateway.console.watch import OPEN
from gateway.errors import Problem
from gateway.identity.pseudonyms import reference_names_person
from gateway.policy.catalogue import EVENT_OPERATIONS, UNAUTHENTICATED, EventOperation
from gateway.ratelimit.admission import client_address, source_address
from gateway.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
OIDC_COOKIE = "__Host-jamu_console_oidc"
LOGIN_COOKIE = "__Host-jamu_console_login"
OFFICER_EVENTS = "console."  # officers' own console activity: shown to the dpa role only
CONSOLE_OPERATIONS = tuple(o for o in EVENT_OPERATIONS if o.startswith(OFFICER_EVENTS))
SEARCHABLE_OPERATIONS = (*(o for o in EVENT_OPERATIONS if o not in CONSOLE_OPERATIONS), UNAUTHENTICATED)
DECISIONS = ("permit", "deny", "error")
# The page's own stylesheet and no script at all; pygal's charts are inline SVG whose <style> needs
# 'unsafe-inline' for styles (never for scripts).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# (`X-Content-Type-Options: nosniff` is on every answer already: the outermost middleware adds it.)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_IDENTITY_NUMBER = re.compile(r"\d{12,}")  # a run of digits as long as an identity number
_LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")


class Refused(Exception):
    """A page that cannot be shown: its status and the message key (HTML, in the officer's language)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def console_of(request: Request) -> Console:
    console = services(request).console
    if console is None:  # pragma: no cover - create_app always builds one
        raise Refused(404, "not_found")
    return console


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/console"


def _lang(request: Request) -> str:
    return pick(
        request.query_params.get("lang"), request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")
    )


def _headers(response: Response, request: Request) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    chosen = request.query_params.get("lang")
    if chosen in ("fr", "en"):
        response.set_cookie(
            LANG_COOKIE, chosen, max_age=365 * 86400, path="/", secure=True, httponly=True, samesite="strict"
        )
    return response


def render(
    request: Request, template: str, status: int = 200, session: Session | None = None, **values: Any
) -> Response:
    console = console_of(request)
    lang = _lang(request)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]

    def lang_url(choice: str) -> str:
        """This page in another language: the same query (a search's filters, a person search's handle)."""
        return "?" + urlencode([*query, ("lang", choice)])

    html = console.templates.get_template(template).render(
        t=translator(lang),
        lang=lang,
        lang_url=lang_url,
        base=_base(request),
        session=session,
        path=request.url.path,
        **values,
    )
    return _headers(HTMLResponse(html, status_code=status), request)


def redirect(request: Request, to: str) -> Response:
    """`303 See Other` to a console path."""
    return _headers(Response(status_code=303, headers={"Location": _base(request) + to}), request)


def _source(request: Request, console: Console) -> str:
    peer = request.client.host if request.client else None
    return source_address(
        client_address(
            peer, [v.encode("latin-1") for v in request.headers.getlist("x-forwarded-for")], console.trusted_proxies
        )
    )


async def _log(request: Request, record: AccessRecord, status: int) -> bool:
    """Append the page's event, durably; False when the log cannot take it (the page then shows nothing)."""
    record.finish(status)
    try:
        record.seq = await console_of(request).access_log.append(record)
    except Exception:
        log.exception("access log append failed (console transaction %s)", record.id)
        return False
    return True


def _record(request: Request, session: Session, operation: EventOperation) -> AccessRecord:
    record = AccessRecord(operation=operation, administration=session.administration, client_id=session.login)
    record.source = _source(request, console_of(request))
    return record


async def _session(request: Request) -> Session | None:
    return await console_of(request).sessions.get(request.cookies.get(COOKIE))


async def _page(request: Request, operation: EventOperation, build: PageBuilder, **fields: Any) -> Response:
    """The frame of every signed-in page: session, the page's work (which may refuse), its event, then
    the page. `build(session, record)` returns the response to send once the event is durable."""
    session = await _session(request)
    if session is None:
        return redirect(request, "/login")
    record = _record(request, session, operation)
    for name, value in fields.items():
        setattr(record, name, value)
    try:
        response = await build(session, record)
    except Refused as refused:
        if not await _log(request, record, refused.status):
            return render(request, "error.html", 503, session, message="unavailable")
        return render(request, "error.html", refused.status, session, message=refused.message)
    except Problem as problem:  # the index is behind or unreadable: nothing is shown
        record.reason = problem.code
        await _log(request, record, problem.status)
        return render(request, "error.html", problem.status, session, message="unavailable")
    effect = None
    if isinstance(response, Deferred):
        deferred = response
        response, effect = deferred.response, deferred.effect
    if not await _log(request, record, response.status_code):
        discard = getattr(response, "on_discard", None)
        if discard is not None:  # an export that will never stream gives its slot back
            discard()
        return render(request, "error.html", 503, session, message="unavailable")
    if effect is not None:
        try:
            done = await effect()
        except Exception:
            log.exception("a console change failed after its event (transaction %s)", record.id)
            done, status = False, 500
        else:
            status = 409
        if not done:  # the log says it was asked; a second event says it was not made
            failed = _record(request, session, operation)
            failed.evidence, failed.reason = record.evidence, "conflict" if status == 409 else "internal_error"
            await _log(request, failed, status)
            return render(
                request,
                "error.html",
                409 if status == 409 else 503,
                session,
                message="conflict" if status == 409 else "unavailable",
            )
    return response


@dataclass(frozen=True)
class Deferred:
    """A page's answer with a change that is made only once the page's event is durable (an alert
    acknowledged or closed): no change without its trace. The change says whether it could be made."""

    response: Response
    effect: Callable[[], Awaitable[bool]]


# A page's work: `(session, record)` to the response to send once the page's event is durable.
PageBuilder = Callable[[Session, AccessRecord], Awaitable[Response | Deferred]]


async def _form(request: Request, session: Session | None, limit: int = 16_384) -> dict[str, str]:
    """A posted form (`application/x-www-form-urlencoded`, what the pages send), bounded; a session's form
    must carry its CSRF token."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise Refused(400, "bad_request")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, "bad_request")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "bad_request") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)  # the first of a repeated field, as a browser's form has one
    if session is not None and not session.csrf_ok(form.get("csrf")):
        raise Refused(403, "csrf_failed")
    return form


def _field(form: dict[str, str], name: str) -> str | None:
    return form.get(name)


# ---- sign-in -----------------------------------------------------------------------------------------------


def _login_page(request: Request, status: int = 200, message: str | None = None) -> Response:
    console = console_of(request)
    nonce = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status,
        csrf=console.sign("login", nonce),
        message=message,
        oidc=console.oidc is not None,
        local=console.oidc is None,
    )
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/console/login")
async def login_form(request: Request) -> Response:
    if await _session(request) is not None:
        return redirect(request, "/")
    return _login_page(request)


@router.post("/console/login")
async def login(request: Request) -> Response:
    """Password and TOTP code. Limited per source address before anything else (refusals are counted,
    not logged one by one: nobody fills the log without credentials); every attempt is an event."""
    console = console_of(request)
    source = _source(request, console)
    if not await _sign_in_allowed(request, console, source):
        return _login_page(request, 429, "login_throttled")
    try:
        form = await _form(request, None)
    except Refused as refused:
        return _login_page(request, refused.status, refused.message)
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    token = _field(form, "csrf") or ""
    if not nonce or not _same(token, console.sign("login", nonce)):
        return _login_page(request, 403, "csrf_failed")
    login_name = (_field(form, "login") or "").strip()[:64]
    password = (_field(form, "password") or "")[:256]
    code = (_field(form, "totp") or "").strip()[:16]
    record = AccessRecord(operation="console.login", source=source)
    attempt = None
    if console.oidc is None:
        try:
            attempt = await console.officers.sign_in(login_name, password, code)
        except Busy:
            console.refusals.count(source)
            return _login_page(request, 429, "login_throttled")
    if attempt is None or attempt.outcome != "ok" or attempt.officer is None:
        # Only an existing account's login: anything else typed there (a NIN, say) never reaches the log.
        record.claimed_client_id = attempt.officer.login if attempt is not None and attempt.officer else None
        locked = attempt is not None and (attempt.outcome == "locked" or attempt.locked_now)
        record.reason = "account_locked" if locked else "invalid_credentials"
        if attempt is not None and attempt.outcome == "disabled":
            record.reason = "account_disabled"
        if not await _log(request, record, 401):
            return render(request, "error.html", 503, message="unavailable")
        # One answer whatever went wrong (the log says which): it tells nobody which logins exist.
        return _login_page(request, 401, "login_failed")
    officer = attempt.officer
    record.client_id, record.administration = officer.login, officer.administration
    return await _signed_in(request, record, officer.login, officer.role, officer.administration)


async def _sign_in_allowed(request: Request, console: Console, source: str, *, password: bool = True) -> bool:
    """The source's allowance for unauthenticated calls, then, for a password (an argon2 check), its much
    smaller one for sign-ins; a refusal is counted in the source's counting event, not logged on its own."""
    limits = services(request).rate_limits
    outcome = await limits.source(source)
    allowed = outcome is None or outcome.verdict.allowed
    if allowed and password and console.login_windows:
        allowed = (await limits.limiter.acquire(f"console-login:{source}", console.login_windows)).allowed
    if not allowed:
        console.refusals.count(source)
    return allowed


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison that any text can go through (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


async def _signed_in(
    request: Request,
    record: AccessRecord,
    login: str,
    role: str,
    administration: str | None,
    *,
    meta_refresh: bool = False,
) -> Response:
    console = console_of(request)
    if not await _log(request, record, 303):
        return render(request, "error.html", 503, message="unavailable")
    value = await console.sessions.create(login, role, administration)
    # Back from the provider (a cross-site navigation), a page of ours moves on, so the next request is
    # same-site and carries the SameSite=Strict session cookie.
    response = render(request, "signed_in.html") if meta_refresh else redirect(request, "/")
    response.set_cookie(COOKIE, value, max_age=MAX_S, path="/", secure=True, httponly=True, samesite="strict")
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/console/login/oidc")
async def login_oidc(request: Request) -> Response:
    console = console_of(request)
    if console.oidc is None:
        return redirect(request, "/login")
    try:
        url, pending = await console.oidc.begin()
    except OidcError as exc:
        log.warning("console sign-in through OpenID Connect cannot start: %s", exc)
        return _login_page(request, 502, "oidc_failed")
    blob = base64.urlsafe_b64encode(orjson.dumps({**pending, "at": time.time()})).decode()
    response = _headers(Response(status_code=303, headers={"Location": url}), request)
    # Lax, not Strict: it must come back with the provider's (cross-site) redirect to the callback.
    response.set_cookie(
        OIDC_COOKIE,
        f"{blob}.{console.sign('oidc', blob)}",
        max_age=600,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/console/login/callback")
async def login_callback(request: Request) -> Response:
    console = console_of(request)
    if console.oidc is None:
        return redirect(request, "/login")
    source = _source(request, console)
    if not await _sign_in_allowed(request, console, source, password=False):
        return _login_page(request, 429, "login_throttled")
    pending = _pending(console, request.cookies.get(OIDC_COOKIE) or "")
    state, code = request.query_params.get("state"), request.query_params.get("code")
    record = AccessRecord(operation="console.login", source=source)
    try:
        if pending is None or not state or not code or not _same(state, str(pending.get("state", ""))):
            raise OidcError("the callback does not answer this browser's sign-in (state)")
        identity = await console.oidc.finish(code[:2048], pending)
    except OidcError as exc:
        log.warning("console sign-in through OpenID Connect refused: %s", exc)
        record.reason = "invalid_credentials"
        if not await _log(request, record, 401):
            return render(request, "error.html", 503, message="unavailable")
        response = _login_page(request, 401, "oidc_failed")
        response.delete_cookie(OIDC_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response
    record.client_id, record.administration = identity.login, identity.administration
    response = await _signed_in(
        request, record, identity.login, identity.role, identity.administration, meta_refresh=True
    )
    response.delete_cookie(OIDC_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


def _pending(console: Console, cookie: str) -> dict[str, str] | None:
    blob, _, signature = cookie.partition(".")
    if not blob or not _same(signature, console.sign("oidc", blob)):
        return None
    try:
        pending = orjson.loads(base64.urlsafe_b64decode(blob))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    if not isinstance(pending, dict) or time.time() - float(pending.get("at", 0)) > 600:
        return None
    return pending


@router.post("/console/logout")
async def logout(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        await _form(request, session)
        await console_of(request).sessions.end(request.cookies.get(COOKIE) or "")
        response = redirect(request, "/login")
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    return await _page(request, "console.logout", build)


# ---- what each role may see ----------------------------------------------------------------------------------


def scope_of(session: Session, administration: str | None = None) -> tuple[str | None, tuple[str, ...]]:
    """The administration a query is held to and the operations hidden from it. A dpo asking for another
    administration is refused, not quietly answered with its own."""
    hidden = () if session.role == "dpa" else (OFFICER_EVENTS,)
    if session.role == "dpo":
        if administration is not None and administration != session.administration:
            raise Refused(403, "forbidden")
        return session.administration, hidden
    return administration, hidden


def may_see(session: Session, event: dict[str, Any]) -> bool:
    if session.role != "dpa" and (event.get("operation") or "").startswith(OFFICER_EVENTS):
        return False
    return session.role != "dpo" or event.get("administration") == session.administration


# ---- pages -----------------------------------------------------------------------------------------------------


@router.get("/console")
async def console_root(request: Request) -> Response:
    return redirect(request, "/")


@router.get("/console/")
async def overview(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        app = services(request)
        console = console_of(request)
        t = translator(_lang(request))
        administration, hidden = scope_of(session)
        now = datetime.now(UTC)
        async with index_reads():
            rows = await rollup_rows(
                app.log.index.engine, window_start(now), administration, hidden[0] if hidden else None
            )
        view = summarise(rows, now)
        charts = [
            volume_chart(t("volumes_24h"), [h[11:] + "h" for h in view.hours], view.hourly, area=True),
            volume_chart(t("volumes_7d"), [d[5:] for d in view.days], view.daily),
            rates_chart(t("deny_rates"), view.day, view.week, "deny_rate", (t("last_24h"), t("last_7d"))),
            rates_chart(t("unknown_rates"), view.day, view.week, "unknown_rate", (t("last_24h"), t("last_7d"))),
        ]
        alerts = await console.alerts.list(administration=administration, limit=5)
        return render(
            request,
            "overview.html",
            session=session,
            view=view,
            charts=charts,
            alerts=alerts,
            open_alerts=await console.alerts.count_open(administration),
            health=await _health(app),
        )

    return await _page(request, "console.overview", build)


async def _health(app: Services) -> dict[str, Any]:
    lag_events, lag_s = app.log.follower.lag()
    head = None
    if app.log.views is not None:
        view = await asyncio.to_thread(app.log.views.get, app.log.access_log.origin)
        if view is not None:
            try:
                signed = await asyncio.to_thread(view.signed)
            except notes.NoteError:
                signed = None
            if signed is not None:
                head = {"origin": view.origin, "size": signed.size}
    witnesses = None
    if app.log.witness_client is not None:
        witnesses = {"lag_s": round(app.log.witness_client.lag(), 1), "problems": app.log.witness_client.problems()}
    return {
        "checkpoint": head,
        "index_lag_events": lag_events,
        "index_lag_s": round(lag_s, 2),
        "witnesses": witnesses,
        "refusing": app.log.store.refusal,
    }


def _text(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not _TEXT.fullmatch(value):
        raise Refused(400, "bad_request")
    return value


def _time(value: str | None) -> str | None:
    """A bound from a `datetime-local` field (UTC) or RFC 3339, as the log writes times."""
    if not value:
        return None
    text = value.strip()
    try:
        if _LOCAL_TIME.fullmatch(text):
            moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError
        return rfc3339(moment)
    except (ValueError, OverflowError):
        raise Refused(400, "bad_request") from None


def search_filter(session: Session, params: Any) -> tuple[EventFilter, dict[str, str]]:
    """The search form's filters, held to what the officer's role may see; and the filters as asked, for
    the form and the next page's link."""
    asked = {
        name: params.get(name) or ""
        for name in ("administration", "client_id", "operation", "decision", "purpose", "since", "until")
    }
    operation = asked["operation"] or None
    if operation is not None and operation not in SEARCHABLE_OPERATIONS and operation not in CONSOLE_OPERATIONS:
        raise Refused(400, "bad_request")
    if operation in CONSOLE_OPERATIONS and session.role != "dpa":
        raise Refused(403, "forbidden")
    decision = asked["decision"] or None
    if decision is not None and decision not in DECISIONS:
        raise Refused(400, "bad_request")
    administration, hidden = scope_of(session, _text(asked["administration"], "administration"))
    where = EventFilter(
        administration=administration,
        client_id=_text(asked["client_id"], "client_id"),
        operation=operation,
        decision=decision,
        purpose=_text(asked["purpose"], "purpose"),
        since=_time(asked["since"]),
        until=_time(asked["until"]),
        hidden_prefixes=hidden,
    )
    return where, {k: v for k, v in asked.items() if v}


def _cursor(last: tuple[str, int]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(last))).rstrip(b"=").decode()


def _before(cursor: str | None) -> tuple[str, int] | None:
    if not cursor:
        return None
    try:
        moment, position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(moment, str) and len(moment) <= 40 and type(position) is int and 0 <= position < 2**63):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise Refused(400, "bad_request") from None
    return moment, position


@router.get("/console/events")
async def events(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        if len(request.url.query) > 2048:
            raise Refused(400, "bad_request")
        where, asked = search_filter(session, request.query_params)
        record.evidence = asked or None  # what was searched for
        before = _before(request.query_params.get("cursor"))
        await index_current(request)
        async with index_reads():
            found, last = await services(request).log.index.latest(where, before, PAGE_SIZE)
        next_cursor = _cursor(last) if len(found) == PAGE_SIZE and last is not None else None
        return render(
            request,
            "events.html",
            session=session,
            events=found,
            asked=asked,
            next_cursor=next_cursor,
            operations=_operations(session),
            decisions=DECISIONS,
            administrations=_administrations(request, session),
        )

    return await _page(request, "console.events", build)


def _operations(session: Session) -> tuple[str, ...]:
    return (*SEARCHABLE_OPERATIONS, *CONSOLE_OPERATIONS) if session.role == "dpa" else SEARCHABLE_OPERATIONS


def _administrations(request: Request, session: Session) -> list[str]:
    if session.role == "dpo":
        return [session.administration or ""]
    return sorted(services(request).policies.current.administrations)


@router.get("/console/events/{transaction_id}")
async def event_detail(request: Request, transaction_id: str) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        if not _ID.fullmatch(transaction_id):
            raise Refused(404, "not_found")
        record.evidence = {"transaction_id": transaction_id}  # asked for, found or not
        app = services(request)
        await index_current(request)
        async with index_reads():
            found = await app.log.index.locate(transaction_id)
        if found is None:
            raise Refused(404, "not_found")
        origin, seq = found
        event, proof = await _proved_event(app, origin, seq)
        if event is None or event.get("id") != transaction_id or not may_see(session, event):
            raise Refused(404, "not_found")
        record.subject_hash = event.get("subject_hash")  # opening a person's event is an access to that person
        return render(request, "event.html", session=session, event=event, origin=origin, seq=seq, proof=proof)

    return await _page(request, "console.event", build)


async def _proved_event(app: Services, origin: str, seq: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The event as its log holds it (not the index's copy), and its inclusion proof checked against the
    latest signed checkpoint: `ok`, `pending` (no checkpoint covers it yet) or `failed`."""
    view = await asyncio.to_thread(app.log.views.get, origin)
    if view is None:  # another instance's log: the index's copy, proved where that log is kept
        async with index_reads():
            return await app.log.index.event(origin, seq), {"status": "elsewhere"}
    entry = await asyncio.to_thread(view.entry, seq)
    if entry is None:
        return None, {"status": "pending"}
    event = orjson.loads(entry)
    try:
        head = await asyncio.to_thread(view.signed)
        if head is None or head.size <= seq:
            return event, {"status": "pending"}
        _, proof = await asyncio.to_thread(receipt_proof, view, seq, head)
    except (NotProvable, ValueError):
        return event, {"status": "pending"}
    except (merkle.InvalidProof, notes.NoteError, LookupError) as exc:
        log.error("inclusion proof of %s/%d failed: %s", origin, seq, exc)
        return event, {"status": "failed"}
    return event, {"status": "ok", "size": head.size, "proof": proof}


@router.get("/console/person")
async def person_form(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        handle = request.query_params.get("search")
        search = session.search
        if not handle:
            return render(request, "person.html", session=session, events=None)
        if search is None or not _same(handle, search["handle"]):
            raise Refused(404, "not_found")
        record.subject_hash = search["subject_hash"]
        record.evidence = {"reason": search["reason"]}
        administration, hidden = scope_of(session)
        where = EventFilter(subject_hash=search["subject_hash"], administration=administration, hidden_prefixes=hidden)
        before = _before(request.query_params.get("cursor"))
        await index_current(request)
        async with index_reads():
            found, last = await services(request).log.index.latest(where, before, PAGE_SIZE)
        next_cursor = _cursor(last) if len(found) == PAGE_SIZE and last is not None else None
        return render(
            request,
            "person.html",
            session=session,
            events=found,
            reason=search["reason"],
            handle=handle,
            next_cursor=next_cursor,
        )

    return await _page(request, "console.person", build)


@router.post("/console/person")
async def person_search(request: Request) -> Response:
    """The NIN and the officer's reason arrive in a form, never a URL; the search is kept with the session
    and the browser is sent to its results by a handle (`303`)."""

    async def build(session: Session, record: AccessRecord) -> Response:
        form = await _form(request, session)
        reason = " ".join((_field(form, "reason") or "").split())
        try:
            nin = _nin(_field(form, "nin") or "")
        except ValueError:
            raise Refused(400, "invalid_nin") from None
        if not 3 <= len(reason) <= 500 or not reason.isprintable():
            raise Refused(400, "reason_required")
        if reference_names_person(reason, nin) or _IDENTITY_NUMBER.search(reason):
            raise Refused(400, "reason_has_nin")  # the reason goes into the log: no identity number in it
        subject = services(request).subjects(nin)
        record.subject_hash = subject
        record.evidence = {"reason": reason}
        handle = await console_of(request).sessions.remember_search(session, subject, reason)
        return redirect(request, f"/person?search={handle}")

    return await _page(request, "console.person", build)


@router.get("/console/alerts")
async def alerts(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        administration, _ = scope_of(session)
        closed = request.query_params.get("closed") == "1"
        found = await console_of(request).alerts.list(
            statuses=(*OPEN, "closed") if closed else OPEN, administration=administration
        )
        return render(request, "alerts.html", session=session, alerts=found, closed=closed, rules=RULES)

    return await _page(request, "console.alerts", build)


async def _visible_alert(request: Request, session: Session, alert_id: str) -> Any:
    if not _ID.fullmatch(alert_id):
        raise Refused(404, "not_found")
    alert = await console_of(request).alerts.get(alert_id)
    if alert is None or (session.role == "dpo" and alert.administration != session.administration):
        raise Refused(404, "not_found")
    return alert


@router.get("/console/alerts/{alert_id}")
async def alert_detail(request: Request, alert_id: str) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        record.evidence = {"alert": alert_id[:36]}
        alert = await _visible_alert(request, session, alert_id)
        return render(request, "alert.html", session=session, alert=alert, message=None)

    return await _page(request, "console.alert", build)


@router.post("/console/alerts/{alert_id}")
async def alert_act(request: Request, alert_id: str) -> Response:
    """Acknowledge or close, with a note (both logged)."""

    async def build(session: Session, record: AccessRecord) -> Response | Deferred:
        form = await _form(request, session)
        alert = await _visible_alert(request, session, alert_id)
        action = _field(form, "action")
        note = (_field(form, "note") or "").strip()
        if action not in ("acknowledge", "close"):
            raise Refused(400, "bad_request")
        if not 3 <= len(note) <= 2000:
            return render(request, "alert.html", 400, session, alert=alert, message="note_required")
        if alert.status == "closed":
            raise Refused(409, "conflict")
        record.evidence = {"alert": alert.id, "action": action}
        store = console_of(request).alerts
        return Deferred(
            redirect(request, f"/alerts/{alert.id}"), lambda: store.act(alert.id, session.login, action, note)
        )

    return await _page(request, "console.alert", build)


@router.get("/console/integrity")
async def integrity(request: Request) -> Response:
    async def build(session: Session, record: AccessRecord) -> Response:
        states = await index_current(request)
        runs, app = console_of(request).integrity, services(request)
        await runs.latest(lambda: integrity_report(app, states))
        checked = None if runs.finished_at is None else datetime.fromtimestamp(runs.finished_at, UTC)
        return render(
            request,
            "integrity.html",
            session=session,
            report=runs.report,
            running=runs.running,
            checked_at=None if checked is None else rfc3339(checked)[:19].replace("T", " "),
            failure=runs.failure,
        )

    return await _page(request, "console.integrity", build)


@router.get("/console/export")
async def export(request: Request) -> Response:
    """The search's events, every page of them, as CSV (formula-safe) or JSON Lines, streamed."""

    async def build(session: Session, record: AccessRecord) -> Response:
        fmt = request.query_params.get("format")
        if fmt not in ("csv", "jsonl"):
            raise Refused(400, "bad_request")
        where, asked = search_filter(session, request.query_params)
        record.evidence = {**asked, "format": fmt}
        await index_current(request)
        slots = console_of(request).exports
        token = slots.take(session.login)
        if token is None:
            raise Refused(429, "export_busy")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        response = _Export(
            _export_rows(services(request).log.index, where, fmt),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="jamu-events-{stamp}.{fmt}"'},
        )
        response.on_discard = lambda: slots.give_back(token)
        return _headers(response, request)

    return await _page(request, "console.export", build)


class _Export(StreamingResponse):
    """A streamed export that gives its slot back when its answer ends, however it ends (the reader
    gone before the first row included)."""

    on_discard: Callable[[], None] = staticmethod(lambda: None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_discard()


async def _export_rows(audit: AuditIndex, where: EventFilter, fmt: str) -> AsyncIterator[bytes]:
    before: tuple[str, int] | None = None
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        yield out.getvalue().encode()
    while True:
        page, last = await audit.latest(where, before, 2000)
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
            for event in page:
                writer.writerow(csv_row(event))
            yield out.getvalue().encode()
        else:
            yield b"".join(orjson.dumps(event) + b"\n" for event in page)
        if len(page) < 2000 or last is None:
            return
        before = last


# The stylesheet, before the catch-all below (routes are matched in order).
router.mount("/console/static", StaticFiles(directory=str(STATIC_DIR)), name="console-static")


@router.get("/console/{anything:path}")
async def not_a_page(request: Request, anything: str) -> Response:
    """Any other path under /console/: the console's own 404 page, with its headers (declared last)."""
    return render(request, "error.html", 404, message="not_found")
