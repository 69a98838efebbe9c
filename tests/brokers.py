"""Test helpers for private mosquitto brokers: fixtures, a throwaway CA, password and ACL files.

This is not a conftest. Load it from ``tests/conftest.py`` with either::

    from brokers import *  # noqa: F403  (brings in the fixtures and helpers in __all__)

or ``pytest_plugins = ["brokers"]``. Both need ``tests/`` on ``sys.path``.

Fixtures (all function-scoped; each broker gets a free port and a state dir under
``tmp_path``; teardown always stops or kills every broker, even when the test failed):

* ``broker``: a plain loopback broker with persistence on and autosave every second.
  Yields :class:`swarmbus.dev_broker.RunningBroker`.
* ``broker_factory``: ``factory(**BrokerConfig overrides) -> RunningBroker``. Without
  overrides it gives the same kind of broker as ``broker``.
* ``tls_broker``: TLS listener signed by a private CA, password auth, anonymous refused.
  Yields ``(RunningBroker, CertBundle, {"alice": "wonderland"})``.

If mosquitto is missing, the fixtures call ``pytest.fail`` rather than skip: CI installs
mosquitto, so a missing one is a broken environment, not a reason to skip.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarmbus.dev_broker import (
    BrokerConfig,
    MosquittoNotFound,
    RunningBroker,
    find_mosquitto,
    free_port,
    start_broker,
)

__all__ = [
    "TLS_USERS",
    "BrokerFactory",
    "CertBundle",
    "broker",
    "broker_factory",
    "make_acl_file",
    "make_ca",
    "make_password_file",
    "require_mosquitto",
    "tls_broker",
]

TLS_USERS: dict[str, str] = {"alice": "wonderland"}

BrokerFactory = Callable[..., RunningBroker]


@dataclass(frozen=True)
class CertBundle:
    """PEM files made by :func:`make_ca`: the CA, a server cert and a client cert (mTLS)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _run(argv: list[str], what: str) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{what}: {argv[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"{what} failed (exit {exc.returncode}): {' '.join(argv)}\n{exc.stderr}"
        ) from exc


def make_ca(dir: Path) -> CertBundle:
    """Create a private CA plus a server and a client certificate in ``dir`` with ``openssl``.

    The server cert has CN ``localhost`` and SANs ``DNS:localhost``, ``IP:127.0.0.1`` and
    ``IP:::1``. The client cert has CN ``swarmbus-test-client`` and is for mTLS. Keys are
    EC P-256, with mode 0600. Certs are valid for 825 days (the CA for 3650).

    Raises:
        RuntimeError: if openssl is missing or a command fails (its stderr is included).
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    cnf = dir / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF, encoding="utf-8")
    bundle = CertBundle(
        ca=dir / "ca.crt",
        server_cert=dir / "server.crt",
        server_key=dir / "server.key",
        client_cert=dir / "client.crt",
        client_key=dir / "client.key",
    )
    ca_key = dir / "ca.key"
    # fmt: off
    for key in (ca_key, bundle.server_key, bundle.client_key):
        _run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(key)],
            "openssl genpkey",
        )
        key.chmod(0o600)
    _run(
        ["openssl", "req", "-x509", "-new", "-config", str(cnf), "-extensions", "v3_ca",
         "-key", str(ca_key), "-sha256", "-days", "3650",
         "-subj", "/CN=swarmbus test CA", "-out", str(bundle.ca)],
        "openssl req (CA)",
    )
    for section, cn, key, cert in (
        ("server", "localhost", bundle.server_key, bundle.server_cert),
        ("client", "swarmbus-test-client", bundle.client_key, bundle.client_cert),
    ):
        csr = dir / f"{section}.csr"
        _run(
            ["openssl", "req", "-new", "-config", str(cnf), "-key", str(key),
             "-subj", f"/CN={cn}", "-out", str(csr)],
            f"openssl req ({section} CSR)",
        )
        _run(
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(bundle.ca),
             "-CAkey", str(ca_key), "-set_serial", str(secrets.randbits(63)),
             "-days", "825", "-sha256", "-extfile", str(cnf), "-extensions", section,
             "-out", str(cert)],
            f"openssl x509 (sign {section})",
        )
    # fmt: on
    return bundle


def make_password_file(dir: Path, users: dict[str, str]) -> Path:
    """Write ``<dir>/passwd`` with hashed passwords for ``users``, using ``mosquitto_passwd -b``.

    The first user creates the file (``-c``); the rest are added to it. The file gets mode
    0600.

    Raises:
        ValueError: if ``users`` is empty.
        RuntimeError: if ``mosquitto_passwd`` is not installed (it ships with the mosquitto
            package) or fails.
    """
    if not users:
        raise ValueError("make_password_file needs at least one user")
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        raise RuntimeError(
            "mosquitto_passwd is not installed; it comes with mosquitto: "
            "`sudo apt-get install mosquitto` or `brew install mosquitto`"
        )
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / "passwd"
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        _run([exe, *create, "-b", str(path), user, password], "mosquitto_passwd")
    path.chmod(0o600)
    return path


def make_acl_file(dir: Path, text: str) -> Path:
    """Write ``text`` to ``<dir>/acl`` (mosquitto acl_file syntax) and return the path."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / "acl"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def require_mosquitto() -> str:
    """Return the mosquitto path, or ``pytest.fail`` with install instructions (no skip)."""
    exe = find_mosquitto()
    if exe is None:
        pytest.fail(str(MosquittoNotFound()), pytrace=False)
    return exe


def _teardown(started: list[RunningBroker]) -> None:
    errors: list[BaseException] = []
    for running in reversed(started):
        try:
            running.stop(timeout=5)
        except BaseException as exc:  # keep tearing down the others
            errors.append(exc)
            try:
                running.kill()
            except BaseException as kill_exc:
                errors.append(kill_exc)
    if errors:
        raise errors[0]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """``factory(**overrides) -> RunningBroker``: start brokers that are torn down afterwards.

    Defaults: ``state_dir=<tmp_path>/broker-N``, a free port, bind 127.0.0.1, persistence on,
    autosave every 1 s. Any :class:`BrokerConfig` field can be overridden by keyword.
    """
    exe = require_mosquitto()
    started: list[RunningBroker] = []

    def factory(**overrides: Any) -> RunningBroker:
        n = len(started)
        for attempt in range(3):  # a free port can be taken before mosquitto binds it (tests run in parallel)
            params: dict[str, Any] = {
                "state_dir": tmp_path / f"broker-{n}",
                "port": free_port(),
                "persistence": True,
                "autosave_interval": 1,
            }
            params.update(overrides)
            try:
                running = start_broker(BrokerConfig(**params), mosquitto=exe)
                break
            except RuntimeError:
                if "port" in overrides or attempt == 2:
                    raise
        started.append(running)
        return running

    try:
        yield factory
    finally:
        _teardown(started)


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> RunningBroker:
    """A private loopback mosquitto: free port, persistence on, autosave every 1 s."""
    return broker_factory()


@pytest.fixture
def tls_broker(
    tmp_path: Path, broker_factory: BrokerFactory
) -> tuple[RunningBroker, CertBundle, dict[str, str]]:
    """A TLS broker (private CA) with password auth: ``(broker, certs, {"alice": ...})``.

    Anonymous clients are refused. Clients need ``certs.ca`` to verify the server and can
    connect to ``broker.host`` (127.0.0.1, which is in the server cert's SANs) or to
    ``localhost``.
    """
    require_mosquitto()
    certs = make_ca(tmp_path / "pki")
    users = dict(TLS_USERS)
    passwd = make_password_file(tmp_path / "auth", users)
    running = broker_factory(
        cafile=certs.ca,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
        password_file=passwd,
    )
    return running, certs, users
