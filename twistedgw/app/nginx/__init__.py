"""``twistedgw nginx-config``: the NGINX side of the NGINX-fronted mode, from the same TOML.

NGINX terminates TLS, carries the bytes and caches verdicts; twistedgw decides.
The rendered file is an include for NGINX's ``http {}`` context. Requests take
one of two ways:

- **NGINX's path** (the fast path): a request whose raw path is *clean* (nothing
  twistedgw's normalisation would change) matches the prefix locations of an API
  context (``^~ /ctx/`` and ``= /ctx``, in lower case; NGINX picks the longest, as
  twistedgw does). twistedgw's contexts are case-insensitive: a path in other letters
  falls through to the catch-all, or, where it names a longer context from inside a
  shorter one's location, is sent there by one regex (``_locations._guard``); both
  take the gateway path. NGINX asks twistedgw's authz endpoint (cached where the
  verdict allows it) and proxies to the API's backend itself. For a clean path
  NGINX's ``$uri`` is the raw path and twistedgw's normalised path, so both agree
  on the API and the authz answer is about exactly the path NGINX forwards.
- **The gateway path**: everything else is handed whole to twistedgw, which answers
  exactly as the direct mode does (routing, JSON errors, forwarding).

Modules: ``_checks`` (what the config lacks), ``_plan`` (which way each API takes,
and why), ``_render`` (the include), ``_servers`` (server blocks), ``_locations``
(each API's location, the authz and error locations), ``_lua`` (the Lua variant and
its module, shipped as package data), ``_binary`` (the NGINX binary, ``nginx -t``,
the probe of ``--variant auto``), ``_site`` and ``_text`` (shared helpers).
"""

from twistedgw.app.nginx._binary import (
    LUA_MODULES,
    Probe,
    lua_modules,
    nginx_binary,
    nginx_test,
    probe,
    version,
)
from twistedgw.app.nginx._checks import NginxConfigError, check
from twistedgw.app.nginx._lua import LUA_NAME, lua_source
from twistedgw.app.nginx._plan import ApiPlan, plan
from twistedgw.app.nginx._render import VARIANTS, Rendered, render
from twistedgw.app.nginx._text import CACHE_ZONE, CLEAN_TARGET, INTERNAL

__all__ = [
    "CACHE_ZONE",
    "CLEAN_TARGET",
    "INTERNAL",
    "LUA_MODULES",
    "LUA_NAME",
    "VARIANTS",
    "ApiPlan",
    "NginxConfigError",
    "Probe",
    "Rendered",
    "check",
    "lua_modules",
    "lua_source",
    "nginx_binary",
    "nginx_test",
    "plan",
    "probe",
    "render",
    "version",
]
