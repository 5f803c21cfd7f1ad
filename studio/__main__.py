"""`python -m studio`: start the Gradio studio.

    python -m studio                      # http://127.0.0.1:7860, no password
    python -m studio --host 0.0.0.0       # reachable from outside: password required
    STUDIO_PASSWORD=... python -m studio --host 0.0.0.0 --port 8080

Any bind other than localhost (or --share) requires a password: `STUDIO_PASSWORD` (at least 12
characters), else one is generated and written to `<workspace>/studio-password.txt` (mode 0600;
shown once on the terminal too). The user name is `studio`. Failed logins are logged to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.data.cleanup import remove_stale_temp
from pipeline.config import ConfigError, load_config

from studio.auth import PASSWORD_ENV, Credentials, PasswordError, forget_password, resolve_credentials, save_password


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m studio", description="Start the Finnish TTS Studio.")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="run configuration (default: launchable.yaml in the project)")
    parser.add_argument("--host", default=None,
                        help="address to bind (default: studio.host from the config, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: studio.port from the config, 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public gradio share link (password required)")
    return parser.parse_args(argv)


def _browse_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}"


def login_lines(credentials: Credentials | None, saved: Path | None, tty: bool) -> list[str]:
    """What start-up says about logging in. A generated password appears only on a terminal:
    launchers capture stdout in logs that others may read."""
    if credentials is None:
        return ["No password: only this machine can reach the studio."]
    if not credentials.generated:
        return [f"Log in as user '{credentials.user}' with the password from {PASSWORD_ENV}."]
    lines = [f"Log in as user '{credentials.user}' with the password in {saved}",
             f"(generated for this start, readable only by you; set {PASSWORD_ENV} to choose your own)"]
    if tty:
        lines.append(f"Password: {credentials.password}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.studio.host
    port = args.port or config.studio.port
    try:
        credentials = resolve_credentials(host, share=args.share)
    except PasswordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:  # what a killed process left behind (half extractions, temp files); never a reason not to start
        remove_stale_temp(config.workspace)
    except OSError:
        pass
    # Failed logins are reported through logging (studio.login): give them a time and a level.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from studio.app import build_app, launch_options  # gradio import is slow: after argument errors

    demo = build_app(config)
    saved = None
    try:
        if credentials is not None and credentials.generated:
            saved = save_password(credentials.password, config.workspace)
        else:
            forget_password(config.workspace)
    except OSError as exc:
        print(f"error: cannot write the password file in the workspace {config.workspace}: {exc.strerror}",
              file=sys.stderr)
        return 2
    print(f"Finnish TTS Studio: {_browse_url(host, port)}  (listening on {host}:{port})", flush=True)
    for line in login_lines(credentials, saved, tty=sys.stdout.isatty()):
        print(line, flush=True)
    print(f"Workspace: {config.workspace}", flush=True)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=host,
        server_port=port,
        share=args.share,
        auth=credentials.as_gradio_auth() if credentials else None,
        auth_message="Finnish TTS Studio — log in as 'studio'." if credentials else None,
        inbrowser=False,
        **launch_options(config),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
