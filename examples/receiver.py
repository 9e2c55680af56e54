#!/usr/bin/env python3
"""Receives the proxy's callbacks and checks both signatures (docs/proxy.md#quickstart).

    python3 examples/receiver.py PORT SIGNING_KEY_FILE WHSEC_FILE

Python 3.9+, standard library only. Listens on 127.0.0.1:PORT, prints each notification and
whether each signature verified; answers 200 when both do, 401 otherwise (the proxy retries).
"""
import base64, hashlib, hmac, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer


def tag(key: bytes, message: bytes) -> str:  # standard base64, padded, of HMAC-SHA256
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())  # constant-time


def elements_ok(key: bytes, headers, body: bytes) -> bool:
    # Elements-Webhook-Signature: sha256=tag(key, body): the key is the signing key's bytes as
    # they are (the key file without its trailing newline), the message the exact body bytes.
    return same(headers.get("Elements-Webhook-Signature", ""), "sha256=" + tag(key, body))


def standard_ok(secrets: list, headers, body: bytes, now=None) -> bool:
    # Standard Webhooks: webhook-signature is space-separated "v1,<tag>" entries (one per secret
    # the sender holds), each tag(key, "{webhook-id}.{webhook-timestamp}.{body}"). The key is the
    # BASE64-DECODED text after "whsec_" (whsec_C2FV... -> bytes 0b 61 55 ...), not the text.
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not stamp.isdecimal() or abs((time.time() if now is None else now) - int(stamp)) > 300:
        return False  # no timestamp, or more than 5 minutes off: refused (a replay?)
    signed = f"{msg_id}.{stamp}.".encode() + body
    keys = [base64.b64decode(s.removeprefix("whsec_"), validate=True) for s in secrets]
    given = headers.get("webhook-signature", "").split(" ")
    return any(same(entry, "v1," + tag(key, signed)) for entry in given for key in keys)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        checks = {"Elements": elements_ok(KEY, self.headers, body),
                  "Standard Webhooks": standard_ok(SECRETS, self.headers, body)}
        print("notification:", body.decode("utf-8", "replace"))
        for scheme, ok in checks.items():
            print(scheme, "signature", "verified" if ok else "FAILED")
        self.send_response(200 if all(checks.values()) else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # no access log: the lines above say it all
        pass


if __name__ == "__main__":
    port, key_file, whsec_file = sys.argv[1:4]
    KEY = open(key_file, "rb").read().rstrip(b"\r\n")  # as the proxy reads --signing-key-file
    SECRETS = [line.strip() for line in open(whsec_file) if line.strip()]  # one whsec_ a line
    sys.stdout.reconfigure(line_buffering=True)
    HTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
