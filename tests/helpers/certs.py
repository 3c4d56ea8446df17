"""Test certificates made with the openssl command: a CA, certificates it signs for the
node, a client and a destination, and a second CA with a client nobody trusts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its key."""

    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> Pair:
    """A self-signed CA, valid two days."""
    folder.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
         "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    return Pair(folder / f"{name}.pem", folder / f"{name}.key")


def issue(ca: Pair, folder: Path, name: str) -> Pair:
    """A certificate for 127.0.0.1 / localhost signed by ``ca``, for servers and clients."""
    (folder / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
         f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
         cwd=folder)  # fmt: skip
    return Pair(folder / f"{name}.pem", folder / f"{name}.key")
