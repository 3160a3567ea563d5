"""A local certificate authority for the stack: the broker's server certificate and one certificate per device.

Files live under `root/tls/` (keys 0600). The CA is created once and kept, so devices provisioned earlier stay
valid across restarts. On a device, the certificate's common name is its unit id, which the broker's TLS listener
uses as the MQTT username (so the same ACL confines it to its own topics).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emergency.protocol import UNIT_PATTERN
from emergency.stack._process import StackError

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


def _tls_dir(root: Path) -> Path:
    path = root / "tls"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _load_ca(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = _tls_dir(root)
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StackError(f"{d / 'ca.key'} is not the EC key this stack writes")
    return cert, key


def ensure_ca(root: Path) -> Path:
    """The CA certificate (created on first use); devices are given this file to verify the broker."""
    d = _tls_dir(root)
    if not (d / "ca.crt").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Emergency center local CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # key_cert_sign, crl_sign
            .sign(key, hashes.SHA256())
        )
        _write_key(d / "ca.key", key)
        (d / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return d / "ca.crt"


def _issue(root: Path, common_name: str, *, server: bool, names: list[str], out: str) -> CertPair:
    ensure_ca(root)
    ca_cert, ca_key = _load_ca(root)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if names:
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    d = _tls_dir(root)
    pair = CertPair(d / f"{out}.crt", d / f"{out}.key")
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def ensure_server_cert(root: Path, hostnames: list[str]) -> CertPair:
    """The broker's certificate for `hostnames` (reissued when missing)."""
    d = _tls_dir(root)
    pair = CertPair(d / "broker.crt", d / "broker.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    return _issue(root, hostnames[0], server=True, names=hostnames, out="broker")


def issue_device_cert(root: Path, unit: str) -> CertPair:
    """A client certificate whose common name is `unit` (replaces any earlier one for that unit)."""
    if not UNIT_PATTERN.fullmatch(unit):
        raise StackError(f"unit id {unit!r} must match [A-Za-z0-9_-]{{1,32}}")
    return _issue(root, unit, server=False, names=[], out=f"device-{unit}")


def device_cert(root: Path, unit: str) -> CertPair:
    """The unit's existing client certificate, or a new one."""
    d = _tls_dir(root)
    pair = CertPair(d / f"device-{unit}.crt", d / f"device-{unit}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    return issue_device_cert(root, unit)
