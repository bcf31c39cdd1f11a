"""One request, start to end: faults first, then parse, authenticate, non-resource documents,
authorize, and the watch stream or a resource route; every request is recorded."""

from __future__ import annotations

from .auth import forbidden
from .discovery import discovery
from .errors import ApiError, status_body
from .routes import route
from .routing import NON_RESOURCE_OK, RequestInfo, parse_request
from .watch import WatchHandler


class Handler(WatchHandler):
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- dispatch
    def _handle(self) -> None:
        api = self.api
        if api.faults.swallowed(self.connection, None):
            self._park()
            return
        api.faults.wait_frozen()
        api.faults.delay()
        info = RequestInfo(self.command, self.path, {})
        code = 500
        try:
            raw = self._read_body()
            info = parse_request(self.command, self.path)
            err = api.faults.check(info)
            if err is not None:
                raise err
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            who = api.authenticate(token)
            if who is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            user, rules = who
            info.user = user
            if api.faults.swallowed(self.connection, info):
                code = 0
                self._park()
                return
            if info.resource is None:
                if info.path in NON_RESOURCE_OK:
                    code = 200
                    self._send(200, "ok")
                    return
                doc = discovery(info.path, api.host, api.port)
                if doc is None:
                    raise ApiError(
                        404, "the server could not find the requested resource", "NotFound", {}
                    )
                code = 200
                self._send(200, doc)
                return
            if not any(r.allows(info) for r in rules):
                raise forbidden(user, info)
            if info.verb == "watch":
                code = 200
                self._watch(info)
                return
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            code, body = route(api.store, info, raw, ctype)
            if info.verb == "list" and api.faults.take_cut_list(info):
                self._send_cut(code, body)
                return
            self._send(code, body)
        except ApiError as e:
            code = e.code
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        except Exception as e:  # pragma: no cover - a bug in the testbed
            code = 500
            self._send(500, status_body(500, f"Internal error occurred: {e!r}"))
        finally:
            api._record(info, code)
