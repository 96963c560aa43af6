"""Host patterns, host routing, the SNI config keys and the ``auto`` rule, in memory."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests import docpages
from tests.harness import gateway_config, table
from twistedgw import _hosts as hosts
from twistedgw import config as configmod
from twistedgw.app._runtime import asks_for_certificate
from twistedgw.config import ApiConfig, SniEntry
from twistedgw.http import Router
from twistedgw.testing.devpki import DevPki


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"api.example.com", "api.example.com"),
        (b"API.Example.COM:8443", "api.example.com"),
        (b"api.example.com.", "api.example.com"),
        (b"api.example.com:", "api.example.com"),
        (b"127.0.0.1:9095", "127.0.0.1"),
        (b"[::1]:9095", "::1"),
        (b"[::1]", "::1"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_from_header(raw: bytes, host: str) -> None:
    assert hosts.from_header(raw) == host


@pytest.mark.parametrize(
    "raw",
    [b"", b":80", b"a b", b"a.example:x", b"a.example:123456", b"[::1", b"[::1]x", b"\xff",
     b"a..example", b"-a.example", b"a/b", b"a@b"],
)
def test_from_header_refuses(raw: bytes) -> None:
    with pytest.raises(hosts.BadHost):
        hosts.from_header(raw)


def test_patterns() -> None:
    assert hosts.pattern("*.Partner.Example") == "*.partner.example"
    assert hosts.pattern("Bücher.example") == "xn--bcher-kva.example"
    assert hosts.name("A.Example.") == "a.example"
    with pytest.raises(hosts.BadHost):
        hosts.name("*.a.example")  # an SNI or Host is never a pattern
    for bad in ("*", "a.*.example", "*a.example", "**.example", "*.127.0.0.1", "a b", ""):
        with pytest.raises(hosts.BadHost):
            hosts.pattern(bad)


def test_wildcards_are_one_label() -> None:
    assert hosts.matches("*.partner.example", "a.partner.example")
    assert not hosts.matches("*.partner.example", "partner.example")
    assert not hosts.matches("*.partner.example", "a.b.partner.example")
    assert not hosts.matches("*.partner.example", ".partner.example")
    assert hosts.overlap("*.p.example", "a.p.example")
    assert hosts.overlap("a.p.example", "*.p.example")
    assert hosts.overlap("*.p.example", "*.p.example")
    assert not hosts.overlap("*.p.example", "*.a.p.example")
    assert not hosts.overlap("*.p.example", "p.example")
    assert hosts.covered("a.p.example", ["*.p.example"])
    assert hosts.covered("*.p.example", ["*.p.example"])
    assert not hosts.covered("*.p.example", ["a.p.example"])


def api(name: str, context: str, hosts_: tuple[str, ...] | None = None, **kw: object) -> ApiConfig:
    return ApiConfig(name=name, version="1", context=context,
                     backend=f"http://127.0.0.1:1/{name}", hosts=hosts_, **kw)  # type: ignore[arg-type]


def test_router_chooses_by_host_within_the_longest_context() -> None:
    router = Router([
        api("any", "/svc"),
        api("exact", "/svc", ("api.example.com",)),
        api("wild", "/svc", ("*.partner.example",)),
        api("only", "/svc/only", ("api.example.com",)),
        api("root", "/"),
    ])

    def chosen(path: bytes, host: str | None) -> str | None:
        route = router.route(path, None, host=host)
        return route.api.name if route is not None else None

    assert chosen(b"/svc/x", "api.example.com") == "exact"
    assert chosen(b"/svc/x", "a.partner.example") == "wild"
    assert chosen(b"/svc/x", "other.example") == "any"
    assert chosen(b"/svc/x", None) == "any"
    assert chosen(b"/svc/only/x", "api.example.com") == "only"
    # The longest context has no API for this host: 404, not the shorter /svc or /.
    assert chosen(b"/svc/only/x", "other.example") is None
    assert chosen(b"/svc/only/x", None) is None
    assert chosen(b"/elsewhere", "api.example.com") == "root"


def problems(pki: DevPki, tmp_path: Path, text: str) -> list[str]:
    file = tmp_path / "gateway.toml"
    return list(configmod.parse_partial(tomllib.loads(text), file).problems)


def test_config_problems(pki: DevPki, tmp_path: Path) -> None:
    apis = [
        {"name": "a", "context": "/svc", "backend": "http://127.0.0.1:1",
         "hosts": ["*.p.example", "api.example.com"]},
        {"name": "b", "context": "/svc", "backend": "http://127.0.0.1:1", "hosts": ["x.p.example"]},
        {"name": "c", "context": "/svc", "backend": "http://127.0.0.1:1"},
        {"name": "d", "context": "/svc", "backend": "http://127.0.0.1:1"},
        {"name": "e", "context": "/e", "backend": "http://127.0.0.1:1",
         "hosts": ["a.*.example", "ok.example", "OK.example."]},
        {"name": "f", "context": "/f", "backend": "http://127.0.0.1:1", "hosts": []},
    ]
    tls = {"truststore": None, "client_certificate": "request"}
    text = gateway_config(pki, apis, port=1, tls=tls)
    text += table("authz", {"original_host_header": "bad header"})
    text += table("tls.sni", {"hosts": ["*.p.example"], "keystore": str(pki.keystore_p12),
                              "certificate": str(pki.server_cert)}, array=True)
    text += table("tls.sni", {"hosts": ["q.example", "10.0.0.1"]}, array=True)
    text += table("tls.sni", {"hosts": ["x.p.example", "x"], "certificate": str(pki.server_cert),
                              "private_key": str(pki.server_key), "client_certificate": "request",
                              "advertise_ca_names": "no", "extra": 1}, array=True)
    found = problems(pki, tmp_path, text)
    expected = [
        "apis[1].hosts[0]: 'x.p.example' overlaps '*.p.example' of apis[0]",
        "apis[3].context: duplicate context '/svc' (also used by apis[2])",
        "apis[4].hosts[0]: a wildcard must be the whole first label",
        "apis[4].hosts[2]: 'OK.example.' is listed twice",
        "apis[5].hosts: an empty list matches no host",
        "authz.original_host_header: not a valid HTTP header name",
        "tls.sni[0].keystore: give either keystore or certificate/private_key, not both",
        "tls.sni[1].certificate: is required",
        "tls.sni[1].hosts[1]: SNI carries host names, never addresses: '10.0.0.1'",
        "tls.sni[2].advertise_ca_names: expected true or false",
        "tls.sni[2].extra: unknown key",
        "tls.sni[2].hosts[0]: 'x.p.example' overlaps '*.p.example' of tls.sni[0]",
        'tls.client_certificate: "request" asks for client certificates, but there is no '
        "tls.truststore",
        'tls.sni[2].client_certificate: "request" asks',
    ]
    for words in expected:
        assert any(words in line for line in found), (words, found)
    assert len(found) == len(expected), found


def test_auto_asks_only_where_an_api_needs_a_certificate(pki: DevPki, tmp_path: Path) -> None:
    partners = SniEntry(("partners.example.com", "*.partners.example.com"))
    public = SniEntry(("www.example.com",))
    apis = [
        api("partner", "/p", ("*.partners.example.com",), mutual_ssl=configmod.Mode.OPTIONAL),
        api("open", "/o"),
    ]
    base = configmod.GatewayConfig(
        source=tmp_path / "g.toml", listeners=(), apis=tuple(apis),
        tls=configmod.TlsConfig(sni=(partners, public)),
    )
    assert asks_for_certificate(base, partners)
    assert not asks_for_certificate(base, public)
    assert not asks_for_certificate(base, None)  # the default: *.partners is covered
    # An API with mutual_ssl and no hosts is reachable everywhere.
    everywhere = configmod.GatewayConfig(
        source=base.source, listeners=(), tls=base.tls,
        apis=(*apis, api("all", "/a", mutual_ssl=configmod.Mode.MANDATORY)),
    )
    assert asks_for_certificate(everywhere, public) and asks_for_certificate(everywhere, None)
    # A host the entries do not cover is served by the default.
    uncovered = configmod.GatewayConfig(
        source=base.source, listeners=(), tls=base.tls,
        apis=(api("x", "/x", ("x.example",), mutual_ssl=configmod.Mode.MANDATORY),),
    )
    assert asks_for_certificate(uncovered, None) and not asks_for_certificate(uncovered, public)
    # request/off are what they say, whatever the APIs.
    assert asks_for_certificate(base, SniEntry(public.hosts, client_certificate="request"))
    assert not asks_for_certificate(base, SniEntry(partners.hosts, client_certificate="off"))
    # Certificate-bound JWTs (required) need one; when_claimed does not make auto ask.
    from twistedgw.config import Operation, Security

    def only(*more: ApiConfig) -> configmod.GatewayConfig:
        return configmod.GatewayConfig(source=base.source, listeners=(), tls=base.tls,
                                       apis=(apis[1], *more))

    jwt = configmod.Mode.MANDATORY
    assert asks_for_certificate(
        only(api("t", "/t", ("www.example.com",), jwt=jwt, certificate_bound="required")), public
    )
    assert not asks_for_certificate(
        only(api("t", "/t", ("www.example.com",), jwt=jwt, certificate_bound="when_claimed")),
        public,
    )
    # An OpenAPI operation with its own mutual_ssl security needs one too.
    operation = Operation("GET", "/x", Security(mutual_ssl=configmod.Mode.MANDATORY))
    assert asks_for_certificate(
        only(api("o", "/o", ("www.example.com",), operations=(operation,))), public
    )
    assert not asks_for_certificate(
        only(api("o", "/o", ("www.example.com",), operations=(Operation("GET", "/x"),))), public
    )
    # Load balancers that must present their certificate are asked everywhere.
    lb = configmod.GatewayConfig(
        source=base.source, listeners=(), tls=base.tls, apis=(apis[1],),
        mutual_ssl=configmod.MutualSslConfig(certificate_header="X-Cert",
                                             load_balancer_aliases=frozenset({"lb-ca"})),
    )
    assert asks_for_certificate(lb, public) and asks_for_certificate(lb, None)


def test_docs_examples_load(pki: DevPki, tmp_path: Path) -> None:
    """docs/how-to/hostnames-and-sni.md's examples, with the dev PKI's files, load as written."""
    from twistedgw.app import _runtime as runtime

    blocks = []
    for heading in ("## Hostnames", "## SNI: server certificates and the CertificateRequest"):
        section = docpages.section("how-to/hostnames-and-sni.md", heading)
        found = docpages.code_blocks(section, "toml")
        assert found, heading
        blocks.append(found[0])
    text = "[[listeners]]\nport = 9095\n\n" + blocks[1] + "\n" + blocks[0]
    root = pki.authorities["server-root"]
    partners = root.server(("partners.example.com", "*.partners.example.com"))
    crt, key = partners.write(tmp_path, "partners")
    for name, path in {
        "pki/server.crt": pki.server_cert, "pki/server.key": pki.server_key,
        "pki/truststore": pki.truststore_dir, "pki/partners.crt": crt, "pki/partners.key": key,
    }.items():
        text = text.replace(f'"{name}"', f'"{path}"')
    config = tmp_path / "readme.toml"
    config.write_text(text)
    built = runtime.load(config)
    assert built.warnings == ()
    assert [a.hosts for a in built.config.apis] == [
        ("api.example.com", "*.partner.example"), None
    ]
    assert built.server_tls is not None and built.server_tls.sni_hosts == (
        ("partners.example.com", "*.partners.example.com"),
    )


class _Transport:
    """Stands in for the TLSMemoryBIOProtocol: the records key, and getHandle()."""

    def __init__(self) -> None:
        self.connection: Any = None

    def getHandle(self) -> Any:
        return self.connection


def _pump(client: Any, server: Any) -> None:
    """Run a memory-BIO handshake to its end."""
    from OpenSSL import SSL

    for _ in range(20):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        moved = False
        for src, dst in ((client, server), (server, client)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True
        if not moved:
            break
    # TLS 1.3 tickets arrive after the handshake, as records the client must read.
    try:
        client.recv(1)
    except SSL.Error:
        pass


def test_resumed_session_never_brings_a_certificate_to_an_entry_that_does_not_ask(
    pki: DevPki,
) -> None:
    """TLS 1.3 resumes across entries (OpenSSL decrypts tickets with the first Context's
    keys, before the server-name callback runs): a session made where a certificate was
    asked for and verified, resumed with the SNI of an entry that does not ask, carries
    no certificate there; under its own entry it keeps the verified verdict."""
    from OpenSSL import SSL

    from twistedgw.config import TlsConfig
    from twistedgw.identity import Outcome
    from twistedgw.tls import ServerTLS, SniServer
    from twistedgw.tls import _pki as pkimod

    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    server_tls = ServerTLS(
        TlsConfig(), keystore, pkimod.load_truststore(pki.truststore_dir), ask=False,
        sni=[SniServer(("asks.example",), keystore, ask=True),
             SniServer(("silent.example",), keystore, ask=False)],
    )
    issued = pki.issued["partner-app"]
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate(issued.cert)
    client_ctx.use_privatekey(issued.key)  # type: ignore[arg-type]
    for extra in issued.chain:
        client_ctx.add_extra_chain_cert(extra)

    def reused(client: Any) -> bool:
        from OpenSSL._util import lib  # pyOpenSSL has no public call for it

        return bool(lib.SSL_session_reused(client._ssl))

    def connect(sni: bytes, session: Any = None) -> tuple[Any, Any]:
        transport = _Transport()
        server = server_tls.serverConnectionForTLS(transport)
        transport.connection = server
        server.set_accept_state()
        client = SSL.Connection(client_ctx, None)
        client.set_tlsext_host_name(sni)
        if session is not None:
            client.set_session(session)
        client.set_connect_state()
        _pump(client, server)
        return client, server_tls.identity_for(transport)

    for other in (b"silent.example", b"elsewhere.example"):  # an entry, and the default
        client, identity = connect(b"asks.example")
        assert identity.outcome is Outcome.VERIFIED
        client, identity = connect(other, client.get_session())
        assert reused(client), "resumed, so the rule on the record is what is tested"
        assert identity.outcome is Outcome.NONE, other
    client, identity = connect(b"asks.example")
    client, identity = connect(b"asks.example", client.get_session())
    assert reused(client)
    assert identity.outcome is Outcome.VERIFIED


def test_routes_lists_each_host() -> None:
    from twistedgw.config import route_rows

    apis = [api("exact", "/svc", ("api.example.com", "*.p.example")), api("any", "/svc")]
    rows = route_rows(apis)
    assert [row[0] for row in rows] == ["api.example.com", "*.p.example", "*"]
