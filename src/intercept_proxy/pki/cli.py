"""`intercept pki`: create or inspect the sandbox CA."""

from __future__ import annotations

import argparse
from pathlib import Path

from intercept_proxy.pki.ca import KEY_TYPES, CertificateAuthority


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("pki", help="the sandbox certificate authority")
    sub = parser.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init-ca",
        help="generate a CA (certificate 0644, private key 0600)",
        description="Generate a CA certificate and key. The key file is created with mode 0600.",
    )
    init.add_argument("--cert", type=Path, required=True, help="where to write the certificate")
    init.add_argument("--key", type=Path, required=True, help="where to write the private key")
    init.add_argument("--name", default="intercept-proxy sandbox CA", help="the CA's common name")
    init.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=_init_ca)


def _init_ca(args: argparse.Namespace) -> int:
    for path in (args.cert, args.key):
        if path.exists() and not args.force:
            raise SystemExit(f"intercept pki init-ca: {path} exists (use --force to replace it)")
    CertificateAuthority.generate(args.name, key_type=args.key_type).write(args.cert, args.key)
    print(f"CA certificate: {args.cert}\nCA private key: {args.key} (mode 0600)")
    return 0
