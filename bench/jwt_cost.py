"""The CPU cost of a JWT-protected request against a mutual_ssl-only one, in one process.

Times an API's whole pipeline (``Pipeline.run``: certificate checks, the schemes
combined, the Authorization and identity transforms) for a caller whose
certificate verified, with and without a bearer token, interleaved over rounds,
in CPU time of this process (so other processes on a shared machine do not
count). ``cached`` reuses one token (a client sends the same token until it
expires: the signature is checked once); ``fresh`` signs a new token for every
request (the signature is checked every time). Bench scenario 7 (``run.py
--scenarios jwt``) measures the same through the whole stack with wrk.

    python3 bench/jwt_cost.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from joserfc import jwk, jwt  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from twistedgw import config as configmod  # noqa: E402
from twistedgw.identity import ClientIdentity, Outcome, Source  # noqa: E402
from twistedgw.pipeline import (  # noqa: E402
    Call,
    HeaderEdit,
    HeaderView,
    Pipeline,
    RequestView,
    compile_pipelines,
)
from twistedgw.pipeline._jwt import VERIFIED_CACHE_SIZE  # noqa: E402
from twistedgw.testing import devpki  # noqa: E402

ISSUER = "https://idp.bench"


def setup(work: Path) -> tuple[dict[str, Pipeline], ClientIdentity, dict[str, Any]]:
    pki = devpki.generate(work / "pki")
    ec = jwk.ECKey.generate_key("P-256", private=True, parameters={"kid": "ec"})
    rsa = jwk.RSAKey.generate_key(2048, private=True, parameters={"kid": "rsa"})
    jwks = work / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ec.as_dict(private=False),
                                         rsa.as_dict(private=False)]}))
    text = f"""
[[listeners]]
port = 0
[tls]
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
truststore = "{pki.truststore_dir}"
[[apis]]
name = "mtls"
context = "/mtls"
backend = "http://127.0.0.1:1"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
[[apis]]
name = "jwt"
context = "/jwt"
backend = "http://127.0.0.1:1"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
jwt = "mandatory"
[[jwt_issuers]]
name = "bench"
issuer = "{ISSUER}"
jwks = "{jwks}"
audiences = ["bench"]
"""
    cfg = configmod.parse(tomllib.loads(text), work / "g.toml")
    problems: list[str] = []
    built = compile_pipelines(cfg, problems)
    assert not problems, problems
    pipelines = {api.name: built[api] for api in cfg.apis}
    leaf = pki.issued["partner-app"]
    identity = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, leaf.full_chain,
                              frozenset({"partner-root"}))
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return pipelines, identity, {"ec": ec, "rsa": rsa, "x5t": x5t}


def mint(keys: dict[str, Any], kind: str, serial: int) -> bytes:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": "bench", "sub": f"c{serial}", "iat": now,
                              "exp": now + 3600}
    if kind == "bound":
        claims["cnf"] = {"x5t#S256": keys["x5t"]}
    alg, key = ("RS256", keys["rsa"]) if kind == "rs256" else ("ES256", keys["ec"])
    token: str = jwt.encode({"alg": alg, "kid": key.kid}, claims, key)
    return b"Bearer " + token.encode()


def timer(p: Pipeline, identity: ClientIdentity, values: list[bytes | None]) -> float:
    """CPU seconds per request over ``values`` (one Authorization value, or none, each)."""
    headers = [Headers({b"authorization": [v]} if v is not None else {}) for v in values]
    path = b"/" + p.api.name.encode() + b"/x"
    start = time.process_time()
    for h in headers:
        out = p.run(Call(RequestView(b"GET", path, None, HeaderView(h), "127.0.0.1", True),
                         p.api, identity))
        assert isinstance(out, HeaderEdit), out
    return (time.process_time() - start) / len(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="per case and round ('fresh' "
                    "cases use at least 2,048 distinct tokens)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="twistedgw-jwtcost-") as tmp:
        pipelines, identity, keys = setup(Path(tmp))
        cases: dict[str, Callable[[], float]] = {
            "mutual_ssl only": lambda: timer(pipelines["mtls"], identity, [None] * n),
        }
        for kind in ("es256", "bound", "rs256"):
            one = mint(keys, kind, 0)
            # More distinct tokens than the verified-token cache holds, so each misses.
            fresh = [mint(keys, kind, i) for i in range(1, max(n, 2 * VERIFIED_CACHE_SIZE) + 1)]
            cases[f"+ JWT {kind}, cached"] = (
                lambda one=one: timer(pipelines["jwt"], identity, [one] * n))
            cases[f"+ JWT {kind}, fresh"] = (
                lambda fresh=fresh: timer(pipelines["jwt"], identity, fresh))
        for fn in cases.values():  # warm up
            fn()
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(args.rounds):
            order = list(cases.items())
            for name, fn in order if r % 2 == 0 else reversed(order):
                runs[name].append(fn())
    base = statistics.median(runs["mutual_ssl only"])
    print(f"{args.rounds} interleaved rounds of {n} requests; CPU µs per request "
          "(median, min..max); extra = over mutual_ssl only")
    print("| case | µs/request | extra µs | vs mutual_ssl only |")
    print("|---|---|---|---|")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1e6:.1f} ({min(values) * 1e6:.1f}..{max(values) * 1e6:.1f}) "
              f"| {(med - base) * 1e6:+.1f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
