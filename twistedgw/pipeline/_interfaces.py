"""Where plugins plug in: one factory interface and one interface per pipeline stage.

A plugin is found by ``twisted.plugin`` as a provider of ``IGatewayPlugin``
(and ``IPlugin``) in the ``twistedgw.plugins`` package. Per API, the gateway
calls its ``configure`` with the plugin's table from ``[[apis.plugins]]``; the
object returned provides one or more of the stage interfaces below, and the
pipeline runs it in that stage, in config order.

Every stage method may answer synchronously or return a ``Deferred`` (a JWKS
fetch, an OCSP query, a remote rate limiter); the all-synchronous path creates
no Deferred. A stage that raises, or whose Deferred fails, makes the request
answer 500 naming the plugin; it can never make the gateway forward a request
that the API's schemes refused, because authentication runs first and a
refusal ends the pipeline.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IGatewayPlugin(Interface):
    """A plugin the gateway can configure per API (the factory ``twisted.plugin`` finds)."""

    name = Attribute("The name written in [[apis.plugins]] name = ...: lower-case, unique.")
    description = Attribute("One line for `twistedgw plugins`.")

    def configure(options, context):  # type: ignore[no-untyped-def]
        """Check ``options`` (an ``Options`` reader over the plugin's table) and build the
        per-API stage object, or raise ``PluginConfigError`` naming every bad key.

        ``context`` is a ``PluginContext``: the API and the whole gateway config.
        Called at start, at ``twistedgw check`` and on every reload; must not do I/O
        that can block (start background work lazily instead).
        """


class IScheme(Interface):
    """An authentication scheme; schemes combine by the WSO2 rule (see ``_combine``)."""

    name = Attribute("The scheme's name, as used in logs and error descriptions.")
    mode = Attribute("The ``Mode`` this API gives the scheme (mandatory/optional/disabled).")

    def authenticate(call):  # type: ignore[no-untyped-def]
        """Judge ``call``: a ``SchemeResult``, or a Deferred firing with one."""


class ICertificateCheck(Interface):
    """A check of the caller's verified certificate that runs before authentication.

    Returns None when the certificate may stand, or a reason (plain words) that
    turns the verdict into a failed one, as an expired certificate would be; the
    ``mutual_ssl`` scheme then refuses it with that reason. Revocation and
    identity rules are certificate checks.
    """

    def check_certificate(call):  # type: ignore[no-untyped-def]
        """``str | None``, or a Deferred firing with one; only called for verified identities."""


class IAuthoriser(Interface):
    """A rule on the authenticated caller (consumer ACLs, tiers, ...)."""

    def authorise(call):  # type: ignore[no-untyped-def]
        """None to let the request go on, or a ``Refusal``; or a Deferred firing with either."""


class IRequestTransform(Interface):
    """Changes the request headers forwarded to the backend."""

    def transform_request(call, edit):  # type: ignore[no-untyped-def]
        """Edit ``edit`` (a ``HeaderEdit``); None or a Deferred firing with None."""


class IResponseTransform(Interface):
    """Changes the answer's headers before they reach the client.

    Synchronous only: it runs while the backend's response is being relayed,
    where waiting would hold the backend connection.
    """

    def transform_response(call, response):  # type: ignore[no-untyped-def]
        """Edit ``response`` (a ``ResponseEdit``) in place."""
