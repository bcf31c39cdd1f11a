"""The cluster's PKI, made at start: one CA, serving and client certificates, kubeconfigs."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_Key = ec.EllipticCurvePrivateKey


def _key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: _Key | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


class PKI:
    """Writes everything under ``directory``; the CA signs every certificate."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self._start = now - datetime.timedelta(hours=1)
        self._end = now + datetime.timedelta(days=2)
        name = _name("podlb-test-ca")
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._start)
            .not_valid_after(self._end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self.ca.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))
        self.ca_key.write_bytes(_pem_key(self._ca_key))
        self.ca_key.chmod(0o600)

    def issue(
        self,
        name: str,
        cn: str,
        *,
        org: str | None = None,
        server: bool = False,
        hosts: tuple[str, ...] = (),
    ) -> CertFiles:
        key = _key()
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._start)
            .not_valid_after(self._end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if hosts:
            alt: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        files = CertFiles(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(_pem_key(key))
        files.key.chmod(0o600)
        return files

    def service_account_key(self) -> tuple[Path, Path]:
        """RSA key pair that signs and verifies ServiceAccount tokens."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private, public = self.dir / "sa.key", self.dir / "sa.pub"
        private.write_bytes(_pem_key(key))
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return private, public

    def kubeconfig(self, name: str, server: str, cn: str, org: str | None = None) -> Path:
        """A kubeconfig for a client-certificate identity (CN = user, O = group)."""
        files = self.issue(name, cn, org=org)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "podlb-test",
                    "cluster": {"server": server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [
                {
                    "name": cn,
                    "user": {"client-certificate": str(files.cert), "client-key": str(files.key)},
                }
            ],
            "contexts": [{"name": "podlb-test", "context": {"cluster": "podlb-test", "user": cn}}],
            "current-context": "podlb-test",
        }
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path
