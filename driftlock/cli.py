"""The `driftlock` command. Every setting is a flag and a DRIFTLOCK_* environment variable;
flags win. Run `driftlock <command> --help` for the settings of a command."""

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop

from driftlock.bus.nats_config import mapping_block
from driftlock.bus.subjects import Subjects
from driftlock.errors import DriftLockError
from driftlock.logs import configure_logging
from driftlock.settings import NODE_ID_PATTERN, Settings, load_settings
from driftlock.tracing import configure_tracing

log = logging.getLogger("driftlock.cli")

COMMON = ("data_dir", "prefix", "partitions", "log_level")
NODE = (
    "node_id",
    "metrics_host",
    "metrics_port",
    "pull_batch",
    "commit_interval_s",
    "detect_threads",
    "max_points_per_message",
    "passivate_after_s",
    "max_active_actors",
    "lmdb_map_size",
    "lmdb_sync",
    "events_max_age_s",
    "anomalies_max_age_s",
    "duplicate_window_s",
    "detector_window",
    "detector_warmup",
    "detector_threshold",
    "node_weight",
    "member_ttl_s",
    "lease_ttl_s",
    "snapshot_interval_s",
    "max_concurrent_moves",
    "replicas",
)
ALERTER = (
    "alert_tick_s",
    "alert_fetch_batch",
    "alert_send_attempts",
    "alert_backoff_s",
    "alert_send_timeout_s",
    "alert_link_base_url",
)
GATEWAY = (
    "gateway_host",
    "gateway_port",
    "access_token_ttl_s",
    "refresh_token_ttl_s",
    "max_body_bytes",
)
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "up": (
        "Run the embedded default: a local nats-server with JetStream (config and store under "
        "--data-dir), one node, the alerter and the HTTP gateway. On first start it creates tenant "
        "'default' with an owner and prints the credentials once. Prints the NATS and "
        "gateway URLs and examples.",
        (*COMMON, "nats_host", "nats_port", "cluster", "processes", *NODE, *GATEWAY, *ALERTER),
    ),
    "gateway": (
        "Run the HTTP gateway against an existing NATS server (--nats-url). Stateless: run "
        "as many as you like behind a load balancer.",
        (*COMMON, "nats_url", "node_id", "replicas", *GATEWAY),
    ),
    "node": (
        "Run one node against an existing NATS server (--nats-url). The server must map "
        "<prefix>.in.*.* to partitions: see `driftlock nats-config`.",
        (*COMMON, "nats_url", "processes", *NODE),
    ),
    "alerter": (
        "Run an alerting worker against an existing NATS server (--nats-url): turns anomalies "
        "into incidents and notifications. Run several for availability; each notification "
        "still goes out once.",
        (
            *COMMON,
            "nats_url",
            "node_id",
            "metrics_host",
            "alert_metrics_port",
            "replicas",
            *ALERTER,
            "gateway_host",
            "gateway_port",
        ),
    ),
    "nats-config": (
        "Print the mappings block to add to an external nats-server's config.",
        ("prefix", "partitions"),
    ),
}

TRACING_HELP = (
    "Traces: OpenTelemetry's variables, e.g. OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 "
    "(OTLP over HTTP); OTEL_TRACES_EXPORTER=otlp|console|none, OTEL_SERVICE_NAME. "
    "Without them spans are not exported."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftlock",
        description="Real-time anomaly detection on NATS JetStream. Producers publish to "
        "<prefix>.in.<tenant>.<metric>; anomalies come out on <prefix>.anomaly.<tenant>.<metric>.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, fields) in COMMANDS.items():
        epilog = TRACING_HELP if name != "nats-config" else None
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        for field_name in fields:
            _add_setting(sub, field_name)
    admin = commands.add_parser("admin", help="Administration against a running NATS server.")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = admin_commands.add_parser(
        "create-tenant",
        help="Create a tenant with an owner; prints the owner's password once.",
        description="Create a tenant with an owner; prints the owner's password once.",
    )
    create.add_argument("--tenant", required=True, help="tenant id, [A-Za-z0-9_-]{1,64}")
    create.add_argument("--owner-email", required=True, help="the owner's e-mail (login)")
    create.add_argument("--plan", default="standard", help="rate-limit plan (default standard)")
    for field_name in ("nats_url", "prefix", "log_level"):
        _add_setting(create, field_name)
    _add_cluster_commands(commands)
    return parser


def _add_cluster_commands(commands: "argparse._SubParsersAction[Any]") -> None:
    cluster = commands.add_parser("cluster", help="Inspect and steer a running cluster of nodes.")
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="Members, the owner of every partition, its lag and its last snapshot's age.",
        description="Members, the owner of every partition, its lag and its last snapshot's age.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for field_name in ("nats_url", "prefix", "partitions", "member_ttl_s", "log_level"):
        _add_setting(status, field_name)
    for name, text in [
        ("drain", "Hand off every partition of NODE and give it none until `undrain`."),
        ("undrain", "Let NODE take its share of partitions again."),
    ]:
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("node", metavar="NODE", help="the node's --node-id")
        for field_name in ("nats_url", "prefix", "replicas", "log_level"):
            _add_setting(action, field_name)


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    info = Settings.model_fields[name]
    flag = "--" + name.replace("_", "-")
    default = info.get_default(call_default_factory=False)
    shown = "" if default is None or callable(default) else f" (default {default})"
    help_text = f"{info.description}{shown}; env DRIFTLOCK_{name.upper()}"
    if info.annotation is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
    else:
        parser.add_argument(flag, dest=name, metavar="VALUE", help=help_text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command_args = {"command", "admin_command", "tenant", "owner_email", "plan"}
    command_args |= {"cluster_command", "node", "json"}
    overrides = {k: v for k, v in vars(args).items() if k not in command_args and v is not None}
    try:
        settings = load_settings(**overrides)
    except DriftLockError as exc:
        print(f"driftlock: {exc}", file=sys.stderr)
        return 2
    if args.command == "nats-config":
        print(mapping_block(Subjects(settings.prefix), settings.partitions), end="")
        return 0
    if args.command in ("node", "up"):
        from driftlock.actors.processes import plan

        try:
            plan(settings)  # the processes' settings: a bad one is a usage error, as above
        except DriftLockError as exc:
            print(f"driftlock: {exc}", file=sys.stderr)
            return 2
    # A node's records name it: the processes of a node write to one log.
    configure_logging(
        settings.log_level, {"node_id": settings.node_id} if args.command == "node" else None
    )
    if args.command == "admin":
        return _create_tenant(settings, args.tenant, args.owner_email, args.plan)
    if args.command == "cluster":
        return _cluster(settings, args.cluster_command, args)
    return _run_service(args.command, settings)


def _create_tenant(settings: Settings, tenant: str, owner_email: str, plan: str) -> int:
    from driftlock.gateway.admin import create_tenant_once

    try:
        creds = uvloop.run(create_tenant_once(settings, tenant, owner_email, plan))
    except DriftLockError as exc:
        print(f"driftlock: {exc}", file=sys.stderr)
        return 1
    print(f"tenant   {creds.tenant}\nemail    {creds.email}\npassword {creds.password}")
    print("(the password is shown once; log in with POST /v1/auth/token)")
    return 0


def _cluster(settings: Settings, action: str, args: argparse.Namespace) -> int:
    from driftlock.cluster.operator import set_draining, show_status

    if action != "status" and not re.fullmatch(NODE_ID_PATTERN, args.node):
        problem = f"NODE {args.node!r}: a node id matches {NODE_ID_PATTERN}"
        print(f"driftlock: {problem}", file=sys.stderr)
        return 2
    try:
        if action == "status":
            print(uvloop.run(show_status(settings, as_json=args.json)))
        else:
            uvloop.run(set_draining(settings, args.node, drain=action == "drain"))
            print(f"{args.node}: {'draining' if action == 'drain' else 'taking partitions'}")
    except (DriftLockError, OSError, TimeoutError) as exc:
        print(f"driftlock: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_service(command: str, settings: Settings) -> int:
    async def node(s: Settings, stop: asyncio.Event) -> None:
        from driftlock.actors.processes import follow_parent, process_count, run_node_processes

        if process_count(s) > 1:
            # Imports no detector: the node only starts and watches its processes.
            await run_node_processes(s, stop)
            return
        from driftlock.actors.node import Node

        follow_parent()
        await Node(s).run(stop)

    async def up(s: Settings, stop: asyncio.Event) -> None:
        from driftlock.up import run_up

        await run_up(s, stop)

    async def gateway(s: Settings, stop: asyncio.Event) -> None:
        from driftlock.gateway.server import GatewayServer

        server = GatewayServer(s)
        url = await server.start()
        log.info("gateway started", extra={"url": url})
        try:
            await stop.wait()
        finally:
            await server.stop()

    async def alerter(s: Settings, stop: asyncio.Event) -> None:
        from driftlock.alerting.service import Alerter, config_from

        await Alerter(config_from(s)).run(stop)

    runners: dict[str, Callable[[Settings, asyncio.Event], Awaitable[None]]] = {
        "up": up,
        "node": node,
        "gateway": gateway,
        "alerter": alerter,
    }
    runner = runners[command]
    try:
        configure_tracing("driftlock" if command == "up" else f"driftlock-{command}")
        uvloop.run(_until_signalled(runner, settings))
    except DriftLockError as exc:
        print(f"driftlock: {exc}", file=sys.stderr)
        return 1
    return 0


async def _until_signalled(
    runner: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner(settings, stop)


if __name__ == "__main__":
    sys.exit(main())
