#!/usr/bin/env python3
"""Reads a Maildir with Python's mailbox.Maildir and prints, as JSON, what
each message holds: headers of interest, its MIME structure, its text, and
for a DSN (multipart/report) the delivery-status fields."""
import json
import mailbox
import sys


def describe(msg):
    out = {
        "subject": msg["Subject"],
        "from": msg["From"],
        "to": msg["To"],
        "return_path": msg["Return-Path"],
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [],
        "status": [],
    }
    if msg.is_multipart():
        for part in msg.get_payload():
            ctype = part.get_content_type()
            out["parts"].append(ctype)
            if ctype == "message/delivery-status":
                # The email package parses each field group into its own message.
                for group in part.get_payload():
                    out["status"].append({k: v for k, v in group.items()})
            elif ctype == "text/rfc822-headers":
                out["returned_headers"] = part.get_payload()
            elif ctype == "message/rfc822":
                inner = part.get_payload()[0]
                out["returned_subject"] = inner["Subject"]
    else:
        out["body"] = msg.get_payload(decode=True).decode("utf-8", "replace")
    return out


def main():
    box = mailbox.Maildir(sys.argv[1], create=False)
    msgs = [describe(m) for _, m in sorted(box.items())]
    json.dump(msgs, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
