"""twistedgw.wire: HTTP/1.1 on the wire, shared by the front and the upstream client.

One grammar (``_abnf``), one request-head parser (``_request``), one response-head
parser (``_response``), one chunked decoder (``_chunked``), the header fields of a
parsed message (``_fields``), and the exchange every front hands the request path,
with the interfaces a front implements to answer it (``_exchange``: read its
docstring before writing a front). Below ``http`` and ``upstream`` in the layers: it
imports neither, so a smuggling rule changes in one place for both directions
(h11 and mitmproxy keep one parser for the same reason).
"""

from twistedgw.wire._abnf import (
    MALFORMED,
    TOKEN,
    UNUSUAL_NAMES,
    USUAL_REQUEST_HEAD,
    connection_tokens,
    method_refusal,
    target_problem,
)
from twistedgw.wire._answer import SERVER, answer_headers, http_date
from twistedgw.wire._chunked import (
    MIN_AVERAGE_CHUNK,
    SMALL_CHUNKS_AFTER,
    ChunkedDecoder,
    MalformedChunks,
    TinyChunks,
)
from twistedgw.wire._exchange import (
    BodyReady,
    BodySource,
    Connection,
    Exchange,
    Responder,
    ResponderWrapper,
)
from twistedgw.wire._fields import Fields
from twistedgw.wire._request import (
    MAX_FIELDS,
    USUAL_HEAD_MAX,
    USUAL_LINES_MAX,
    Framing,
    RequestHead,
    WireError,
    check_partial_head,
    header_too_large,
    parse_request_fields,
    parse_request_head,
    uri_too_long,
    usual_fields,
)
from twistedgw.wire._response import (
    NOT_RELAYED,
    RESPONSE_HEAD_LIMIT,
    BadResponseHead,
    ResponseHead,
    ResponseShape,
    learn_shape,
    parse_response_head,
)

__all__ = [
    "MALFORMED",
    "MAX_FIELDS",
    "MIN_AVERAGE_CHUNK",
    "NOT_RELAYED",
    "RESPONSE_HEAD_LIMIT",
    "SERVER",
    "SMALL_CHUNKS_AFTER",
    "TOKEN",
    "UNUSUAL_NAMES",
    "USUAL_HEAD_MAX",
    "USUAL_LINES_MAX",
    "USUAL_REQUEST_HEAD",
    "BadResponseHead",
    "BodyReady",
    "BodySource",
    "ChunkedDecoder",
    "Connection",
    "Exchange",
    "Fields",
    "Framing",
    "MalformedChunks",
    "RequestHead",
    "Responder",
    "ResponderWrapper",
    "ResponseHead",
    "ResponseShape",
    "TinyChunks",
    "WireError",
    "answer_headers",
    "check_partial_head",
    "connection_tokens",
    "header_too_large",
    "http_date",
    "learn_shape",
    "method_refusal",
    "parse_request_fields",
    "parse_request_head",
    "parse_response_head",
    "target_problem",
    "uri_too_long",
    "usual_fields",
]
