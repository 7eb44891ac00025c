#!/usr/bin/env python3
"""Scripted submission attempts with smtplib: each attempt opens a session
(STARTTLS verified against --cafile, AUTH PLAIN when a user is given),
sends one message and reports where it ended. Prints a JSON list with one
object per attempt: {"stage": "queued"|"mail"|"rcpt"|"data"|"auth",
"code": int, "text": str}.

usage: submission_client.py --port P --cafile CA ATTEMPTS_JSON
ATTEMPTS_JSON: [{"user": "ann", "password": "pw", "mail_from": "...",
                 "header_from": "...", "to": ["..."]}, ...]"""
import argparse
import json
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid


def attempt(port, ctx, a):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="laptop.client.test", timeout=30) as s:
        s.ehlo()
        s.starttls(context=ctx)
        s.ehlo()
        if a.get("user"):
            try:
                s.login(a["user"], a["password"])
            except smtplib.SMTPAuthenticationError as e:
                return {"stage": "auth", "code": e.smtp_code, "text": e.smtp_error.decode()}
        msg = EmailMessage()
        msg["From"] = a.get("header_from", a["mail_from"])
        msg["To"] = ", ".join(a["to"])
        msg["Subject"] = a.get("subject", "submission test")
        msg["Date"] = formatdate()
        msg["Message-ID"] = make_msgid(domain="client.test")
        msg.set_content(a.get("body", "Hello from the submission test.\n"))
        data = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        code, resp = s.mail(a["mail_from"])
        if code != 250:
            return {"stage": "mail", "code": code, "text": resp.decode()}
        for t in a["to"]:
            code, resp = s.rcpt(t)
            if code not in (250, 251):
                return {"stage": "rcpt", "code": code, "text": resp.decode()}
        code, resp = s.data(data)
        if code != 250:
            return {"stage": "data", "code": code, "text": resp.decode()}
        return {"stage": "queued", "code": code, "text": resp.decode()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("attempts")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    out = [attempt(a.port, ctx, x) for x in json.loads(a.attempts)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
