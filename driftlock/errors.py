"""One exception base for the package; subclasses carry a code the CLI and logs can show."""


class DriftLockError(Exception):
    """Base of every error DriftLock raises on purpose."""

    code = "driftlock_error"


class ConfigError(DriftLockError):
    """A setting, flag or environment value is invalid; the message says which and why."""

    code = "config_error"


class NatsSetupError(DriftLockError):
    """The NATS server lacks something DriftLock needs (mapping, stream config, JetStream)."""

    code = "nats_setup_error"


class NatsServerError(DriftLockError):
    """The managed nats-server could not be found, started or stopped."""

    code = "nats_server_error"
