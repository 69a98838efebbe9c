"""The Ed25519 device identity a gateway client signs its ``connect`` with.

OpenClaw identifies a device by an Ed25519 key pair:

- ``device.id`` is the lowercase hex SHA-256 of the raw 32-byte public key;
- ``device.publicKey`` is the base64url (no padding) of that raw key;
- ``device.signature`` is the base64url Ed25519 signature over the UTF-8 "v3" payload::

    v3|<deviceId>|<clientId>|<clientMode>|<role>|<scopes,joined>|<signedAtMs>|<token>|<nonce>|<platform>|<deviceFamily>

  where ``<token>`` is the ``auth.token`` sent (or ``""``), and platform and device family are
  trimmed and ASCII-lowercased (an absent family gives an empty field).

The key pair is kept in a JSON file in the same shape as OpenClaw's own
``~/.openclaw/identity/device.json`` (``{version: 1, deviceId, publicKeyPem, privateKeyPem,
createdAtMs}``), mode 0600, created on first use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def normalize_device_metadata(value: str | None) -> str:
    """Trim, and lowercase ASCII letters only (as the gateway does before verifying)."""
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in value)


def device_auth_payload_v3(
    *,
    device_id: str,
    client_id: str,
    client_mode: str,
    role: str,
    scopes: Sequence[str],
    signed_at_ms: int,
    token: str | None,
    nonce: str,
    platform: str | None,
    device_family: str | None,
) -> str:
    """The exact string a v3 device signature covers."""
    return "|".join([
        "v3", device_id, client_id, client_mode, role, ",".join(scopes), str(signed_at_ms), token or "", nonce,
        normalize_device_metadata(platform), normalize_device_metadata(device_family),
    ])


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_id_for(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class DeviceIdentity:
    """A loaded or freshly generated key pair."""

    private_key: Ed25519PrivateKey
    created_at_ms: int

    @property
    def public_key_raw(self) -> bytes:
        return raw_public_key(self.private_key.public_key())

    @property
    def device_id(self) -> str:
        return device_id_for(self.public_key_raw)

    @property
    def public_key_b64url(self) -> str:
        return b64url(self.public_key_raw)

    @classmethod
    def generate(cls) -> DeviceIdentity:
        return cls(Ed25519PrivateKey.generate(), int(time.time() * 1000))

    def sign(self, payload: str) -> str:
        return b64url(self.private_key.sign(payload.encode("utf-8")))

    def device_params(
        self, *, client_id: str, client_mode: str, role: str, scopes: Sequence[str], token: str | None,
        nonce: str, signed_at_ms: int, platform: str, device_family: str | None = None,
    ) -> dict[str, object]:
        """The ``device`` object of ``connect`` params, signed for this challenge."""
        payload = device_auth_payload_v3(
            device_id=self.device_id, client_id=client_id, client_mode=client_mode, role=role, scopes=scopes,
            signed_at_ms=signed_at_ms, token=token, nonce=nonce, platform=platform, device_family=device_family,
        )
        return {"id": self.device_id, "publicKey": self.public_key_b64url, "signature": self.sign(payload),
                "signedAt": signed_at_ms, "nonce": nonce}

    def to_json(self) -> dict[str, object]:
        private_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"version": 1, "deviceId": self.device_id, "publicKeyPem": public_pem.decode(),
                "privateKeyPem": private_pem.decode(), "createdAtMs": self.created_at_ms}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> DeviceIdentity:
        pem = data.get("privateKeyPem")
        if not isinstance(pem, str):
            raise ValueError("no privateKeyPem")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("privateKeyPem is not an Ed25519 key")
        created = data.get("createdAtMs")
        return cls(key, int(created) if isinstance(created, int | float) else 0)


def load_or_create(path: Path) -> DeviceIdentity:
    """The identity stored at ``path``; a new one (written 0600, parents 0700) if absent.
    A file that exists but cannot be parsed raises ValueError rather than being replaced,
    since a paired device would silently lose its pairing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        identity = DeviceIdentity.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(identity.to_json(), fh, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return identity
    try:
        return DeviceIdentity.from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"device identity {path} is unreadable ({exc}); move it away to create a new one") from None
