"""The Lua variant's module, shipped inside the package (``twistedgw_verdicts.lua``)."""

from __future__ import annotations

from pathlib import Path

LUA_NAME = "twistedgw_verdicts.lua"


def lua_source() -> Path:
    """The Lua module's file in the installed package (a wheel ships it as package data)."""
    return Path(__file__).resolve().with_name(LUA_NAME)
