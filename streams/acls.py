"""Least privilege: the Kafka ACLs each cxpulse role needs, for one principal and app id, and nothing more.

One list per role, used three ways: ``cxpulse acls`` prints them as ``kafka-acls`` commands for an operator, the
README lists them, and the security tests create exactly these (as AclBindings) on a broker with Kafka's
StandardAuthorizer and run the pipeline under them.

Roles:

- ``worker``: ``cxpulse worker`` as it runs by default: the hot path, the merge and journeys processes, and with a
  store (CXPULSE_CLICKHOUSE_URL, the embedded one by default) the ClickHouse sink, which reads the journey
  instances back; with CXPULSE_HTTP_PORT its HTTP ingest too;
- ``sink``: ``cxpulse sink`` on its own host (the ClickHouse sink, group ``<app>-sink``);
- ``http``: a process that only produces to the feedback topic (HTTP ingest, ``cxpulse produce``,
  ``cxpulse simulate``).

The worker creates the topics it needs when they are missing; with ``--precreated`` (topics made beforehand by
an administrator, e.g. with ``cxpulse topics``) it needs no Create on the pipeline's own topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streams.config import Settings
from streams.topics import internal_topics

ResourceKind = Literal["topic", "group", "transactional-id", "cluster"]
Pattern = Literal["literal", "prefixed"]
ROLES = ("worker", "sink", "http")


@dataclass(frozen=True)
class Acl:
    """Operations allowed on one resource (or every resource whose name starts with ``name``: prefixed)."""

    kind: ResourceKind
    name: str
    pattern: Pattern
    operations: tuple[str, ...]
    why: str


def _topic(name: str, ops: tuple[str, ...], why: str) -> Acl:
    return Acl("topic", name, "literal", ops, why)


def acls_for(settings: Settings, role: str, *, precreated: bool = False) -> list[Acl]:
    """The ACLs of ``role`` (one of ROLES) for the settings' app id and topics."""
    app = settings.app_id
    create = () if precreated else ("Create",)
    feedback_write = _topic(settings.feedback_topic, ("Write", "Describe"), "events in")
    if role == "http":
        return [feedback_write]
    if role == "sink":
        return [
            _topic(settings.results_topic, ("Read", "Describe"), "pane results into ClickHouse"),
            _topic(internal_topics(settings).answers, ("Read", "Describe"), "counted answers into ClickHouse"),
            *(
                [_topic(settings.journeys_topic, ("Read", "Describe"), "journey instances into ClickHouse")]
                if settings.journeys
                else []
            ),
            Acl("group", f"{app}-sink", "literal", ("Read", "Describe"), "the sink's consumer group"),
        ]
    if role != "worker":
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    sink_reads = ("Read",) if settings.clickhouse_url else ()  # the worker's own sink reads the instances back
    return [
        _topic(settings.feedback_topic, ("Read", "Describe", *create), "events in (hot path)"),
        _topic(settings.dlq_topic, ("Write", "Describe", *create), "dead letters"),
        _topic(settings.results_topic, ("Read", "Write", "Describe", *create), "pane results out, read by the views"),
        _topic(settings.alerts_topic, ("Write", "Describe", *create), "effort alerts"),
        _topic(settings.followups_topic, ("Read", "Write", "Describe", *create), "detractor follow-ups"),
        *(
            [
                _topic(
                    settings.journeys_topic,
                    (*sink_reads, "Write", "Describe", *create),
                    "journey instances" + (" (out, and into ClickHouse)" if sink_reads else ""),
                )
            ]
            if settings.journeys
            else []
        ),
        Acl(
            "topic",
            f"{app}-",
            "prefixed",
            ("Create", "Read", "Write", "Describe"),
            "internal topics: partials, seen ids, answers, journey answers, table changelogs",
        ),
        Acl("group", app, "literal", ("Read", "Describe"), "the Faust process's consumer group"),
        Acl("group", f"{app}-", "prefixed", ("Read", "Describe"), "the hot path's group and the state readers"),
        Acl(
            "transactional-id",
            f"{app}-hotpath-",
            "prefixed",
            ("Write", "Describe"),
            "one Kafka transaction per hot-path batch",
        ),
    ]


_OPTION = {"topic": "--topic", "group": "--group", "transactional-id": "--transactional-id"}


def kafka_acls_commands(principal: str, acls: list[Acl], bootstrap: str, config: str = "") -> list[str]:
    """``kafka-acls.sh`` command lines that create ``acls`` for ``principal`` (``config``: an admin client
    properties file, ``--command-config``)."""
    lines = []
    for acl in acls:
        parts = ["kafka-acls.sh", "--bootstrap-server", bootstrap]
        if config:
            parts += ["--command-config", config]
        parts += ["--add", "--allow-principal", principal]
        for operation in acl.operations:
            parts += ["--operation", operation]
        if acl.kind == "cluster":
            parts.append("--cluster")
        else:
            parts += [_OPTION[acl.kind], acl.name]
        if acl.pattern == "prefixed":
            parts += ["--resource-pattern-type", "prefixed"]
        lines.append(" ".join(parts))
    return lines
