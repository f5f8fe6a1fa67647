"""The exceptions of cxpulse: one base class and one subclass per kind of failure."""

from __future__ import annotations

EXIT_PERMANENT = 2  # exit code of a worker process that cannot run with its configuration (no restart)


class CxPulseError(Exception):
    """Base class of every error cxpulse raises on purpose."""


class BrokerError(CxPulseError):
    """The local Kafka broker could not be resolved, formatted, started or reached."""


class ConfigurationError(CxPulseError):
    """A setting is invalid; the message names the setting."""


class DecodeError(CxPulseError):
    """Bytes or a line are not a FeedbackEvent (wrong schema, truncated, not Avro / JSON)."""


class InputFileError(CxPulseError):
    """An input file is missing, unreadable or of an unknown format."""


class SchemaError(CxPulseError):
    """A schema id or schema could not be found in the registry or local catalog."""
