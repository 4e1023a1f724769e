"""The screen server: one local page, its event stream, its state and the staff endpoints.

This module owns the HTTP side of the screen: a standard-library threading
server on a loopback address that serves the page and its files, a
server-sent events stream (``/events``) that hands every screen the current
state on (re)connect and then each decision and status change, a JSON state
endpoint, and the staff endpoints behind the PIN with a lockout after wrong
tries. The daemon calls ``show_decision`` and ``set_status`` from its worker
thread; those calls must never block on a screen, so each stream has a
bounded queue and a stream that falls behind is dropped (its page reconnects
and gets the current state). It never touches the ledger, the policy or a
device: staff actions go through the ``StaffDesk`` the daemon gives it, and
it never shows a verdict the daemon has not committed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import secrets
import socket
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from terminal.display import views
from terminal.display.desk import Charge, DaySummary, DayTotals, Refusal, StaffDesk, summary_csv
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
    """Wrong PINs in a row lock the staff endpoints for a while; a right PIN resets the count."""

    def __init__(self, tries: int, lockout_s: float) -> None:
        self.tries = tries
        self.lockout_s = lockout_s
        self._wrong = 0
        self._locked_until = 0.0
        self._lock = threading.Lock()

    def locked_for(self, now: float) -> float:
        """Seconds of lockout left (0 when open)."""
        with self._lock:
            return max(0.0, self._locked_until - now)

    def record(self, ok: bool, now: float) -> int:
        """Count an attempt; returns the wrong tries left before the lockout."""
        with self._lock:
            if ok:
                self._wrong = 0
                return self.tries
            self._wrong += 1
            if self._wrong >= self.tries:
                self._wrong = 0
                self._locked_until = now + self.lockout_s
                return 0
            return self.tries - self._wrong


class _Stream:
    """One connected screen: a bounded queue of encoded events and its socket."""

    def __init__(self, size: int, sock: socket.socket) -> None:
        self.events: queue.Queue[bytes | None] = queue.Queue(size)
        self.sock = sock

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

    def __init__(self, settings: DisplaySettings, staff: StaffDesk) -> None:
        self.settings = settings
        self.staff = staff
        self.gate = PinGate(settings.staff_tries, settings.staff_lockout_s)
        # A new value per start: the page reloads itself when the server it talks to changed.
        self.instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._status: dict[str, Any] = views.status({"state": "starting"}, settings.language)
        self._decision: dict[str, Any] | None = None
        self._decision_mono = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0  # streams dropped for falling behind (for health and tests)

    # ---- life ----

    def start(self) -> None:
        """Bind and serve in a background thread; raises OSError if the port is taken."""
        if self._server is not None:
            return
        server = _Server((self.settings.host, self.settings.port), _Handler, self)
        self._server = server
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
            streams, self._streams = self._streams, set()
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
                self._streams.discard(stream)
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

    def _open_stream(self, sock: socket.socket) -> _Stream | None:
        stream = _Stream(self.settings.client_queue, sock)
        with self._lock:
            if len(self._streams) >= self.settings.max_clients:
                return None
            # The hello is queued under the same lock as broadcasts: nothing is missed or doubled.
            stream.offer(
                f"retry: {RECONNECT_MS}\n".encode() + _event("hello", self._snapshot_locked())
            )
            self._streams.add(stream)
            return stream

    def _close_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], screen: Screen) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.screen = screen
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "canteen-screen"
    sys_version = ""

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
        if not self._host_ok():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "wrong_host", "use http://127.0.0.1")
            return
        path = self.path.split("?", 1)[0]
        if path in STATIC:
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

    def _events(self) -> None:
        stream = self.screen._open_stream(self.connection)
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
        except (ValueError, UnicodeDecodeError):
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
        now = time.monotonic()
        wait = screen.gate.locked_for(now)
        if wait > 0:
            self._locked(wait)
            return None
        pin: str = body["pin"]
        staff = screen.staff.staff_for_pin(pin) if len(pin) <= 32 else None
        left = screen.gate.record(staff is not None, now)
        if staff is not None:
            return staff
        if left == 0:
            self._locked(screen.gate.locked_for(now))
        else:
            self._error(HTTPStatus.FORBIDDEN, "wrong_pin", "wrong PIN", tries_left=left)
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


_ASSETS: dict[str, bytes] = {}
_ASSETS_LOCK = threading.Lock()


def _asset(name: str) -> bytes:
    with _ASSETS_LOCK:
        if name not in _ASSETS:
            _ASSETS[name] = resources.files("terminal.display").joinpath(name).read_bytes()
        return _ASSETS[name]
