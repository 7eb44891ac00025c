#!/usr/bin/env python3
"""Drives a five-plugin pipeline with Python's smtplib and prints, as JSON,
what the server answered in each scenario."""
import json
import smtplib
import sys

port, deny_port = int(sys.argv[1]), int(sys.argv[2])
out = {}


def msg(subject, extra=""):
    return ("Subject: %s\r\nFrom: a@example.org\r\nTo: postmaster@localhost\r\n%s\r\nbody line\r\n" % (subject, extra)).encode()


def data_reply(s, sender, rcpts, body):
    code, resp = s.mail(sender, ["SIZE=%d" % len(body)])
    if code != 250:
        return [code, resp.decode()]
    for r in rcpts:
        code, resp = s.rcpt(r)
        if code != 250:
            s.rset()
            return [code, resp.decode()]
    code, resp = s.data(body)
    return [code, resp.decode()]


with smtplib.SMTP("127.0.0.1", port, local_hostname="good.example", timeout=30) as s:
    s.ehlo()
    out["good"] = data_reply(s, "a@example.org", ["postmaster@localhost", "u@routed.test"],
                             msg("[tag me] hello", "X-Internal: secret\r\n"))
    out["blocked_sender"] = list(s.mail("spam@example.org"))
    out["blocked_sender"][1] = out["blocked_sender"][1].decode()
    s.rset()
    s.mail("a@example.org")
    code, resp = s.rcpt("later@localhost")
    out["greylisted_rcpt"] = [code, resp.decode()]
    s.rset()
    out["quarantine"] = data_reply(s, "a@example.org", ["postmaster@localhost"], msg("please QUARANTINE me"))
    out["discard"] = data_reply(s, "a@example.org", ["postmaster@localhost"], msg("please DISCARD me"))
    s.user, s.password = "blocked", "pw"
    code, resp = s.auth("PLAIN", s.auth_plain, initial_response_ok=True) if False else (0, b"")
    try:
        s.login("blocked", "pw")
        out["blocked_auth"] = [235, ""]
    except smtplib.SMTPAuthenticationError as e:
        out["blocked_auth"] = [e.smtp_code, e.smtp_error.decode()]

with smtplib.SMTP("127.0.0.1", port, local_hostname="bad.example", timeout=30) as s:
    code, resp = s.ehlo()
    out["bad_helo"] = [code, resp.decode()]

try:
    smtplib.SMTP("127.0.0.1", deny_port, local_hostname="x.example", timeout=30)
    out["denied_connect"] = [220, ""]
except smtplib.SMTPConnectError as e:
    out["denied_connect"] = [e.smtp_code, e.smtp_error.decode()]

json.dump(out, sys.stdout)
