"""Starlette's Router, remembering which route a path and method resolve to: the stock one
tries every route's regular expression in turn, about 20 of them for a typical request, and
that cost more than authenticating it."""

from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send

_MAX_REMEMBERED = 10_000


class RememberingRouter(Router):
    def __init__(self, routes: list[BaseRoute], **kwargs: object) -> None:
        super().__init__(routes, **kwargs)  # type: ignore[arg-type]
        self._first_full: dict[tuple[str, str], BaseRoute] = {}

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = (scope.get("root_path", "") + "\0" + scope["path"], scope["method"])
            route = self._first_full.get(key) or self._learn(key, scope)
            if route is not None:
                # The same route the full scan would pick first; its own match fills the scope.
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)  # 405s, redirects, 404s: the stock way

    def _learn(self, key: tuple[str, str], scope: Scope) -> BaseRoute | None:
        for route in self.routes:  # the first full match wins, partial ones before it or not
            match, _ = route.matches(scope)
            if match is Match.FULL:
                if len(self._first_full) >= _MAX_REMEMBERED:
                    self._first_full.clear()
                self._first_full[key] = route
                return route
        return None
