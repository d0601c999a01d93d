"""A throw-away public-key infrastructure for the TLS tests, made with the `openssl` CLI.

`make_pki(folder)` writes, in a few hundred milliseconds (EC P-256 keys):

- `ca.pem` / `ca.key`: the test CA, the one the brokers and the clients trust;
- `server.pem` / `server.key`: the brokers' certificate, signed by the CA, for the name
  `localhost` with the SANs DNS:localhost and IP:127.0.0.1 (and nothing else, so a client
  that connects to 127.0.0.2 meets a name that does not match);
- `client.pem` / `client.key`: a client certificate signed by the CA (mutual TLS); its key
  is encrypted (PKCS#8, AES-256) with `Pki.key_password`, which the tests then look for
  in every log line, repr and error;
- `other-ca.pem`: a second, unrelated CA (a client that trusts it rejects the brokers),
  and `stranger.pem` / `stranger.key`: a client certificate that CA signed (a broker
  that asks for client certificates rejects it).

Keys are unencrypted except the client's.

`cached_pki(folder)` keeps one such PKI (made in a temporary folder, then moved into
place) and reuses it while its certificates stay valid for another day: the broker scripts
then find the same material installed and leave their nodes running, so a test session
takes seconds once the nodes are up. Delete the folder for a fresh one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: validity of every certificate (a cached PKI is made again a day before it expires)
DAYS = "30"
#: every file of a PKI (`cached_pki` reuses a folder only when all are there)
FILES = (
    "ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key",
    "stranger.pem", "stranger.key", "key-password",
)  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """Where the files of one PKI are, and the client key's password."""

    folder: Path
    key_password: str = field(repr=False)

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.folder / "other-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def stranger_cert(self) -> Path:
        return self.folder / "stranger.pem"

    @property
    def stranger_key(self) -> Path:
        return self.folder / "stranger.key"


def openssl(folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run `openssl args...` in `folder`; a failure raises with openssl's own message."""
    done = subprocess.run(
        ["openssl", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _key(folder: Path, name: str) -> None:
    openssl(folder, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", name)  # fmt: skip


def make_ca(folder: Path, stem: str, common_name: str) -> None:
    """A self-signed CA: `<stem>.pem`, `<stem>.key`."""
    _key(folder, f"{stem}.key")
    openssl(
        folder, "req", "-x509", "-new", "-key", f"{stem}.key", "-out", f"{stem}.pem",
        "-days", DAYS, "-subj", f"/O=eventbus tests/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip


def issue(
    folder: Path,
    ca: str,
    stem: str,
    common_name: str,
    *,
    usage: str,
    names: tuple[str, ...] = (),
) -> None:
    """A certificate `<stem>.pem` for a new key `<stem>.key`, signed by the CA `<ca>.pem`;
    `usage` is serverAuth or clientAuth, `names` the subjectAltName entries."""
    _key(folder, f"{stem}.key")
    openssl(folder, "req", "-new", "-key", f"{stem}.key", "-out", f"{stem}.csr",
            "-subj", f"/O=eventbus tests/CN={common_name}")  # fmt: skip
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    if names:
        extensions.append("subjectAltName=" + ",".join(names))
    (folder / f"{stem}.ext").write_text("\n".join(extensions) + "\n")
    openssl(
        folder, "x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{stem}.pem", "-days", DAYS, "-extfile", f"{stem}.ext",
    )  # fmt: skip


def encrypt_key(folder: Path, name: str, password: str) -> None:
    """Encrypt the PKCS#8 key `name` in place with `password` (given to openssl through
    its environment, never its command line)."""
    openssl(
        folder, "pkcs8", "-topk8", "-in", name, "-out", f"{name}.enc", "-v2", "aes-256-cbc",
        "-passout", "env:EVENTBUS_TEST_KEY_PASSWORD",
        env={"EVENTBUS_TEST_KEY_PASSWORD": password},
    )  # fmt: skip
    (folder / f"{name}.enc").replace(folder / name)


def make_pki(folder: Path) -> Pki:
    """Write a fresh PKI into `folder` (see the module's docstring); the client key's
    password is kept in `key-password` (mode 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder, key_password=f"KeyPw-{secrets.token_hex(12)}")
    (folder / "key-password").write_text(pki.key_password)
    make_ca(folder, "ca", "eventbus test CA")
    make_ca(folder, "other-ca", "unrelated test CA")
    issue(folder, "ca", "server", "localhost", usage="serverAuth",
          names=("DNS:localhost", "IP:127.0.0.1"))  # fmt: skip
    issue(folder, "ca", "client", "eventbus-client", usage="clientAuth")
    encrypt_key(folder, "client.key", pki.key_password)
    issue(folder, "other-ca", "stranger", "stranger", usage="clientAuth")
    for path in folder.iterdir():
        path.chmod(0o600 if path.suffix == ".key" or path.name == "key-password" else 0o644)
    return pki


def valid_for_a_day(certificate: Path) -> bool:
    done = subprocess.run(
        ["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(certificate)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def cached_pki(folder: Path) -> Pki:
    """The PKI kept in `folder`, made (in a temporary folder, then moved into place) when
    it is missing, incomplete or expires within a day."""
    if all((folder / name).is_file() for name in FILES) and all(
        valid_for_a_day(folder / name)
        for name in ("ca.pem", "other-ca.pem", "server.pem", "client.pem", "stranger.pem")
    ):
        return Pki(folder, key_password=(folder / "key-password").read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="pki-", dir=folder.parent))
    make_pki(fresh)
    fresh.chmod(0o700)
    if folder.exists():
        shutil.rmtree(folder)
    fresh.rename(folder)
    return Pki(folder, key_password=(folder / "key-password").read_text())
