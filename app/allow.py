"""`Allow`: the methods of the one route that serves a path, for OPTIONS and for 405.

werkzeug's own answer gathers the methods of every rule whose pattern fits the path:
`/v1/admin/dead-letters/replay` also fits `/v1/admin/dead-letters/<dead_letter_id>`,
which made it `DELETE, GET, HEAD, OPTIONS, POST` for a route that only takes POST.
The route that serves a path is the pattern werkzeug picks for it (a fixed segment
wins over a variable one); the answer is the methods of the rules with that pattern.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask, Response, current_app, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException


def allowed_methods(fallback: Iterable[str] = ()) -> list[str]:
    """The methods of the route serving this request's path, sorted; else `fallback`."""
    rule = request.url_rule
    if rule is None and request_ctx.url_adapter is not None:
        try:
            rule, _ = request_ctx.url_adapter.match(method="OPTIONS", return_rule=True)
        except HTTPException:
            rule = None
    if rule is None:
        return sorted(fallback)
    same_route = (r.methods or () for r in current_app.url_map.iter_rules() if r.rule == rule.rule)
    return sorted(set().union(*same_route))


class PostbackFlask(Flask):
    """Flask, answering OPTIONS with `204 No Content` and the route's own `Allow`."""

    def make_default_options_response(self) -> Response:
        response = self.response_class(status=204)
        del response.headers["Content-Type"]
        response.headers["Allow"] = ", ".join(allowed_methods())
        return response
