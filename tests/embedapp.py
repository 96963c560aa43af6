"""Twisted applications an API can be served by in process (``backend = "resource:..."``):
a plain twisted.web tree (``root``) and a small Klein app (``app``), each answering what
it saw of the request, for the embedding tests (tests/test_inprocess*.py) and the
benchmark (bench/run.py). Imported by the gateway as ``resource:tests.embedapp:root``.

``root``:
* ``/info/...`` -> JSON: method, uri, prepath, postpath, isSecure, getHost,
  getClientAddress, getRequestHostname, the request headers in order, the body's length;
* ``/later`` -> NOT_DONE_YET, then the same JSON from a reactor turn later;
* ``/stream/N`` -> N bytes in 16 KiB writes from a push producer (paused and resumed
  with the client's connection), chunked; ``/file/N`` the same from twisted.web's own
  ``static.File`` (a pull producer), with a Content-Length;
* ``/hold`` -> never answers; the client leaving is recorded in ``LEFT`` (``/left``
  reads it back, and each /stream producer's pauses);
* ``/boom`` -> raises; ``/boom-late`` -> writes headers, then its Deferred fails;
* ``/ok`` -> ``b"ok"`` (the benchmark's answer).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from klein import Klein
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web import resource, server, static
from zope.interface import implementer

reactor: Any = _reactor
LEFT: list[str] = []  # paths of requests whose client went away before the answer ended
PAUSES: list[int] = []  # per /stream answer: how often its producer was paused


def describe(request: Any) -> bytes:
    address = request.getClientAddress()
    host = request.getHost()
    content = request.content.read() if request.content is not None else b""
    return json.dumps({
        "method": request.method.decode(),
        "uri": request.uri.decode(),
        "prepath": [p.decode() for p in request.prepath],
        "postpath": [p.decode() for p in request.postpath],
        "secure": request.isSecure(),
        "host": [type(host).__name__, getattr(host, "port", None)],
        "client": getattr(address, "host", None),
        "hostname": request.getRequestHostname().decode(),
        "headers": [[n.decode(), v.decode()] for n, vs in request.requestHeaders.getAllRawHeaders()
                    for v in vs],
        "body_len": len(content),
        "clientproto": request.clientproto.decode(),
    }).encode()


class Info(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return describe(request)


class Later(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> int:
        def answer() -> None:
            request.setHeader(b"Content-Type", b"application/json")
            request.write(describe(request))
            request.finish()

        reactor.callLater(0.01, answer)
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class _Chunks:
    def __init__(self, request: Any, n: int) -> None:
        self.request, self.left, self.paused, self.stopped = request, n, False, False
        self.pauses = 0

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.left > 0:
            piece = min(self.left, 16384)
            self.left -= piece
            self.request.write(b"x" * piece)
        if self.left == 0 and not self.stopped:
            self.stopped = True
            PAUSES.append(self.pauses)
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.stopped = True


class Stream(resource.Resource):
    def getChild(self, name: bytes, request: Any) -> resource.Resource:
        return _StreamN(int(name))


class _StreamN(resource.Resource):
    isLeaf = True

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def render_GET(self, request: Any) -> int:
        producer = _Chunks(request, self.n)
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return server.NOT_DONE_YET


_FILES: list[str] = []  # the directory of /file's files, made on first use


class Files(resource.Resource):
    def getChild(self, name: bytes, request: Any) -> resource.Resource:
        if not _FILES:
            _FILES.append(tempfile.mkdtemp(prefix="embedapp-"))
        path = os.path.join(_FILES[0], str(int(name)))
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(b"y" * int(name))
        return static.File(path, defaultType="application/octet-stream")


class Hold(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> int:
        request.notifyFinish().addErrback(lambda _: LEFT.append(request.uri.decode()))
        return server.NOT_DONE_YET


class Left(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return json.dumps({"left": LEFT, "pauses": PAUSES}).encode()


class Boom(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise RuntimeError("the application failed (secret detail)")


class BoomLate(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"Content-Length", b"100")
        request.write(b"partial")

        def fail() -> None:
            request.processingFailed(Failure(RuntimeError("late failure")))

        reactor.callLater(0.01, fail)
        return server.NOT_DONE_YET


root = resource.Resource()
root.putChild(b"info", Info())
root.putChild(b"later", Later())
root.putChild(b"stream", Stream())
root.putChild(b"file", Files())
root.putChild(b"hold", Hold())
root.putChild(b"left", Left())
root.putChild(b"boom", Boom())
root.putChild(b"boom-late", BoomLate())
root.putChild(b"ok", static.Data(b"ok", "text/plain"))

app = Klein()


@app.route("/items/<item>", methods=["GET"])
def item(request: Any, item: str) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    seen = json.loads(describe(request))
    seen["item"] = item
    return json.dumps(seen).encode()


@app.route("/items", methods=["POST"])
def create(request: Any) -> Deferred[bytes]:
    body = request.content.read()
    d: Deferred[bytes] = Deferred()
    reactor.callLater(0.01, d.callback, json.dumps({"created": len(body)}).encode())
    request.setResponseCode(201)
    return d


@app.route("/ok")
def ok(request: Any) -> bytes:
    return b"ok"
