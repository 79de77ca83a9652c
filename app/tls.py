"""TLS on first start: a CA of this installation and a server certificate it signs.

``ensure_tls(folder, names)`` creates what is missing and keeps what exists, like the passwords
(app/credentials.py): a second start reuses the same CA, so devices that trust ``ca.crt`` keep
trusting the broker. The server certificate is issued again (same CA) when it lacks one of
``names`` or expires within 30 days. Keys are ECDSA P-256, written 0600; certificates 0644.

Layout (``<secrets>/tls``)::

    ca.crt        the CA certificate: give it to every client that connects from outside the box
    ca.key        the CA's private key (only to issue a new server certificate)
    server.crt    the broker's certificate (SAN: localhost, 127.0.0.1, this host's name, ``names``)
    server.key    its private key (read by Mosquitto)

A client checks the broker's name against the SAN: connect to a name listed there (add the box's
LAN address or DNS name with ``broker.cert_names``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.fileio import atomic_write

logger = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity clients accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_NAMES = ("localhost", "127.0.0.1", "mosquitto")  # mosquitto: the broker's name on the compose network


@dataclass(frozen=True)
class TlsFiles:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"


def _names(extra: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in (*DEFAULT_NAMES, socket.gethostname(), *extra):
        n = n.strip()
        if n and n not in out:
            out.append(n)
    return out


def _san(names: Sequence[str]):  # noqa: ANN202 - cryptography types, imported lazily
    from cryptography import x509

    items = []
    for n in names:
        try:
            items.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            items.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(items)


def _write_key(path: Path, key) -> None:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, pem, mode=0o600)


def _write_cert(path: Path, cert) -> None:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _new_ca(files: TlsFiles, common_name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(files.ca_key, key)
    _write_cert(files.ca_cert, cert)


def _new_server(files: TlsFiles, names: Sequence[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.server_key, key)
    _write_cert(files.server_cert, cert)


def _server_ok(files: TlsFiles, names: Sequence[str]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not files.server_key.exists() or cert.issuer != ca.subject:
            return False
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return set(names) <= have and cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE


def ensure_tls(folder: Path, names: Iterable[str] = (), *, ca_name: str = "flowwatch CA") -> TlsFiles:
    """Create the CA and the server certificate under ``folder`` if missing; keep them otherwise."""
    files = TlsFiles(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    all_names = _names(names)
    created = []
    if not files.ca_cert.exists() or not files.ca_key.exists():
        _new_ca(files, ca_name)
        created.append("ca")
    if created or not _server_ok(files, all_names):
        _new_server(files, all_names)
        created.append(f"server ({', '.join(all_names)})")
    if created:
        logger.info("generated TLS files in %s: %s", folder, "; ".join(created))
    return files
