"""``python -m pushd``: run the daemon, check a config, or send one test push.

    python -m pushd --config /etc/pushd/pushd.yaml
    python -m pushd --check-config /etc/pushd/pushd.yaml
    python -m pushd test-push --config FILE --provider apns|apns.dev|fcm|webpush \\
        --prid TOKEN [--param PARAM] [--kind call|message|cancel|missed|refresh]
    python -m pushd webpush-keys --config FILE

Exit codes: 0 success (test-push: delivered), 1 failure (test-push: any other verdict),
2 configuration error.
"""

from __future__ import annotations

import argparse
import sys

from pushd import app, webpush_cli
from pushd.model import PushKind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushd", description="Pushgate push daemon: APNs/FCM wake-up pushes for Kamailio."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--config", metavar="FILE", help="run the daemon with this config")
    mode.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE and its credential files, send nothing; exit 0 if OK, 2 if not",
    )
    sub = parser.add_subparsers(dest="command")
    tp = sub.add_parser("test-push", help="send one push and print the provider's verdict")
    # SUPPRESS: a --config given before the subcommand must survive the subparser's default.
    tp.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    tp.add_argument("--provider", required=True, choices=("apns", "apns.dev", "fcm", "webpush"))
    tp.add_argument(
        "--prid", required=True, metavar="TOKEN", help="pn-prid (device token, subscription URI)"
    )
    tp.add_argument(
        "--param",
        default="",
        help="pn-param (APNs <TeamID>.<bundle>[.voip], FCM project; none for webpush)",
    )
    tp.add_argument("--kind", default=PushKind.CALL.value, choices=[k.value for k in PushKind])
    wk = sub.add_parser(
        "webpush-keys",
        help="create webpush.vapid_private_key_file if absent; print the VAPID public key",
    )
    wk.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "test-push":
        if not getattr(args, "config", None):
            parser.error("test-push needs --config FILE")
        return app.send_test_push(args.config, args.provider, args.prid, args.param, args.kind)
    if args.command == "webpush-keys":
        if not getattr(args, "config", None):
            parser.error("webpush-keys needs --config FILE")
        return webpush_cli.webpush_keys(args.config)
    if args.check_config:
        return app.check_config(args.check_config)
    if args.config:
        return app.serve(args.config)
    parser.error("give --config FILE, --check-config FILE or test-push")


if __name__ == "__main__":
    sys.exit(main())
