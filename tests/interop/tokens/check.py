"""PyJWT interop for nimbus signed tokens (crates/auth; docs/tokens.md).

Generates RSA, EC P-256 and Ed25519 keys with `cryptography`, writes a JWKS file, mints tokens
with PyJWT (valid ones and ones every rule must refuse), feeds them to the `verify_token`
example of nimbus-auth on stdin and checks each verdict it prints.

    python check.py --bin PATH/TO/verify_token --workdir DIR

Prints one line per case and `tokens: N passed, N failed`; exits 1 on any failure.
"""

import argparse
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import warnings

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET_1 = "interop-secret-one-0123456789abcdef"  # kid hs-1
SECRET_2 = "interop-secret-two-0123456789abcdef"  # no kid
WRONG_SECRET = "not-the-configured-secret-0123456789"
ROOMS = ["doc:notes/a", "doc:public/x", "doc:secret", "cloud:12345", "gateway:lobby", "api:x"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(alg_cls, public_key, kid: str, alg: str) -> dict:
    key = json.loads(alg_cls.to_jwk(public_key))
    key.update({"kid": kid, "use": "sig", "alg": alg})
    return key


# The hs512 case signs with a 35-byte key on purpose (it must be refused for its alg).
warnings.filterwarnings("ignore", message="The HMAC key is")


def run(cmd: list, cases: list) -> tuple:
    """Feed the cases' tokens to verify_token and compare; returns (passed, failed)."""
    print("$", " ".join(a if SECRET_1 not in a and a != SECRET_2 else "<secret>" for a in cmd))
    stdin = "".join(tok + "\n" for _, tok, _ in cases)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        print(f"FAIL verify_token exited {proc.returncode}: {proc.stderr.strip()}")
        return 0, len(cases)
    lines = proc.stdout.splitlines()
    if len(lines) != len(cases):
        print(f"FAIL verify_token printed {len(lines)} lines for {len(cases)} tokens")
        return 0, len(cases)
    passed = failed = 0
    for (name, _, want), line in zip(cases, lines):
        got = json.loads(line)
        if isinstance(want, str):
            ok = got.get("ok") is False and got.get("reason") == want
            expect = f"refused {want}"
        else:
            ok = got.get("ok") is True and all(
                got.get(k) == v
                if k != "access"
                else all(got["access"].get(r) == m for r, m in v.items())
                for k, v in want.items()
            )
            expect = f"accepted {want}"
        if ok:
            passed += 1
            print(f"PASS {name}")
        else:
            failed += 1
            print(f"FAIL {name}: expected {expect}, got {line}")
    return passed, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_stranger = ed25519.Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            jwk(RSAAlgorithm, rsa_key.public_key(), "rsa-1", "RS256"),
            jwk(ECAlgorithm, ec_key.public_key(), "ec-1", "ES256"),
            jwk(OKPAlgorithm, ed_key.public_key(), "ed-1", "EdDSA"),
        ]
    }
    jwks_path = f"{args.workdir}/jwks.json"
    with open(jwks_path, "w") as f:
        json.dump(jwks, f)

    now = int(time.time())
    claims = {
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        "nimbus": {
            "doc": {"rw": ["notes/*"], "ro": ["public/*"]},
            "cloud": {"rw": ["12345"]},
            "gateway": {"ro": ["*"], "intents": 513},
            "api": {"rw": ["*"]},
        },
    }

    def c(**changes):
        out = dict(claims)
        for k, v in changes.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return out

    def enc(payload, key, alg, kid=None):
        headers = {"kid": kid} if kid else None
        return jwt.encode(payload, key, algorithm=alg, headers=headers)

    def hs_raw(header: dict, payload: dict, secret: bytes) -> str:
        """HS256 by hand, for headers PyJWT refuses to produce (alg confusion)."""
        msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
        sig = hmac.new(secret, msg.encode(), hashlib.sha256).digest()
        return msg + "." + b64(sig)

    valid_hs = enc(claims, SECRET_1, "HS256", "hs-1")
    valid_rs = enc(claims, rsa_key, "RS256", "rsa-1")
    h, _, s = valid_rs.split(".")
    tampered = h + "." + b64(json.dumps(c(sub="root")).encode()) + "." + s
    rsa_pub_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    all_rooms = {"doc:notes/a": "rw", "doc:public/x": "ro", "doc:secret": None,
                 "cloud:12345": "rw", "gateway:lobby": "ro", "api:x": "rw"}

    # (name, token, expected): expected is a reason string, or a dict the verdict must contain
    cases = [
        ("hs256-with-kid", valid_hs,
         {"sub": "alice", "kid": "hs-1", "exp": now + 3600, "intents": 513, "access": all_rooms}),
        ("hs256-without-kid", enc(claims, SECRET_2, "HS256"), {"sub": "alice", "kid": None}),
        ("rs256-with-kid", valid_rs, {"sub": "alice", "kid": "rsa-1", "access": all_rooms}),
        ("rs256-without-kid", enc(claims, rsa_key, "RS256"), {"sub": "alice", "kid": "rsa-1"}),
        ("es256-with-kid", enc(claims, ec_key, "ES256", "ec-1"), {"sub": "alice", "kid": "ec-1"}),
        ("eddsa-with-kid", enc(claims, ed_key, "EdDSA", "ed-1"), {"sub": "alice", "kid": "ed-1"}),
        ("eddsa-without-kid", enc(claims, ed_key, "EdDSA"), {"sub": "alice", "kid": "ed-1"}),
        ("read-only-grant", enc(c(nimbus={"doc": {"ro": ["*"]}}), SECRET_1, "HS256", "hs-1"),
         {"access": {"doc:notes/a": "ro", "doc:secret": "ro", "cloud:12345": None}, "intents": 0}),
        ("expired-within-leeway", enc(c(exp=now - 10), SECRET_1, "HS256", "hs-1"), {"sub": "alice"}),
        ("expired", enc(c(exp=now - 120), SECRET_1, "HS256", "hs-1"), "token_expired"),
        ("expired-rs256", enc(c(exp=now - 120), rsa_key, "RS256", "rsa-1"), "token_expired"),
        ("not-yet-valid", enc(c(nbf=now + 300), ed_key, "EdDSA", "ed-1"), "token_not_yet_valid"),
        ("wrong-secret", enc(claims, WRONG_SECRET, "HS256", "hs-1"), "bad_signature"),
        ("wrong-secret-without-kid", enc(claims, WRONG_SECRET, "HS256"), "bad_signature"),
        ("wrong-rsa-key", enc(claims, rsa_stranger, "RS256", "rsa-1"), "bad_signature"),
        ("wrong-ed25519-key", enc(claims, ed_stranger, "EdDSA", "ed-1"), "bad_signature"),
        ("tampered-payload", tampered, "bad_signature"),
        ("wrong-kid", enc(claims, SECRET_1, "HS256", "hs-9"), "unknown_key"),
        ("wrong-kid-rs256", enc(claims, rsa_key, "RS256", "rsa-old"), "unknown_key"),
        ("alg-none", jwt.encode(claims, None, algorithm="none"), "unsupported_alg"),
        ("hs512", enc(claims, SECRET_1, "HS512", "hs-1"), "unsupported_alg"),
        ("alg-confusion-hs256-with-rsa-public-key",
         hs_raw({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, rsa_pub_pem),
         "bad_signature"),
        ("hs256-header-on-rs256-signature",
         b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()) + "." + valid_rs.split(".", 1)[1],
         "bad_signature"),
        ("missing-exp", enc(c(exp=None), SECRET_1, "HS256", "hs-1"), "bad_claims"),
        ("missing-sub", enc(c(sub=None), SECRET_1, "HS256", "hs-1"), "bad_claims"),
        ("unknown-grant", enc(c(nimbus={"files": {"rw": ["*"]}}), SECRET_1, "HS256", "hs-1"),
         "bad_claims"),
        ("bad-pattern", enc(c(nimbus={"doc": {"rw": ["a*b"]}}), SECRET_1, "HS256", "hs-1"),
         "bad_claims"),
        ("aud-without-configured-audience", enc(c(aud="elsewhere"), SECRET_1, "HS256", "hs-1"),
         "wrong_audience"),
        ("too-long", enc(c(pad="x" * 9000), SECRET_1, "HS256", "hs-1"), "token_too_long"),
        ("garbage", "not-a-token", "malformed_token"),
    ]

    cmd = [args.bin, "--secret", f"hs-1:{SECRET_1}", "--secret", SECRET_2,
           "--jwks", jwks_path, "--now", str(now)]
    for r in ROOMS:
        cmd += ["--room", r]
    passed, failed = run(cmd, cases)

    # iss and aud, when the server is configured with them
    iss, aud = "https://auth.example", "nimbus"
    strict = [
        ("iss-and-aud-match", enc(c(iss=iss, aud=aud), SECRET_1, "HS256", "hs-1"), {"sub": "alice"}),
        ("aud-list-holds-ours", enc(c(iss=iss, aud=["other", aud]), rsa_key, "RS256", "rsa-1"),
         {"sub": "alice"}),
        ("wrong-issuer", enc(c(iss="https://evil.example", aud=aud), SECRET_1, "HS256", "hs-1"),
         "wrong_issuer"),
        ("missing-issuer", enc(c(aud=aud), SECRET_1, "HS256", "hs-1"), "wrong_issuer"),
        ("wrong-audience", enc(c(iss=iss, aud="other"), SECRET_1, "HS256", "hs-1"), "wrong_audience"),
        ("missing-audience", enc(c(iss=iss), SECRET_1, "HS256", "hs-1"), "wrong_audience"),
    ]
    p2, f2 = run(cmd + ["--issuer", iss, "--audience", aud], strict)
    passed, failed = passed + p2, failed + f2
    print(f"tokens: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
