"""
Twisted's AMP as a client of `vertex server` (issue 15).

Run with Debian's /usr/bin/python3 (python3-twisted). Reads a plan (JSON) from
the file named on the command line, runs it with Twisted's own AMP over TLS 1.3
with ALPN q2q/2, and prints one JSON object per line on stdout:

  {"session": name, "alpn": ..., "tls": ...}        once a session is connected
  {"case": id, "outcome": "answer", "fields": {...}, "raw": {...}, ...}
  {"case": id, "outcome": "error", "exception": class name, "code": ..., ...}
  {"event": "responder", "command": ..., "args": {...}}   a command the server sent us
  {"done": true}

The plan lists sessions; each session is one TLS connection (with or without
a client certificate) that runs its cases in order. A case declares its
Command the way a Twisted programmer would (arguments, response, errors), so
what is printed is what Twisted itself makes of our answers. A pipelined case
sends all its calls before reading any answer.

With "mutate": true in a case, the answer box for it is altered before
Twisted's dispatcher sees it (a deliberately wrong answer), so the test can
show that its checks fail on a wrong answer. Nothing here checks anything:
the TypeScript side does.
"""

import json
import sys

from OpenSSL import crypto
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

ANSWER, ERROR, ASK = b"_answer", b"_error", b"_ask"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- values


def argument(spec, optional=False):
    """An AMP Argument for a type name of the plan: String, Unicode, Integer, Boolean, ListOf:T."""
    if spec.startswith("ListOf:"):
        return amp.ListOf(argument(spec[len("ListOf:"):]), optional=optional)
    kinds = {"String": amp.String, "Unicode": amp.Unicode, "Integer": amp.Integer, "Boolean": amp.Boolean}
    return kinds[spec](optional=optional)


def value_in(spec, v):
    """A plan value as the Python object the Argument type wants."""
    if spec.startswith("ListOf:"):
        return [value_in(spec[len("ListOf:"):], x) for x in v]
    if isinstance(v, dict) and "repeat" in v:
        text, count = v["repeat"]
        v = text * count
    if isinstance(v, dict) and "text" in v:
        v = v["text"]
    if spec == "String":
        if isinstance(v, dict) and "hex" in v:
            return bytes.fromhex(v["hex"])
        return v.encode("utf-8")
    return v


def value_out(v):
    """A Python value as JSON: text where it is UTF-8, else hex."""
    if isinstance(v, bytes):
        try:
            return {"text": v.decode("utf-8")}
        except UnicodeDecodeError:
            return {"hex": v.hex()}
    if isinstance(v, str):
        return {"text": v}
    if isinstance(v, list):
        return [value_out(x) for x in v]
    return v


def raw_box(box):
    return {k.decode("utf-8", "replace"): value_out(v) for k, v in box.items()}


# ---------------------------------------------------------------- commands

_exceptions = {}


def exception_for(code):
    """One exception class per declared error code, named after the code."""
    if code not in _exceptions:
        _exceptions[code] = type(str(code), (Exception,), {})
    return _exceptions[code]


def command_for(spec):
    """A Command subclass, declared as a Twisted programmer would declare ours."""
    attrs = {
        "commandName": spec["command"].encode("utf-8"),
        "arguments": [(a["key"].encode("utf-8"), argument(a["type"], a.get("optional", False))) for a in spec.get("args", [])],
        "response": [(r["key"].encode("utf-8"), argument(r["type"], r.get("optional", False))) for r in spec.get("response", [])],
        "errors": {exception_for(code): code.encode("utf-8") for code in spec.get("declare", [])},
        "requiresAnswer": spec.get("requiresAnswer", True),
    }
    return type("Command_" + spec["command"].replace("-", "_"), (amp.Command,), attrs)


def kwargs_for(spec):
    return {
        amp._wireNameToPythonIdentifier(a["key"].encode("utf-8")): value_in(a["type"], a["value"])
        for a in spec.get("args", [])
    }


def describe_failure(failure):
    """What Twisted raised, as the test compares it."""
    err = failure.value
    out = {"outcome": "error", "exception": type(err).__name__}
    if isinstance(err, amp.RemoteAmpError):  # UnknownRemoteError and undeclared codes
        out["code"] = err.errorCode.decode("utf-8", "replace")
        out["description"] = err.description
    elif isinstance(err, amp.UnhandledCommand):
        code, description = err.args
        out["code"] = code.decode("utf-8", "replace")
        out["description"] = description
    elif type(err) in _exceptions.values():  # a declared code: Twisted raised our class
        out["code"] = type(err).__name__
        out["description"] = err.args[0] if err.args else ""
    else:
        out["description"] = str(err)
    return out


# ---------------------------------------------------------------- mutations


def mutate(box, mutation):
    """A deliberately wrong answer, made from the right one."""
    kind = mutation["kind"]
    tag = box.get(ANSWER, box.get(ERROR))
    if kind == "code":
        if ERROR in box:
            box[b"_error_code"] = mutation["to"].encode("utf-8")
        else:
            box.clear()
            box.update({ERROR: tag, b"_error_code": mutation["to"].encode("utf-8"), b"_error_description": b"injected"})
    elif kind == "to-answer":
        box.clear()
        box[ANSWER] = tag
        for key, value in mutation.get("fields", {}).items():
            box[key.encode("utf-8")] = value.encode("utf-8")
    elif kind == "value":
        key = mutation["key"].encode("utf-8")
        box[key] = box.get(key, b"") + b"!"
    elif kind == "drop":
        box.pop(mutation["key"].encode("utf-8"), None)
    else:
        raise ValueError("unknown mutation " + kind)


@implementer(IHandshakeListener)
class Client(amp.AMP):
    """Twisted's AMP, with a tap on the boxes it receives (and the mutation hook)."""

    def __init__(self, responders):
        amp.AMP.__init__(self)
        self.handshake_done = defer.Deferred()
        self.received = {}  # tag -> raw box as received
        self.order = []  # tags in the order their answers arrived
        self.mutations = {}  # tag -> mutation
        self.swap = None  # (tag, tag): exchange the two answers' tags
        self.held = None
        self.lost = defer.Deferred()
        self.responders = {}
        for spec in responders:
            cmd = command_for(spec)
            answer = {k: v.encode("utf-8") for k, v in spec.get("answer", {}).items()}

            def respond(_cmd=cmd, _answer=answer, _name=spec["command"], **kw):
                emit({"event": "responder", "command": _name, "args": {k: value_out(v) for k, v in kw.items()}})
                return dict(_answer)

            self.responders[cmd.commandName] = self._wrapWithSerialization(respond, cmd)

    def locateResponder(self, name):
        return self.responders.get(name) or amp.AMP.locateResponder(self, name)

    def ampBoxReceived(self, box):
        tag = box.get(ANSWER, box.get(ERROR))
        if tag is not None:
            self.received[tag] = raw_box(box)
            self.order.append(tag.decode("utf-8", "replace"))
            if tag in self.mutations:
                mutate(box, self.mutations.pop(tag))
            if self.swap and tag in self.swap:
                # Hold the first of the pair, then deliver both with their tags exchanged.
                if self.held is None:
                    self.held = box
                    return
                first, self.held, self.swap = self.held, None, None
                key_a = ANSWER if ANSWER in first else ERROR
                key_b = ANSWER if ANSWER in box else ERROR
                first[key_a], box[key_b] = box[key_b], first[key_a]
                amp.AMP.ampBoxReceived(self, first)
        amp.AMP.ampBoxReceived(self, box)

    def handshakeCompleted(self):
        self.handshake_done.callback(None)

    def connectionLost(self, reason):
        if not self.handshake_done.called:
            self.handshake_done.errback(reason)
        amp.AMP.connectionLost(self, reason)
        if not self.lost.called:
            self.lost.callback(None)

    @property
    def next_tag(self):
        return b"%x" % (self._counter + 1,)


# ---------------------------------------------------------------- running


@defer.inlineCallbacks
def call(proto, spec, mutation=None):
    """One callRemote; returns the printed outcome (without the case id)."""
    cmd = command_for(spec)
    tag = proto.next_tag
    if mutation is not None:
        proto.mutations[tag] = mutation
    out = {"tag": tag.decode()}
    try:
        d = proto.callRemote(cmd, **kwargs_for(spec))
        if d is None:
            out["outcome"] = "sent"
            return out
        result = yield d
        out["outcome"] = "answer"
        out["fields"] = {k: value_out(v) for k, v in result.items()}
    except Exception:
        out.update(describe_failure(Failure()))
    raw = proto.received.get(tag)
    if raw is not None:
        out["raw"] = raw
    return out


@defer.inlineCallbacks
def probe(proto):
    """Is the connection still open? A ping answers, or the call fails as the connection is gone."""
    if proto.lost.called:
        return False
    spec = {"command": "ping", "declare": []}
    try:
        yield proto.callRemote(command_for(spec))
        return True
    except (amp.RemoteAmpError, amp.UnhandledCommand):
        return True  # answered, with an error: still open
    except Exception:
        return False


def tls_options(plan, identity):
    # The server presents its domain CA itself, whose key usage (keyCertSign, cRLSign)
    # OpenSSL's chain check refuses for a TLS server ("unsuitable certificate purpose").
    # Our agents pin that certificate instead of verifying a chain, and so does this
    # client: see pinned() after the handshake.
    kw = {
        "verify": False,
        "raiseMinimumTo": ssl.TLSVersion.TLSv1_3,
        "acceptableProtocols": [b"q2q/2"],
    }
    if identity:
        files = plan["identities"][identity]
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, open(files["key"], "rb").read())
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, open(files["cert"], "rb").read())
        kw["privateKey"] = key
        kw["certificate"] = cert
    return ssl.CertificateOptions(**kw)


def pinned(plan, transport):
    """True when the server presented exactly the domain CA the plan names (SHA-256)."""
    want = crypto.load_certificate(crypto.FILETYPE_PEM, open(plan["ca"], "rb").read()).digest("sha256")
    got = transport.getHandle().get_peer_certificate()
    return got is not None and got.digest("sha256") == want


@defer.inlineCallbacks
def run_session(plan, session):
    responders = session.get("responders", [])
    endpoint = SSL4ClientEndpoint(reactor, plan["host"], plan["port"], tls_options(plan, session.get("identity")))
    proto = yield endpoint.connect(Factory.forProtocol(lambda: Client(responders)))
    transport = proto.transport
    yield proto.handshake_done
    emit({
        "session": session["name"],
        "alpn": (transport.negotiatedProtocol or b"").decode(),
        "tls": transport.getHandle().get_protocol_version_name(),
        "pinned": pinned(plan, transport),
    })
    for case in session["cases"]:
        mutation = case.get("mutation") if plan.get("mutate") else None
        if "pipeline" in case:
            calls = case["pipeline"]
            if mutation is not None and mutation["kind"] == "swap":
                first = proto._counter + 1
                proto.swap = (b"%x" % (first + mutation["a"]), b"%x" % (first + mutation["b"]))
            results = yield defer.gatherResults([call(proto, c) for c in calls])
            emit({"case": case["id"], "outcome": "pipeline", "results": results, "order": list(proto.order[-len(calls):])})
        else:
            out = yield call(proto, case, mutation)
            if case.get("probe"):
                out["open_after"] = yield probe(proto)
            out["case"] = case["id"]
            emit(out)
    return proto


@defer.inlineCallbacks
def main(plan):
    kept = []
    try:
        for session in plan["sessions"]:
            proto = yield run_session(plan, session)
            if session.get("keep"):
                kept.append(proto)
            else:
                proto.transport.loseConnection()
                yield proto.lost
        emit({"done": True})
    except Exception:
        emit({"fatal": Failure().getTraceback()})
    finally:
        for proto in kept:
            proto.transport.loseConnection()
        reactor.callLater(0, reactor.stop)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        PLAN = json.load(f)
    reactor.callWhenRunning(main, PLAN)
    reactor.run()
