"""``pushd webpush-keys``: create the VAPID key pair if absent, print its public key.

The public key goes to two places: the web page (``PushManager.subscribe`` with
``applicationServerKey``) and Kamailio (``#!define PUSHGATE_VAPID_PUBLIC_KEY``), which
advertises it in ``Feature-Caps: *;+sip.pns="webpush";+sip.vapid="<key>"``.
"""

from __future__ import annotations

import sys

from pushd import config as config_mod
from pushd import webpush_keys as keys

EXIT_OK = 0
EXIT_CONFIG = 2


def webpush_keys(path: str) -> int:
    try:
        # The key file may not exist yet: that is what this command is for.
        config = config_mod.load(path, check_files=False)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.webpush is None:
        print(f"config error: {path}: webpush: section required", file=sys.stderr)
        return EXIT_CONFIG
    key_file = config.webpush.vapid_private_key_file
    try:
        key = keys.load_private_key(key_file.read_bytes())
        print(f"using the VAPID key in {key_file}", file=sys.stderr)
    except FileNotFoundError:
        try:
            key = keys.generate(key_file)
        except OSError as exc:
            print(
                f"config error: {path}: webpush.vapid_private_key_file: cannot create "
                f"{key_file}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        print(f"created a new VAPID key in {key_file} (mode 600)", file=sys.stderr)
    except OSError as exc:
        print(
            f"config error: {path}: webpush.vapid_private_key_file: cannot read {key_file}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except keys.VapidKeyError as exc:
        print(
            f"config error: {path}: webpush.vapid_private_key_file: {key_file} {exc}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    # stdout: the key alone, for scripts (PUSHGATE_VAPID_PUBLIC_KEY, the page's config).
    print(keys.public_key_b64(key))
    return EXIT_OK
