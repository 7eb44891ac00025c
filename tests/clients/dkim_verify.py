#!/usr/bin/python3
"""Verifies every DKIM-Signature of a message with dkimpy (python3-dkim),
an implementation independent of Weir's. DNS answers come from a JSON file
mapping TXT names to record text, so no network is needed.

usage: dkim_verify.py MESSAGE_FILE RECORDS_JSON
Prints one line per signature ("pass d=... s=..." or "fail ...") and exits
0 only when there is at least one signature and all of them verify."""
import json
import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    records = json.load(open(sys.argv[2]))

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip("."))
        return value.encode() if value is not None else None

    verifier = dkim.DKIM(message)
    sigs = [v for (k, v) in verifier.headers if k.lower() == b"dkim-signature"]
    if not sigs:
        print("no DKIM-Signature")
        return 1
    ok = True
    for idx in range(len(sigs)):
        good = verifier.verify(idx=idx, dnsfunc=dnsfunc)
        tags = dkim.util.parse_tag_value(sigs[idx].replace(b"\r\n", b""))
        line = "pass" if good else "fail"
        print(f"{line} d={tags.get(b'd', b'').decode()} s={tags.get(b's', b'').decode()} a={tags.get(b'a', b'').decode()}")
        ok = ok and good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
