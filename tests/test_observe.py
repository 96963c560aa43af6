"""Admin listener, Prometheus metrics and the JSON access log, against the real process."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, free_port, request, table
from tests.opskit import admin_get, read_json_lines, scrape, value, wait_until
from twistedgw.app import reason_label
from twistedgw.identity import _reasons as reasons
from twistedgw.testing.devpki import DevPki

SECRET_KEY = "super-secret-key-123"


def _apis(backend: BackendProcess) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
         "mutual_ssl": "mandatory", "aliases": ["partner-root"]},
        {"name": "down", "version": "1", "context": "/down",
         "backend": f"http://127.0.0.1:{free_port()}"},
        {"name": "keyed", "version": "2", "context": "/keyed", "backend": backend.url,
         "api_key": "mandatory"},
    ]


def _start(gateway: Callable[..., GatewayProcess], backend: BackendProcess, tmp_path: Path,
           ) -> tuple[GatewayProcess, int, Path]:
    admin = free_port()
    log = tmp_path / "access.jsonl"
    extra = table("admin", {"host": "127.0.0.1", "port": admin}) + table(
        "access_log", {"path": str(log)})
    gw = gateway(_apis(backend), api_keys={"app": SECRET_KEY}, extra=extra, wait_for=(admin,))
    return gw, admin, log


def _der_sha256(path: Path) -> str:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_admin_health_and_metrics_change_with_traffic(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path
) -> None:
    gw, admin, _ = _start(gateway, backend, tmp_path)
    assert admin_get(admin, "/healthz")[0] == 200
    wait_until(lambda: admin_get(admin, "/readyz")[0] == 200, what="/readyz 200")
    status, ctype, _ = admin_get(admin, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert admin_get(admin, "/nope")[0] == 404

    before = scrape(admin)
    assert request(gw.port, "/echo/a", pki, "partner-app").status == 200
    assert request(gw.port, "/echo/b", pki, "partner-app").status == 200
    assert request(gw.port, "/echo/c", pki, "expired").status == 401
    assert request(gw.port, "/echo/d", pki).status == 401
    assert request(gw.port, "/down/x", pki).status == 503
    assert request(gw.port, "/nothing", pki).status == 404
    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("twistedgw_requests_total", api="echo:1", status="200", consumer="none") == 2
    assert delta("twistedgw_requests_total", api="echo:1", status="401", consumer="none") == 2
    assert delta("twistedgw_requests_total", api="down:1", status="503", consumer="none") == 1
    assert delta("twistedgw_requests_total", api="-", status="404", consumer="none") == 1
    assert delta("twistedgw_request_duration_seconds_count", api="echo:1") == 4
    assert delta("twistedgw_request_duration_seconds_bucket", api="echo:1", le="+Inf") == 4
    assert delta("twistedgw_client_cert_verifications_total",
                 source="handshake", result="verified", reason="") == 2
    assert delta("twistedgw_client_cert_verifications_total",
                 source="handshake", result="failed", reason="expired") == 1
    assert delta("twistedgw_client_cert_verifications_total",
                 source="handshake", result="none", reason="none") >= 1
    assert delta("twistedgw_backend_errors_total", api="down:1", kind="refused") == 1
    assert value(after, "twistedgw_config_reloads_total", result="success") == 0

    # Expiry of the server certificate and of every truststore entry, to the second.
    expiry = after["twistedgw_certificate_expiry_timestamp_seconds"]
    by_alias = {dict(k)["alias"]: (dict(k), v) for k, v in expiry.items()}
    server = x509.load_pem_x509_certificates(pki.server_cert.read_bytes())[0]
    labels, stamp = by_alias["server"]
    assert labels["role"] == "server"
    assert labels["subject"] == server.subject.rfc4514_string()
    assert stamp == server.not_valid_after_utc.timestamp()
    trust = {p.stem: p for p in pki.truststore_dir.iterdir()}
    for alias, path in trust.items():
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        labels, stamp = by_alias[alias]
        assert labels["role"] == "truststore"
        assert stamp == cert.not_valid_after_utc.timestamp()
    assert len(by_alias) == len(trust) + 1


def test_access_log_line_per_request_with_fingerprint_and_no_secrets(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path
) -> None:
    gw, _, log = _start(gateway, backend, tmp_path)
    partner_crt = pki.clients["partner-app"][0]
    assert request(gw.port, f"/echo/ok?apikey={SECRET_KEY}", pki, "partner-app").status == 200
    assert request(gw.port, "/echo/old", pki, "expired").status == 401
    assert request(gw.port, "/keyed/x", pki, headers={"apikey": SECRET_KEY}).status == 200
    assert request(gw.port, "/down/y", pki).status == 503
    wait_until(lambda: len(read_json_lines(log)) >= 4, what="4 access-log lines")
    lines = read_json_lines(log)
    assert len(lines) == 4
    ok, old, keyed, down = lines

    leaf = x509.load_pem_x509_certificates(partner_crt.read_bytes())[0]
    assert ok["path"] == "/echo/ok"  # never the query string
    assert ok["method"] == "GET" and ok["status"] == 200 and ok["api"] == "echo:1"
    assert ok["client"] == "127.0.0.1"
    assert ok["mtls"] == "verified" and ok["cert_source"] == "handshake"
    assert ok["cert_sha256"] == _der_sha256(partner_crt)
    assert ok["cert_subject"] == leaf.subject.rfc4514_string()
    assert ok["cert_issuer"] == leaf.issuer.rfc4514_string()
    assert int(ok["cert_serial"], 16) == leaf.serial_number
    assert ok["reason"] is None
    assert ok["bytes"] > 0 and ok["duration_ms"] >= 0
    assert ok["time"].endswith("+00:00")

    assert old["mtls"] == "failed" and old["status"] == 401
    assert old["reason"] == reasons.EXPIRED
    assert old["cert_sha256"] == _der_sha256(pki.clients["expired"][0])

    assert keyed["api"] == "keyed:2" and keyed["status"] == 200
    assert keyed["mtls"] == "none" and keyed["cert_sha256"] is None

    assert down["status"] == 503 and down["error"] == "refused"

    text = log.read_text()
    assert SECRET_KEY not in text
    assert "BEGIN CERTIFICATE" not in text and "MII" not in text
    assert SECRET_KEY not in gw.output()

    # logrotate: move the file away, SIGHUP, and the next line goes to a new file.
    log.rename(log.with_suffix(".1"))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "Reloaded " in gw.output(), what="the reload")
    assert request(gw.port, "/echo/rotated", pki, "partner-app").status == 200
    wait_until(lambda: len(read_json_lines(log)) == 1, what="a line in the new file")
    assert read_json_lines(log)[0]["path"] == "/echo/rotated"
    assert len(read_json_lines(log.with_suffix(".1"))) == 4


def test_authz_requests_are_logged_with_the_api_and_caller_judged(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path
) -> None:
    log = tmp_path / "access.jsonl"
    extra = table("authz", {"path": "/_authz"}) + table("access_log", {"path": str(log)})
    gw = gateway(_apis(backend), api_keys={"app": SECRET_KEY}, extra=extra)
    judged = {"X-Original-URI": "/echo/x?y=1"}
    assert request(gw.port, "/_authz", pki, "partner-app", headers=judged).status == 200
    assert request(gw.port, "/_authz", pki, "expired", headers=judged).status == 401
    wait_until(lambda: len(read_json_lines(log)) >= 2, what="2 access-log lines")
    allowed, refused = read_json_lines(log)
    assert allowed["path"] == "/_authz" and allowed["api"] == "echo:1"
    assert allowed["mtls"] == "verified"
    assert allowed["cert_sha256"] == _der_sha256(pki.clients["partner-app"][0])
    assert refused["api"] == "echo:1" and refused["status"] == 401
    assert refused["mtls"] == "failed" and refused["reason"] == reasons.EXPIRED


def test_reason_labels_are_bounded() -> None:
    assert reason_label(None) is None
    assert reason_label(reasons.EXPIRED) == "expired"
    assert reason_label(reasons.UNTRUSTED) == "untrusted"
    assert reason_label(f"{reasons.INVALID}: path length constraint exceeded") == "invalid"
    assert reason_label("certificate header could not be decoded: bad base64") == "undecodable"
    assert reason_label("something new and detailed 1234") == "other"


def test_a_refusal_is_logged_and_counted_with_its_reason_and_code(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path
) -> None:
    """Issue 23 item 12: a certificate that verifies but is not one of the API's aliases
    was logged "mtls": "verified", "reason": null and counted result="verified"; every
    refusal, whichever stage made it, now carries its reason and error code."""
    gw, admin, log = _start(gateway, backend, tmp_path)
    before = scrape(admin)
    r = request(gw.port, "/echo/x", pki, "other-app")  # trusted, not under partner-root
    assert r.status == 401 and r.json()["description"] == reasons.NOT_FOR_API, r.body
    r = request(gw.port, "/keyed/x", pki)  # no API key: refused by another scheme
    assert r.status == 401
    missing_key = r.json()
    assert request(gw.port, "/echo/ok", pki, "partner-app").status == 200
    assert request(gw.port, "/nothing", pki).status == 404  # routing's refusal
    assert request(gw.port, "/echo/a<b", pki).status == 400  # the HTTP front's
    wait_until(lambda: len(read_json_lines(log)) >= 5, what="5 access-log lines")
    wrong, keyless, ok, nowhere, malformed = read_json_lines(log)
    assert wrong["mtls"] == "failed" and wrong["reason"] == reasons.NOT_FOR_API, wrong
    assert wrong["code"] == "900901" and wrong["cert_sha256"] is not None
    assert keyless["reason"] == missing_key["description"]
    assert keyless["code"] == missing_key["code"] and keyless["mtls"] == "none"
    assert ok["reason"] is None and ok["code"] is None and ok["mtls"] == "verified"
    assert nowhere["code"] == "404" and nowhere["reason"].startswith("No API is deployed")
    assert malformed["code"] == "400" and malformed["error"] == "bad_request"
    assert malformed["reason"], malformed

    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("twistedgw_client_cert_verifications_total",
                 source="handshake", result="failed", reason="not_for_api") == 1
    assert delta("twistedgw_client_cert_verifications_total",
                 source="handshake", result="verified", reason="") == 1
    assert delta("twistedgw_refusals_total", api="echo:1", code="900901",
                 reason="not_for_api") == 1
    assert delta("twistedgw_refusals_total", api="keyed:2", code=missing_key["code"],
                 reason="other") == 1
    assert delta("twistedgw_refusals_total", api="-", code="404", reason="other") == 1
    assert delta("twistedgw_refusals_total", api="-", code="400", reason="other") == 1


def test_refusals_reach_the_parents_metrics_from_workers() -> None:
    """Workers send ``sample_of`` as JSON; the parent counts the same labels."""
    import json

    from twistedgw import errors
    from twistedgw.app._observe import Metrics, sample_of
    from twistedgw.http import RequestRecord
    from twistedgw.identity import ClientIdentity, Outcome, Source

    identity = ClientIdentity(source=Source.HANDSHAKE, outcome=Outcome.VERIFIED)
    record = RequestRecord(0.0, 0.001, "127.0.0.1", "GET", "/x", None, 401, 10, identity,
                           refusal=errors.invalid_credentials(reasons.NOT_FOR_API))
    metrics = Metrics(lambda: None)
    metrics.count(tuple(json.loads(json.dumps(sample_of(record)))))  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value(
        "twistedgw_client_cert_verifications_total",
        {"source": "handshake", "result": "failed", "reason": "not_for_api"}) == 1
    assert metrics.registry.get_sample_value(
        "twistedgw_refusals_total", {"api": "-", "code": "900901", "reason": "not_for_api"}) == 1
