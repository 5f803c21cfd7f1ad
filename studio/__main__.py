"""`python -m studio`: start the Gradio studio.

    python -m studio                      # http://127.0.0.1:7860, no password
    python -m studio --host 0.0.0.0       # reachable from outside: password required
    STUDIO_PASSWORD=... python -m studio --host 0.0.0.0 --port 8080

Any bind other than localhost (or --share) requires a password: `STUDIO_PASSWORD`, else one is
generated and printed once below. The user name is `studio`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config

from .auth import PASSWORD_ENV, resolve_credentials


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.studio.host
    port = args.port or config.studio.port
    credentials = resolve_credentials(host, share=args.share)

    from .app import build_app, launch_options  # gradio import is slow: after argument errors

    demo = build_app(config)
    print(f"Finnish TTS Studio: {_browse_url(host, port)}  (listening on {host}:{port})", flush=True)
    if credentials is None:
        print("No password: only this machine can reach the studio.", flush=True)
    elif credentials.generated:
        print(f"Log in as user '{credentials.user}' with password: {credentials.password}\n"
              f"(generated for this start; set {PASSWORD_ENV} to choose your own)", flush=True)
    else:
        print(f"Log in as user '{credentials.user}' with the password from {PASSWORD_ENV}.", flush=True)
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
