"""
Twisted's AMP as the server our AmpPeer calls (issue 15).

Run with Debian's /usr/bin/python3 (python3-twisted). Listens on 127.0.0.1 on a
port the OS picks, prints {"port": N} and then one JSON line per event. Plain
TCP: what is under test is AMP, and TLS is covered by the client tier.

Its commands use every AMP type our client has to read (String, Unicode,
Integer, Boolean, ListOf), declared errors (ours and a foreign one), a fatal
error, an undeclared failure (UNKNOWN, then Twisted closes the connection),
and calls back to our side with Twisted's own tags.

With --wrong every responder gives a deliberately wrong answer, so the test
can show that each of its checks fails on one.
"""

import json
import sys

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp

WRONG = "--wrong" in sys.argv


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class NoSuchUser(Exception):
    pass


class NoSuchConnection(Exception):
    pass


class Denied(Exception):
    pass


class VerifyError(Exception):
    pass


class Echo(amp.Command):
    commandName = b"echo"
    arguments = [(b"data", amp.String())]
    response = [(b"data", amp.String())]


class Types(amp.Command):
    commandName = b"types"
    arguments = [
        (b"n", amp.Integer()),
        (b"flag", amp.Boolean()),
        (b"text", amp.Unicode()),
        (b"items", amp.ListOf(amp.String())),
        (b"nums", amp.ListOf(amp.Integer())),
    ]
    response = [
        (b"sum", amp.Integer()),
        (b"negated", amp.Boolean()),
        (b"upper", amp.Unicode()),
        (b"reversed", amp.ListOf(amp.String())),
        (b"count", amp.Integer()),
        (b"words", amp.ListOf(amp.Unicode())),
    ]


class Big(amp.Command):
    commandName = b"big"
    arguments = [(b"items", amp.Integer())]
    response = [(b"blob", amp.String()), (b"list", amp.ListOf(amp.String()))]


class Declared(amp.Command):
    commandName = b"declared"
    arguments = [(b"which", amp.String())]
    errors = {NoSuchUser: b"NoSuchUser", NoSuchConnection: b"NoSuchConnection", Denied: b"Denied"}


class Fatal(amp.Command):
    commandName = b"fatal"
    fatalErrors = {VerifyError: b"VerifyError"}


class Crash(amp.Command):
    commandName = b"crash"


class Slow(amp.Command):
    commandName = b"slow"
    arguments = [(b"id", amp.Integer()), (b"delay_ms", amp.Integer())]
    response = [(b"id", amp.Integer())]


class CallMe(amp.Command):
    """The server calls our side back and reports what Twisted made of our answer."""

    commandName = b"call-me"
    arguments = [(b"what", amp.String())]
    response = [(b"result", amp.Unicode()), (b"tags", amp.ListOf(amp.String()))]


# Commands our side answers (the test registers these on its AmpPeer).
class Who(amp.Command):
    commandName = b"who"
    arguments = [(b"asker", amp.Unicode())]
    response = [(b"me", amp.Unicode()), (b"echo", amp.Unicode())]


class Deny(amp.Command):
    commandName = b"deny"
    errors = {Denied: b"Denied"}


class Boom(amp.Command):
    commandName = b"boom"


class NoSuch(amp.Command):
    commandName = b"no-such-command"


class Note(amp.Command):
    commandName = b"note"
    arguments = [(b"text", amp.Unicode())]
    requiresAnswer = False


class Notes(amp.Command):
    commandName = b"notes"
    response = [(b"count", amp.Integer())]


class Server(amp.AMP):
    def __init__(self):
        amp.AMP.__init__(self)
        self.asked = []  # the tags Twisted used for its calls to our side

    def _sendBoxCommand(self, command, box, requiresAnswer=True):
        d = amp.AMP._sendBoxCommand(self, command, box, requiresAnswer)
        if requiresAnswer:
            self.asked.append(box[b"_ask"])
        return d

    def locateResponder(self, name):
        found = amp.AMP.locateResponder(self, name)
        if found is None and WRONG:
            # The pre-issue-15 vertex behaviour: our own code instead of UNHANDLED.
            def wrong(box):
                return defer.fail(amp.RemoteAmpError(b"UnknownCommand", "unknown command"))

            return wrong
        return found

    def connectionLost(self, reason):
        emit({"event": "connection-lost"})
        amp.AMP.connectionLost(self, reason)

    @Echo.responder
    def echo(self, data):
        return {"data": data + b"!" if WRONG else data}

    @Types.responder
    def types(self, n, flag, text, items, nums):
        return {
            "sum": n + sum(nums) + (1 if WRONG else 0),
            "negated": flag if WRONG else not flag,
            "upper": text.upper() if not WRONG else text,
            "reversed": list(reversed(items)) if not WRONG else items,
            "count": len(items),
            "words": text.split(" "),
        }

    @Big.responder
    def big(self, items):
        # A 65,535-byte String, and a ListOf whose encoding fills a value to the byte.
        each = (65535 // items) - 2
        values = [bytes([0x41 + i % 26]) * each for i in range(items)]
        pad = 65535 - sum(2 + len(v) for v in values) - 2
        values.append(b"z" * pad)
        blob = bytes(range(256)) * 255 + bytes(range(255))
        return {"blob": blob[:-1] if WRONG else blob, "list": values[:-1] if WRONG else values}

    @Declared.responder
    def declared(self, which):
        errors = {b"NoSuchUser": NoSuchUser, b"NoSuchConnection": NoSuchConnection, b"Denied": Denied}
        if WRONG:
            which = b"Denied" if which != b"Denied" else b"NoSuchUser"
        raise errors[which]("declared " + which.decode())

    @Fatal.responder
    def fatal(self):
        if WRONG:
            raise amp.RemoteAmpError(b"VerifyError", "not fatal after all")
        raise VerifyError("fatal: the connection ends here")

    @Crash.responder
    def crash(self):
        if WRONG:
            return {}
        return 1 // 0

    @Slow.responder
    def slow(self, id, delay_ms):
        return task.deferLater(reactor, delay_ms / 1000.0, lambda: {"id": id + 1 if WRONG else id})

    @CallMe.responder
    @defer.inlineCallbacks
    def call_me(self, what):
        result = yield self.call_back(what)
        tags = list(self.asked)
        return {"result": result + ("!" if WRONG else ""), "tags": tags}

    @defer.inlineCallbacks
    def call_back(self, what):
        try:
            if what == b"who":
                first = yield self.callRemote(Who, asker="twisted")
                second = yield self.callRemote(Who, asker="twisted again")
                return "%s/%s/%s" % (first["me"], first["echo"], second["echo"])
            if what == b"unknown":
                yield self.callRemote(NoSuch)
            elif what == b"deny":
                yield self.callRemote(Deny)
            elif what == b"boom":
                yield self.callRemote(Boom)
            elif what == b"note":
                self.callRemote(Note, text="no answer wanted")
                got = yield self.callRemote(Notes)
                return "notes=%d" % got["count"]
            return "answered"
        except Exception as err:
            code = getattr(err, "errorCode", b"")
            return "%s:%s" % (type(err).__name__, code.decode() if isinstance(code, bytes) else "")


def main():
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    d = endpoint.listen(Factory.forProtocol(Server))
    d.addCallback(lambda port: emit({"port": port.getHost().port}))
    reactor.run()


if __name__ == "__main__":
    main()
