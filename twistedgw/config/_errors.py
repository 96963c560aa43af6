"""``[errors]``: the shape of the JSON bodies the gateway answers errors with.

``style = "apim"`` (the default) is API Manager 4.x's ``{"code": "900901", "message":
..., "description": ...}``; ``"mgw"`` is Microgateway 3.x's ``{"fault": {"code": 900901,
"message": ..., "description": ...}}`` (its ``sendErrorResponse``), the code an integer,
for clients written against the Microgateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader

ERROR_STYLES = ("apim", "mgw")


@dataclass(frozen=True)
class ErrorsConfig:
    style: str = "apim"


def read_errors(r: TableReader) -> ErrorsConfig:
    errors = ErrorsConfig(style=r.choice("style", ERROR_STYLES, "apim"))
    r.finish()
    return errors
