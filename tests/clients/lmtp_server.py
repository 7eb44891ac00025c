#!/usr/bin/python3
"""An LMTP server (aiosmtpd's LMTP class) for delivery tests.

Run with Debian's /usr/bin/python3 (python3-aiosmtpd). Usage:
    lmtp_server.py PORT OUTDIR
Recipients whose local part starts with "reject" are refused at RCPT with
550 5.1.1; those starting with "quota" are accepted at RCPT but get
452 4.2.2 after DATA (a per-recipient reply, RFC 2033); everyone else is
delivered into OUTDIR/<recipient>.<n>. Prints "ready" when listening."""
import asyncio
import itertools
import os
import signal
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP

counter = itertools.count()


class Handler:
    def __init__(self, outdir):
        self.outdir = outdir

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("reject"):
            return "550 5.1.1 <%s>: no such mailbox" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        replies = []
        for rcpt in envelope.rcpt_tos:
            if rcpt.split("@")[0].startswith("quota"):
                replies.append("452 4.2.2 <%s>: mailbox full" % rcpt)
                continue
            path = os.path.join(self.outdir, "%s.%d" % (rcpt, next(counter)))
            with open(path, "wb") as f:
                f.write(envelope.original_content or envelope.content)
            replies.append("250 2.0.0 <%s> delivered" % rcpt)
        return "\r\n".join(replies)


class LMTPController(Controller):
    def factory(self):
        return LMTP(self.handler)


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    ctl = LMTPController(Handler(outdir), hostname="127.0.0.1", port=port)
    ctl.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    ctl.stop()


if __name__ == "__main__":
    main()
