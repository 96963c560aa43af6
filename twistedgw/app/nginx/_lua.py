"""The Lua variant: the module shipped inside the package (``twistedgw_verdicts.lua``)
and the ``access_by_lua_block`` each NGINX-path API's location calls it from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from twistedgw.app.nginx._text import lua_string
from twistedgw.http import _verdicts as verdicts

if TYPE_CHECKING:
    from twistedgw.app.nginx._plan import ApiPlan
    from twistedgw.app.nginx._site import Site

LUA_NAME = "twistedgw_verdicts.lua"


def lua_source() -> Path:
    """The Lua module's file in the installed package (a wheel ships it as package data)."""
    return Path(__file__).resolve().with_name(LUA_NAME)


def answers(site: Site, plan: ApiPlan) -> list[tuple[str, str]]:
    """(authz answer header, location variable) pairs the location takes from a verdict."""
    out = [((verdicts.SET_PREFIX + name).decode(), f"tgw_id_{n}")
           for n, name in enumerate(site.identity_names)]
    out.append(("x-consumer-name", "tgw_consumer"))
    if verdicts.authorization_rule(plan.api) == "answer":
        out.append((verdicts.AUTHORIZATION.decode(), "tgw_authz_rm"))
    return out


def lua_access(site: Site, plan: ApiPlan, indent: str) -> None:
    """``access_by_lua_block`` for one API: its verdict cache key's parts and the answer
    headers whose values the location's variables take."""
    w = site.w
    api = plan.api
    pairs = answers(site, plan)
    for _answer, variable in pairs:
        w(f'{indent}set ${variable} "";')
    table = ", ".join(f"{{{lua_string(a)}, {lua_string(v)}}}" for a, v in pairs)
    keys = ", ".join(lua_string(h) for h in verdicts.key_headers(api))
    spec = [
        f'api = "{plan.index}"',
        f"keys = {{{keys}}}",
        f"bearer = {'true' if verdicts.uses_bearer(api) else 'false'}",
        f"per_operation = {'true' if verdicts.per_operation(api) else 'false'}",
        f"answers = {{{table}}}",
    ]
    w(f"{indent}access_by_lua_block {{")
    w(f'{indent}    require("twistedgw_verdicts").access({{')
    for part in spec:
        w(f"{indent}        {part},")
    w(f"{indent}    }})")
    w(f"{indent}}}")
