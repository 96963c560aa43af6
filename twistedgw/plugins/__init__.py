"""Gateway plugins, found the way ``twisted.plugins`` is found.

Every ``twistedgw/plugins/`` directory on ``sys.path`` that has no
``__init__.py`` of its own is searched too, so an installed distribution or a
directory on ``PYTHONPATH`` adds plugins without touching the gateway. A plugin
module holds objects that provide ``twisted.plugin.IPlugin`` and
``twistedgw.pipeline.IGatewayPlugin``; see docs/tutorials/writing-a-plugin.md.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
