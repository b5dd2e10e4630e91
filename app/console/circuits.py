"""Console: circuits. The list (by destination, then partner) and a reset per circuit.

The list is `GET /v1/admin/circuits` (same `CircuitQuery`, same page), a reset is
`POST /v1/admin/circuits/reset` (same `CircuitReset`, same function), so the
console closes a circuit exactly as the API does, parked deliveries let go with it.
"""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from app import admin
from app.console import web
from app.console.sessions import Kind
from app.schemas import CircuitQuery, load

bp = Blueprint("console_circuits", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")


@bp.get("/circuits")
@web.signed_in(Kind.ADMIN)
def index() -> tuple[str, int]:
    """Circuits with recorded failures or open, a page at a time, by destination."""
    given = web.filled(request.args)
    query = load(CircuitQuery, given)
    listing = admin.circuit_page(query)
    next_url = web.next_page(".index", given, listing["next_cursor"])
    return web.page(
        "console/circuits.html",
        items=listing["items"],
        next_url=next_url,
        query=query,
        given=given,
    )


@bp.post("/circuits/reset")
@web.signed_in(Kind.ADMIN)
def reset() -> Response:
    """Close the posted circuit (a destination and a partner) and let its parked deliveries go.

    The query string is the list the form was on, to go back to it."""
    result = admin.reset_circuit_by_hand(web.filled(request.form))
    destination, partner_id = result["destination"], request.form.get("partner_id")
    if partner_id:
        notice = (
            f"Reset the circuit of {destination} for {partner_id}"
            if result["reset"]
            else f"The circuit of {destination} for {partner_id} was already closed"
        )
    else:
        notice = f"Reset {len(result['reset'])} circuits of {destination}"
    return web.done(notice, url_for(".index", **web.filled(request.args)))
