"""The swarmbus exception tree and the CLI exit codes it maps to.

::

    SwarmbusError                 exit 1  (anything swarmbus raises on purpose)
    ├── UsageError                exit 2  a user mistake: bad flag value, invalid id, oversize body
    │   └── ConfigError           exit 2  the config file or environment cannot be used
    ├── BrokerUnreachable         exit 2  no MQTT connection could be made (DNS, refused, TLS, auth)
    ├── TimeoutExpired            exit 1  nothing arrived / nothing was acknowledged in time
    ├── OwnershipError            exit 1  another process already owns the agent id's receive session
    └── StoreError                exit 1  the local SQLite store cannot be opened or written

``swarmbus.envelope.EnvelopeError`` (a ``ValueError``) is raised for invalid envelopes; the CLI
reports it as a usage error (exit 2).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class SwarmbusError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with when this escapes a command."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(SwarmbusError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    pass


class BrokerUnreachable(SwarmbusError):
    exit_code = EXIT_USAGE


class BrokerRefused(BrokerUnreachable):
    """Nothing listens where the broker should be (every node refused the TCP connection):
    waiting will not help, so commands fail at once."""


class BrokerNotReady(BrokerUnreachable):
    """The broker accepted the TCP connection and closed it without a CONNACK: a broker starting
    up, or a cluster electing a leader. Worth asking again for a while."""


class PublishRefused(SwarmbusError):
    """The broker answered a publish with an MQTT 5 failure reason code (135 "Not authorized":
    the credentials may not write that topic). Retrying will not help until the ACL changes."""

    exit_code = EXIT_FAILURE


class TimeoutExpired(SwarmbusError):
    exit_code = EXIT_FAILURE


class OwnershipError(SwarmbusError):
    exit_code = EXIT_FAILURE


class StoreError(SwarmbusError):
    exit_code = EXIT_FAILURE
