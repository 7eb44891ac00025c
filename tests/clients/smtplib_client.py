#!/usr/bin/env python3
"""A real-client check with Python's smtplib: EHLO, STARTTLS (verifying the
server certificate against --cafile), EHLO again, AUTH PLAIN, and a send.
With --bdat, the message goes as BDAT chunks over smtplib's connection.
Prints one line per accepted message: "queued <queue-id>"."""
import argparse
import smtplib
import ssl
import sys
from email.message import EmailMessage


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--sender", default="alice@example.org")
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--bdat", action="store_true")
    a = p.parse_args()

    ctx = ssl.create_default_context(cafile=a.cafile)
    with smtplib.SMTP("127.0.0.1", a.port, local_hostname="client.test", timeout=30) as s:
        code, _ = s.ehlo()
        assert code == 250, code
        assert s.has_extn("starttls"), "STARTTLS not offered"
        assert not s.has_extn("auth"), "AUTH offered before TLS"
        s.starttls(context=ctx)
        code, _ = s.ehlo()
        assert code == 250, code
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper(), s.esmtp_features
        if a.user:
            s.user, s.password = a.user, a.password
            code, resp = s.auth("PLAIN", s.auth_plain)
            assert code == 235, (code, resp)
        for i in range(a.count):
            msg = EmailMessage()
            msg["From"] = a.sender
            msg["To"] = ", ".join(a.to)
            msg["Subject"] = f"smtplib test {i}"
            msg["Message-ID"] = f"<smtplib-{i}@client.test>"
            msg.set_content(f"Hello from smtplib, message {i}.\n.leading dot line\n")
            data = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            code, resp = s.mail(a.sender, ["BODY=8BITMIME"] if not a.bdat else [])
            assert code == 250, (code, resp)
            for t in a.to:
                code, resp = s.rcpt(t)
                assert code == 250, (code, resp)
            if a.bdat:
                assert s.has_extn("chunking"), "CHUNKING not offered"
                half = len(data) // 2
                s.send(b"BDAT %d\r\n" % half + data[:half])
                code, resp = s.getreply()
                assert code == 250, (code, resp)
                s.send(b"BDAT %d LAST\r\n" % (len(data) - half) + data[half:])
                code, resp = s.getreply()
            else:
                code, resp = s.data(data)
            assert code == 250, (code, resp)
            print("queued", resp.decode().split()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
