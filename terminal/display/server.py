"""The screen server: one local page, its event stream, its state and the staff endpoints.

This module owns the HTTP side of the screen: a standard-library threading
server on a loopback address that serves the page and its files, a
server-sent events stream (``/events``) that hands every screen the current
state on (re)connect and then each decision and status change, a JSON state
endpoint, and the staff endpoints behind the PIN. Wrong PINs are bounded by
token buckets (``PinGate``). A kiosk session cookie gives a browser its own PIN
budget and an event stream no other client can push out, so a local process can
neither guess freely nor lock the staff out. The kiosk gets that cookie at start,
without a PIN: the server writes a start page holding a one-use kiosk token into a
directory only the kiosk's user can read (``CANTEEN_KIOSK_DIR``), and exchanges the
token for the cookie (a right PIN also earns one). The daemon calls ``show_decision``
and ``set_status`` from its worker thread; those calls must never block on a
screen, so each stream has a bounded queue and a stream that falls behind is
dropped (its page reconnects and gets the current state). It never touches the
ledger, the policy or a device: staff actions go through the ``StaffDesk`` the
daemon gives it, and it never shows a verdict the daemon has not committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from terminal import durable
from terminal.core.desk import (
    Charge,
    DaySummary,
    DayTotals,
    DeskClosed,
    Refusal,
    StaffDesk,
    summary_csv,
)
from terminal.display import views
from terminal.display.settings import DisplaySettings

log = logging.getLogger(__name__)

STATIC = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 4096  # bytes of a staff request: a PIN and a sequence number
KEEPALIVE_S = 10.0  # a ping on an idle stream: the page and the server both notice a dead peer
WRITE_TIMEOUT_S = 10.0  # a screen that takes longer to accept bytes is dropped
RECONNECT_MS = 2000  # the page's EventSource retry delay
# The cookie the kiosk's start page (or a right PIN) gives the browser it came from: that
# kiosk then has its own PIN budget and event stream slot (docs/install.md, "The staff
# PIN and the kiosk session").
KIOSK_COOKIE = "canteen_kiosk"
KIOSK_COOKIE_AGE_S = 400 * 86400  # the longest a browser keeps a cookie
# Where the kiosk's start page goes: set by canteen-terminal.service to a directory that
# only the kiosk's user (group canteen-kiosk) and the daemon can read (docs/install.md).
KIOSK_DIR_ENV = "CANTEEN_KIOSK_DIR"
KIOSK_PAGE = "start.html"
KIOSK_PAGE_MODE = 0o640  # the directory's group (set-group-ID) is the kiosk's
KIOSK_QUERY = "kiosk"  # GET /?kiosk=TOKEN: the start page's way in

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class PinGate:
    """Bounds PIN guessing without letting a guesser lock the kiosk out.

    Each client kind has its own token bucket of ``tries`` wrong PINs that refills
    one try every ``refill_s`` seconds: a burst of ``tries`` and then one guess per
    ``refill_s``, however many clients share the bucket. Clients without a kiosk
    session (every local process, and a kiosk without its start page that has never had
    the right PIN) share one bucket; each kiosk session (the cookie the start page's token
    or a right PIN earns) has its own.
    So a local process guessing drains only the shared bucket, and staff at the
    kiosk still get in. A right PIN refills the session's own bucket, never the
    shared one: on the shared one it says nothing about the others who use it.
    """

    SHARED = ""  # the bucket of every client without a kiosk session
    MAX_SESSIONS = 32  # kiosk sessions remembered; the oldest is forgotten first

    def __init__(self, tries: int, refill_s: float) -> None:
        self.tries = tries
        self.refill_s = refill_s
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tries, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tries, at = self._buckets.get(key, (float(self.tries), now))
        return min(float(self.tries), tries + max(0.0, now - at) / self.refill_s)

    def locked_for(self, key: str, now: float) -> float:
        """Seconds until this client may try a PIN again (0 when it may now)."""
        with self._lock:
            level = self._level(key, now)
            return 0.0 if level >= 1.0 else (1.0 - level) * self.refill_s

    def record(self, key: str, ok: bool, now: float) -> int:
        """Count an attempt by this client; returns the wrong tries it has left now."""
        with self._lock:
            level = self._level(key, now)
            if ok:
                if key != self.SHARED:
                    level = float(self.tries)
            else:
                level = max(0.0, level - 1.0)
            self._buckets.pop(key, None)
            self._buckets[key] = (level, now)
            while len(self._buckets) > self.MAX_SESSIONS + 1:
                oldest = next(k for k in self._buckets if k != self.SHARED)
                del self._buckets[oldest]
            return int(level)


SESSION_KEY_FILE = "screen-session.key"


def session_secret(state_dir: str | Path) -> bytes:
    """The key that signs kiosk session cookies, kept in the state directory (0600).

    Kept across restarts so the kiosk keeps its session; a missing or short file gets a
    new key (the kiosk then needs the PIN once more).
    """
    path = Path(state_dir) / SESSION_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    if len(data) >= 32:
        return data[:32]
    data = secrets.token_bytes(32)
    durable.write_atomic(path, data, mode=0o600)
    return data


class _Stream:
    """One connected screen: a bounded queue of encoded events and its socket."""

    def __init__(self, size: int, sock: socket.socket, kiosk: bool) -> None:
        self.events: queue.Queue[bytes | None] = queue.Queue(size)
        self.sock = sock
        self.kiosk = kiosk  # opened with a kiosk session cookie

    def offer(self, item: bytes | None) -> bool:
        try:
            self.events.put_nowait(item)
            return True
        except queue.Full:
            return False

    def cut(self) -> None:
        # Wakes a handler thread blocked in sendall on a screen that stopped reading.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _event(name: str, data: dict[str, Any]) -> bytes:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()


class Screen:
    """The screen server. Thread-safe: call ``show_decision``/``set_status`` from any thread."""

    def __init__(
        self,
        settings: DisplaySettings,
        staff: StaffDesk,
        *,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        kiosk_dir: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.staff = staff
        self.gate = PinGate(settings.staff_tries, settings.staff_lockout_s)
        # Signs kiosk session cookies. The daemon keeps it in the state directory, so the
        # kiosk keeps its session across restarts; without one, a session lasts one start.
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.clock = clock  # monotonic seconds for the PIN buckets (tests move it)
        # A new value per start: the page reloads itself when the server it talks to changed.
        self.instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._streams: dict[_Stream, None] = {}  # oldest first
        self._status: dict[str, Any] = views.status({"state": "starting"}, settings.language)
        self._decision: dict[str, Any] | None = None
        self._decision_mono = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0  # streams dropped for falling behind (for health and tests)
        self.evicted = 0  # streams closed to make room for a newer one
        self._evicted_logged = -3600.0
        # The kiosk's start page: None when neither the caller nor the unit names a directory
        # (a demo, a test): then only a right PIN earns a kiosk session.
        where = kiosk_dir if kiosk_dir is not None else os.environ.get(KIOSK_DIR_ENV) or None
        self.kiosk_page = Path(where) / KIOSK_PAGE if where is not None else None
        self._kiosk_token: str | None = None  # the one the start page holds now
        self._kiosk_lock = threading.Lock()
        self._bad_token_logged = -3600.0

    # ---- life ----

    def start(self) -> None:
        """Bind and serve in a background thread; raises OSError if the port is taken."""
        if self._server is not None:
            return
        server = _Server((self.settings.host, self.settings.port), _Handler, self)
        self._server = server
        # Before the first request is served: the kiosk unit waits for the page to answer,
        # then opens the start page, which must already hold this start's token.
        with self._kiosk_lock:
            self._write_kiosk_page(secrets.token_urlsafe(32))
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="screen-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("screen: serving %s", self.url)

    def stop(self) -> None:
        """Close every stream and the listening socket; returns within a second or so."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            streams, self._streams = list(self._streams), {}
        for stream in streams:
            if not stream.offer(None):
                stream.cut()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for stream in streams:
            stream.cut()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the screen server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---- what the daemon calls ----

    def show_decision(self, view: dict[str, Any] | views.DecisionView) -> None:
        """A committed decision: shown on every screen for ``verdict_seconds``. Never blocks."""
        data = views.decision(view, self.settings.language)
        with self._lock:
            self._decision = data
            self._decision_mono = time.monotonic()
            self._broadcast(_event("decision", data))

    def set_status(self, status: dict[str, Any] | views.StatusView) -> None:
        """The daemon's state and health, shown in the status line. Never blocks."""
        data = views.status(status, self.settings.language)
        with self._lock:
            self._status = data
            self._broadcast(_event("status", data))

    def _broadcast(self, item: bytes) -> None:
        # Called with self._lock held; put_nowait never waits on a screen.
        for stream in list(self._streams):
            if not stream.offer(item):
                self._streams.pop(stream, None)
                self.dropped += 1
                stream.cut()
                log.warning("screen: dropped a screen that stopped reading events")

    # ---- what the page reads ----

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs after (re)connecting."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict[str, Any]:
        s = self.settings
        decision = None
        age_ms = None
        if self._decision is not None:
            age_ms = int((time.monotonic() - self._decision_mono) * 1000)
            if age_ms < s.verdict_seconds * 1000:
                decision = self._decision
        return {
            "instance": self.instance,
            "language": s.language,
            "timezone": s.timezone,
            "verdict_seconds": s.verdict_seconds,
            "offline_banner_after_s": s.offline_banner_after_s,
            "staff_enabled": s.staff_enabled,
            "staff_idle_s": s.staff_idle_s,
            "reversal_minutes": s.reversal_minutes,
            "sound": s.sound,
            "status": self._status,
            "decision": decision,
            "decision_age_ms": age_ms if decision is not None else None,
        }

    def _open_stream(self, sock: socket.socket, kiosk: bool = False) -> _Stream | None:
        stream = _Stream(self.settings.client_queue, sock, kiosk)
        with self._lock:
            if len(self._streams) >= self.settings.max_clients:
                # Full: the newest screen wins over the oldest one without a kiosk session,
                # so a process holding every slot cannot keep the kiosk's page out. A
                # stream with a kiosk session is never pushed out by one without.
                others = [s for s in self._streams if not s.kiosk]
                if not others and kiosk:
                    others = list(self._streams)
                if not others:
                    return None
                oldest = others[0]
                del self._streams[oldest]
                if not oldest.offer(None):
                    oldest.cut()
                self.evicted += 1
                # Once a minute at most: a process reconnecting in a loop must not flood the log.
                now = time.monotonic()
                if now - self._evicted_logged >= 60:
                    self._evicted_logged = now
                    log.warning(
                        "screen: all %d event streams taken; closed the oldest without a kiosk "
                        "session (%d so far)",
                        self.settings.max_clients,
                        self.evicted,
                    )
            # The hello is queued under the same lock as broadcasts: nothing is missed or doubled.
            stream.offer(
                f"retry: {RECONNECT_MS}\n".encode() + _event("hello", self._snapshot_locked())
            )
            self._streams[stream] = None
            return stream

    def _close_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream, None)

    # ---- kiosk sessions ----

    def _write_kiosk_page(self, token: str) -> None:
        # Called with _kiosk_lock held. A token is in force only once the page holding it is
        # on disk; when the write fails none is (a used token must not come back).
        if self.kiosk_page is None:
            return
        target = f"{self.url}?{KIOSK_QUERY}={token}"
        page = (
            '<!doctype html>\n<meta charset="utf-8">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f'<meta http-equiv="refresh" content="0; url={target}">\n'
            "<title>canteen screen</title>\n"
        )
        try:
            _write_kiosk_file(self.kiosk_page, page.encode())
        except OSError as exc:
            log.warning(
                "screen: cannot write the kiosk start page %s: %s; the kiosk gets its "
                "session only from a right PIN until this is fixed (docs/install.md, step 7)",
                self.kiosk_page,
                exc.strerror or exc,
            )
            self._kiosk_token = None
            return
        self._kiosk_token = token

    def redeem_kiosk_token(self, token: str) -> str | None:
        """A new kiosk session cookie value for the start page's token, or None.

        Each token is good once: a right one is replaced at once by a new one in the start
        page, so a token read later (from a history, a log) is worth nothing.
        """
        with self._kiosk_lock:
            current = self._kiosk_token
            if current is not None and hmac.compare_digest(token.encode(), current.encode()):
                self._write_kiosk_page(secrets.token_urlsafe(32))
                log.info("screen: the kiosk's start page opened a kiosk session")
                return self.new_session()
            now = time.monotonic()
            if now - self._bad_token_logged >= 60:
                self._bad_token_logged = now
                log.warning("screen: a wrong or used kiosk token was refused")
            return None

    def _mac(self, sid: str) -> str:
        return hmac.new(self._secret, sid.encode(), hashlib.sha256).hexdigest()[:32]

    def new_session(self) -> str:
        """A kiosk session cookie value: a random id and its MAC."""
        sid = secrets.token_hex(16)
        return f"{sid}.{self._mac(sid)}"

    def session_of(self, cookie_header: str | None) -> str | None:
        """The kiosk session id in a Cookie header, or None when absent or forged."""
        for part in (cookie_header or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name != KIOSK_COOKIE:
                continue
            sid, _, mac = value.partition(".")
            if len(sid) == 32 and hmac.compare_digest(mac.encode(), self._mac(sid).encode()):
                return sid
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], screen: Screen) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.screen = screen
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # One line, not socketserver's traceback on stderr: a hostile or broken client must
        # not fill the journal. The handlers answer every error they expect themselves.
        exc = sys.exc_info()[1]
        log.warning("screen: a request from %s failed: %r", client_address[0], exc)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "canteen-screen"
    sys_version = ""
    set_cookie: str | None = None  # a new kiosk session for this answer

    @property
    def screen(self) -> Screen:
        return self.server.screen

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("screen: %s " + format, self.address_string(), *args)

    # ---- plumbing ----

    def _host_ok(self) -> bool:
        # A page from elsewhere reaching 127.0.0.1 through DNS rebinding names another host.
        port = self.screen.port
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        if self.headers.get("Host", "") not in allowed:
            return False
        origin = self.headers.get("Origin")
        return origin is None or origin.removeprefix("http://") in allowed

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        if self.set_cookie is not None:
            self.send_header("Set-Cookie", self.set_cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _error(self, status: int, code: str, message: str, **more: Any) -> None:
        self._json(status, {"error": code, "message": message, **more})

    # ---- GET ----

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.set_cookie = None
        if not self._host_ok():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "wrong_host", "use http://127.0.0.1")
            return
        path, _, query = self.path.partition("?")
        kiosk = parse_qs(query, keep_blank_values=True).get(KIOSK_QUERY) if query else None
        if path == "/" and kiosk:
            self._kiosk_start(kiosk[0])
        elif path in STATIC:
            name, content_type = STATIC[path]
            self._send(HTTPStatus.OK, _asset(name), content_type)
        elif path == "/state":
            self._json(HTTPStatus.OK, self.screen.snapshot())
        elif path == "/events" and self.command == "GET":
            self._events()
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._error(HTTPStatus.NOT_FOUND, "not_found", "no such page")

    def _kiosk_start(self, token: str) -> None:
        # Whether the token was right or not, on to the plain page: the address bar and the
        # page's own reloads never carry a token, and a used one still shows the screen.
        # Only a GET spends the token: a HEAD (a link checker, curl -I) gets no cookie to keep.
        spend = self.command == "GET" and len(token) <= 128
        value = self.screen.redeem_kiosk_token(token) if spend else None
        if value is not None:
            self.set_cookie = _session_cookie(value)
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain; charset=utf-8", {"Location": "/"})

    def _events(self) -> None:
        kiosk = self.screen.session_of(self.headers.get("Cookie")) is not None
        stream = self.screen._open_stream(self.connection, kiosk)
        if stream is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too_many_screens", "too many screens")
            return
        try:
            self.connection.settimeout(WRITE_TIMEOUT_S)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.flush()
            while True:
                try:
                    item = stream.events.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    # An event, not a comment: the page sees it and knows the stream is alive.
                    item = b"event: ping\ndata: {}\n\n"
                if item is None:
                    break
                self.wfile.write(item)
                self.wfile.flush()
        except OSError:
            pass  # the screen went away or was dropped; its page reconnects
        finally:
            self.screen._close_stream(stream)
            self.close_connection = True

    # ---- POST: staff ----

    def do_POST(self) -> None:
        self.set_cookie = None
        if not self._host_ok():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "wrong_host", "use http://127.0.0.1")
            return
        path = self.path.split("?", 1)[0]
        handlers = {
            "/staff/open": self._staff_open,
            "/staff/reverse": self._staff_reverse,
            "/staff/totals": self._staff_totals,
            "/staff/summary": self._staff_summary,
            "/staff/summary.csv": self._staff_summary_csv,
        }
        action = handlers.get(path)
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, "not_found", "no such staff action")
            return
        body = self._body()
        if body is None:
            return
        try:
            staff = self._staff(body)
            if staff is not None:
                action(staff, body)
        except DeskClosed as closed:
            log.warning("screen: staff action %s refused: %s", path, closed)
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "not_selling", str(closed))
        except Exception:
            log.exception("screen: staff action %s failed", path)
            self._error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "busy",
                "the terminal could not do that now; try again",
            )

    def _body(self) -> dict[str, Any] | None:
        # JSON only: a form posted by another page cannot send it without a CORS preflight.
        if self.headers.get_content_type() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "bad_request", "send JSON")
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "bad_request", "Content-Length needed")
            return None
        if not 0 < length <= MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "bad_request", "request too large")
            return None
        try:
            data = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: arrays nested a thousand deep fit in MAX_BODY.
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("pin"), str):
            self._error(HTTPStatus.BAD_REQUEST, "bad_request", 'send {"pin": "..."}')
            return None
        return data

    def _staff(self, body: dict[str, Any]) -> str | None:
        screen = self.screen
        if not screen.settings.staff_enabled:
            self._error(HTTPStatus.FORBIDDEN, "staff_off", "no staff PIN is set on this terminal")
            return None
        now = screen.clock()
        session = screen.session_of(self.headers.get("Cookie"))
        key = session if session is not None else PinGate.SHARED
        wait = screen.gate.locked_for(key, now)
        if wait > 0:
            self._locked(wait)
            return None
        pin: str = body["pin"]
        staff = screen.staff.staff_for_pin(pin) if len(pin) <= 32 else None
        left = screen.gate.record(key, staff is not None, now)
        if staff is not None:
            if session is None:
                self.set_cookie = _session_cookie(screen.new_session())
            return staff
        # Checked and wrong (403); with no try left, it also says how long to wait.
        wait = screen.gate.locked_for(key, now)
        more = {"retry_after_s": max(1, int(wait + 0.999))} if wait > 0 else {}
        self._error(HTTPStatus.FORBIDDEN, "wrong_pin", "wrong PIN", tries_left=left, **more)
        return None

    def _locked(self, wait: float) -> None:
        seconds = max(1, int(wait + 0.999))
        self._json(
            HTTPStatus.TOO_MANY_REQUESTS,
            {
                "error": "locked",
                "message": f"too many wrong PINs; try again in {seconds} s",
                "retry_after_s": seconds,
            },
            {"Retry-After": str(seconds)},
        )

    def _language(self) -> str:
        return self.screen.settings.language

    def _charge(self, charge: Charge | None) -> dict[str, Any] | None:
        if charge is None:
            return None
        lang = self._language()
        return {
            "seq": charge.seq,
            "at_ms": charge.at_ms,
            "display_name": views.clean_text(charge.display_name, views.MAX_NAME),
            "unit": views.clean_text(charge.unit, views.MAX_NAME),
            "unit_name": views.clean_text(charge.unit_name, views.MAX_NAME),
            **views.tier_fields(charge.tier, lang),
            "meal": views.clean_text(charge.meal, views.MAX_NAME),
            "meal_label": views.meal_label(charge.meal, lang),
            "amount_fen": charge.amount_fen,
            "method": charge.method,
        }

    def _totals(self, totals: DayTotals) -> dict[str, Any]:
        lang = self._language()
        data = asdict(totals)
        for item, meal in zip(data["meals"], totals.meals, strict=True):
            item["meal_label"] = views.meal_label(meal.meal, lang) or ""
            item["net_fen"] = meal.net_fen
        data["net_fen"] = totals.net_fen
        return data

    def _staff_open(self, staff: str, body: dict[str, Any]) -> None:
        desk = self.screen.staff
        self._json(
            HTTPStatus.OK,
            {
                "staff": views.clean_text(staff, views.MAX_NAME),
                "last_charge": self._charge(desk.last_charge()),
                "totals": self._totals(desk.today_totals()),
                "reversal_minutes": self.screen.settings.reversal_minutes,
            },
        )

    def _staff_reverse(self, staff: str, body: dict[str, Any]) -> None:
        seq = body.get("seq")
        desk = self.screen.staff
        if seq is None:
            # No sale named: the last charge, as the panel's button means.
            last = desk.last_charge()
            if last is None:
                self._error(HTTPStatus.CONFLICT, "nothing_to_reverse", "no sale to reverse")
                return
            seq = last.seq
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            self._error(HTTPStatus.BAD_REQUEST, "bad_request", "seq must be a sale number")
            return
        outcome = desk.reverse(seq, staff, self.screen.settings.reversal_minutes * 60)
        if isinstance(outcome, Refusal):
            self._error(HTTPStatus.CONFLICT, outcome.code, outcome.message)
            return
        log.info("screen: %s reversed sale %d (entry %d)", staff, outcome.sale_seq, outcome.seq)
        self._json(
            HTTPStatus.OK,
            {
                "reversal": asdict(outcome),
                "last_charge": self._charge(desk.last_charge()),
                "totals": self._totals(desk.today_totals()),
            },
        )

    def _staff_totals(self, staff: str, body: dict[str, Any]) -> None:
        self._json(HTTPStatus.OK, self._totals(self.screen.staff.today_totals()))

    def _summary(self) -> DaySummary:
        return self.screen.staff.day_summary()

    def _staff_summary(self, staff: str, body: dict[str, Any]) -> None:
        summary = self._summary()
        data = summary.as_json()
        data["totals"] = self._totals(summary.totals)
        data["canteen_name"] = views.clean_text(summary.canteen_name, views.MAX_NAME)
        self._json(HTTPStatus.OK, data)

    def _staff_summary_csv(self, staff: str, body: dict[str, Any]) -> None:
        summary = self._summary()
        name = f"canteen-{summary.terminal_id}-{summary.totals.day}.csv"
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
        self._send(
            HTTPStatus.OK,
            summary_csv(summary).encode("utf-8"),
            "text/csv; charset=utf-8",
            {"Content-Disposition": f'attachment; filename="{safe}"'},
        )


def _write_kiosk_file(path: Path, data: bytes) -> None:
    """The kiosk page replaced whole: the kiosk finds the old page or the new, always readable.

    The directory is not made here: it comes from systemd-tmpfiles with the kiosk's group
    (set-group-ID). The mode is set before the rename because the daemon's umask (0077)
    takes the group's read bit at creation.
    """
    durable.write_atomic(path, data, KIOSK_PAGE_MODE, make_parent=False, exact_mode=True)


def _session_cookie(value: str) -> str:
    return (
        f"{KIOSK_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={KIOSK_COOKIE_AGE_S}"
    )


_ASSETS: dict[str, bytes] = {}
_ASSETS_LOCK = threading.Lock()


def _asset(name: str) -> bytes:
    with _ASSETS_LOCK:
        if name not in _ASSETS:
            _ASSETS[name] = resources.files("terminal.display").joinpath(name).read_bytes()
        return _ASSETS[name]
