"""NGINX-fronted mode for CORS, the response cache and in-process resources (#25 items 6
and 8, #28 embedding): ``nginx-config`` sends such an API down the gateway path and says
why in the rendered file; the other APIs keep NGINX's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_nginx_fronted import _config
from twistedgw import config as configmod
from twistedgw.app import nginx as nginxconf
from twistedgw.testing.devpki import DevPki

CASES = {
    "resource": ('backend = "resource:twisted.web.static:Data"\n',
                 "The backend is a Twisted resource inside twistedgw (resource:)"),
    "cors": ('[apis.cors]\nallow_origins = ["https://app.example.com"]\n',
             "CORS ([apis.cors], x-wso2-cors): twistedgw answers preflights"),
    "response cache": ("[apis.response_cache]\ntimeout_seconds = 60\n",
                       "Response cache ([apis.response_cache], x-wso2-response-cache): "
                       "twistedgw keeps answers per caller"),
}


@pytest.mark.parametrize("feature", sorted(CASES))
def test_api_takes_the_gateway_path_with_its_reason(
    tmp_path: Path, pki: DevPki, feature: str
) -> None:
    table, reason = CASES[feature]
    backend = "" if table.startswith("backend") else 'backend = "http://127.0.0.1:8080/x"\n'
    extra = ('\n[[apis]]\nname = "Extra"\nversion = "1"\ncontext = "/extra"\n'
             + backend + table)
    cfg = configmod.load(_config(tmp_path, pki, extra))
    index = next(i for i, api in enumerate(cfg.apis) if api.context == "/extra")
    text = nginxconf.render(cfg).text
    block = text[text.index("# Extra:1: /extra"):]
    block = block[:block.index("\n    }\n")]
    assert reason in block and "twistedgw forwards every request" in block, block
    assert "proxy_pass http://twistedgw_authz$request_uri;" in block
    assert f"/authz/{index} " not in text  # no verdict location: nothing asks it
    assert "/authz/0 " in text  # the example's APIs keep NGINX's path
