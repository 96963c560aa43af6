"""Header plugins on NGINX's path.

The shipped ``request-headers`` and ``response-headers`` are fixed edits: they become
NGINX directives (``proxy_set_header``; ``proxy_hide_header`` and ``add_header ...
always``, in the API's location and in the locations that answer its errors, as the
direct mode applies response transforms to every answer). A third-party request
transform that declares the headers it sets (a ``sets_headers`` attribute on the stage,
e.g. ``sets_headers = ("X-Tenant",)``) runs on the authz endpoint, whose answer carries
their values (``X-Twistedgw-Set-<name>``), which NGINX sets. Any other plugin stage
NGINX cannot apply (a response transform, an undeclared request transform) keeps the
API on the gateway path; its schemes and authorisers run on the authz endpoint anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twistedgw.config import ApiConfig
from twistedgw.http import verdicts

SHIPPED = verdicts.HEADER_PLUGINS


@dataclass(frozen=True)
class Headers:
    """What NGINX does to an API's request and response headers for its plugins."""

    request: tuple[tuple[str, str], ...] = ()  # name, value ("" removes), final values
    response_set: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()
    declared: tuple[str, ...] = ()  # set by third-party transforms: from the authz answer

    @property
    def response(self) -> bool:
        return bool(self.response_set or self.response_remove)


NONE = Headers()


def _options(spec: Any) -> tuple[dict[str, str], list[str]]:
    options: Mapping[str, Any] = spec.options
    sets = {str(k): str(v) for k, v in dict(options.get("set", {})).items()}
    return sets, [str(n) for n in options.get("remove", [])]


def plugin_headers(api: ApiConfig, pipeline: Any = None) -> Headers | str:
    """The API's header edits NGINX applies, or why it cannot (the gateway path)."""
    if not api.plugins:
        return NONE
    request: dict[str, tuple[str, str]] = {}
    response_set: dict[str, tuple[str, str]] = {}
    response_remove: dict[str, str] = {}
    declared: list[str] = []
    for spec in api.plugins:
        if spec.name in SHIPPED:
            sets, removes = _options(spec)
            if any("$" in v for v in sets.values()):
                return f"plugin {spec.name!r}: a '$' in a header value (NGINX reads variables)"
            if spec.name == "request-headers":
                for name in removes:
                    request[name.lower()] = (name, "")
                for name, value in sets.items():
                    request[name.lower()] = (name, value)
            else:
                for name in removes:
                    response_set.pop(name.lower(), None)
                    response_remove[name.lower()] = name
                for name, value in sets.items():
                    response_remove.pop(name.lower(), None)
                    response_set[name.lower()] = (name, value)
            continue
        why = _third_party(spec.name, pipeline)
        if isinstance(why, str):
            return why
        declared += [n for n in why if n.lower() not in {d.lower() for d in declared}]
    return Headers(tuple(request.values()), tuple(response_set.values()),
                   tuple(response_remove.values()), tuple(declared))


def _third_party(name: str, pipeline: Any) -> tuple[str, ...] | str:
    """The headers a third-party plugin's request transform declares, or why NGINX cannot
    apply the plugin."""
    if pipeline is None:
        return f"plugin {name!r}: what it does is known only to twistedgw"
    if any(n.name == name for n in pipeline.response_transforms):
        return f"plugin {name!r} transforms responses: NGINX cannot apply it"
    declared: tuple[str, ...] = ()
    for named in pipeline.request_transforms:
        if named.name != name:
            continue
        names = getattr(named.stage, "sets_headers", None)
        if not names:
            return (f"plugin {name!r} transforms requests without declaring the headers it "
                    "sets (sets_headers)")
        declared += tuple(str(n) for n in names)
    return declared
