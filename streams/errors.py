"""The exceptions of cxpulse: one base class and one subclass per kind of failure."""

from __future__ import annotations

EXIT_PERMANENT = 2  # exit code of a worker process that cannot run with its configuration (no restart)


class CxPulseError(Exception):
    """Base class of every error cxpulse raises on purpose."""


class BrokerError(CxPulseError):
    """Kafka could not be used: the local broker could not be resolved, formatted or started, a cluster could not
    be reached, or it refused what was asked (the subclasses say which)."""


class KafkaUnreachableError(BrokerError):
    """No broker answered (nothing listens there, or it is restarting): waiting may fix it."""


class KafkaRefusedError(BrokerError):
    """The brokers refused the credentials, the certificates or the host name: waiting will not fix it."""


class NotAuthorizedError(BrokerError):
    """The principal lacks an ACL for what it asked (``cxpulse acls`` prints what each role needs)."""


class TopicMissingError(BrokerError):
    """A topic does not exist (and was not created)."""


class ConfigurationError(CxPulseError):
    """A setting is invalid; the message names the setting."""


class DecodeError(CxPulseError):
    """Bytes or a line are not a FeedbackEvent (wrong schema, truncated, not Avro / JSON)."""


class InputFileError(CxPulseError):
    """An input file is missing, unreadable or of an unknown format."""


class SchemaError(CxPulseError):
    """A schema id or schema could not be found in the registry or local catalog."""


# Kafka errors that waiting or a restart will not fix: a worker process that meets one exits with EXIT_PERMANENT
PERMANENT_KAFKA_ERRORS = (KafkaRefusedError, NotAuthorizedError, TopicMissingError)
