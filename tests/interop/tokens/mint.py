"""Keys and tokens for the server-side token checks of tests/interop/doc.sh, made with PyJWT and
`cryptography` from PyPI (the third-party side of must-show 1 of the identity issue).

    python mint.py keys DIR                 # DIR/{ed-1,ed-2,rsa-1}.pem + DIR/jwks-{1,2}.json
    python mint.py token --alg EdDSA --key DIR/ed-1.pem --kid ed-1 --sub alice \
        --grant doc:rw:notes/* --grant doc:ro:public/* [--exp 600] [--nbf 0]
    python mint.py token --alg HS256 --secret S --kid hs-1 ...

jwks-1.json holds ed-1 and rsa-1; jwks-2.json holds ed-2 and rsa-1 (ed-1 rotated out).
A token is printed on stdout.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm


def public_jwk(alg_cls, private, kid: str, alg: str) -> dict:
    key = json.loads(alg_cls.to_jwk(private.public_key()))
    key.update({"kid": kid, "use": "sig", "alg": alg})
    return key


def keys(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "ed-1": ed25519.Ed25519PrivateKey.generate(),
        "ed-2": ed25519.Ed25519PrivateKey.generate(),
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    for kid, key in made.items():
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (out / f"{kid}.pem").write_bytes(pem)
    rsa_jwk = public_jwk(RSAAlgorithm, made["rsa-1"], "rsa-1", "RS256")
    for n, ed in (("1", "ed-1"), ("2", "ed-2")):
        jwks = {"keys": [public_jwk(OKPAlgorithm, made[ed], ed, "EdDSA"), rsa_jwk]}
        (out / f"jwks-{n}.json").write_text(json.dumps(jwks))


def token(a: argparse.Namespace) -> str:
    now = int(time.time())
    grants: dict = {}
    for g in a.grant:
        cap, mode, pattern = g.split(":", 2)
        grants.setdefault(cap, {}).setdefault(mode, []).append(pattern)
    for cap, intents in (g.split(":", 1) for g in a.intents):
        grants.setdefault(cap, {})["intents"] = int(intents)
    claims = {"sub": a.sub, "exp": now + a.exp, "nimbus": grants}
    if a.nbf:
        claims["nbf"] = now + a.nbf
    if a.alg == "HS256":
        key = a.secret
    else:
        key = serialization.load_pem_private_key(Path(a.key).read_bytes(), password=None)
    return jwt.encode(claims, key, algorithm=a.alg, headers={"kid": a.kid} if a.kid else None)


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys")
    k.add_argument("dir")
    t = sub.add_parser("token")
    t.add_argument("--alg", required=True, choices=["HS256", "RS256", "EdDSA"])
    t.add_argument("--key")
    t.add_argument("--secret")
    t.add_argument("--kid")
    t.add_argument("--sub", default="alice")
    t.add_argument("--grant", action="append", default=[], help="CAP:rw|ro:PATTERN")
    t.add_argument("--intents", action="append", default=[], help="gateway:N")
    t.add_argument("--exp", type=int, default=600, help="seconds from now (negative: expired)")
    t.add_argument("--nbf", type=int, default=0, help="seconds from now (0: no nbf)")
    a = p.parse_args()
    if a.cmd == "keys":
        keys(Path(a.dir))
    else:
        print(token(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
