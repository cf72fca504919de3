"""The `pgwarden` command line: run, check, passwd."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys

from proxy.config import ConfigError, load_config


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"pgwarden: the config has {len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    _setup_logging(config.log.level, config.log.format)
    from proxy.server import serve
    try:
        serve(config)
    except OSError as exc:
        print(f"pgwarden: cannot listen on {config.listen.host}:{config.listen.port}: "
              f"{exc.strerror or exc} (is another pgwarden or PgBouncer running there? "
              f"change listen.port)", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    print(f"{args.config}: ok")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from proxy.auth import scram_verifier
    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
    print(scram_verifier(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgwarden", description=(
        "A transparent PostgreSQL proxy that enforces data policy."))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("--config", required=True, help="the proxy config file (YAML)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate the config; exit 1 listing every error")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)
    passwd = sub.add_parser("passwd", help="print a SCRAM verifier for a password read from stdin")
    passwd.set_defaults(func=cmd_passwd)
    args = parser.parse_args(argv)
    return args.func(args)
