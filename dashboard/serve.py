"""``hitl-serve``: start the dashboard with Streamlit, bound to localhost unless told otherwise. Shared
on the network, anyone who reaches it could start trainers, so it then needs an access token."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")
TOKEN_ENV = "HITL_TOKEN"


def streamlit_command(host: str, port: int, runs_dir: str | Path, allowed_roots: list[str] = ()) -> list[str]:
    """The ``streamlit run`` command line; the runs folder and allowed roots go to the app after ``--``."""
    # dashboard.streamlit_main is ``streamlit run`` serving a page that knows the server's address
    command = [sys.executable, "-m", "dashboard.streamlit_main", "run", str(APP),
               "--server.address", host, "--server.port", str(port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal", "--"]
    for root in allowed_roots:
        command += ["--allow-root", str(Path(root).resolve())]
    return command + ["--runs-dir", str(Path(runs_dir).resolve())]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="hitl-serve", description="Serve the human-in-the-loop dashboard.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 shares it on the network "
                        "and needs --token)")
    p.add_argument("--port", type=int, default=8501, help="default 8501")
    p.add_argument("--runs-dir", default="checkpoints", help="folder holding the runs (default checkpoints/)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help=f"access token a visitor must enter (default ${TOKEN_ENV}); required with a --host other "
                        "than loopback. Prefer the variable: a flag shows in the process list")
    p.add_argument("--allow-root", action="append", default=[], metavar="PATH",
                   help="a folder whose data sets, checkpoints and config files a page may name (--data-dir, "
                        "--init-from, --config); repeatable. Default: the project's datasets/; the runs folder "
                        "is always allowed")
    args = p.parse_args(argv)
    shared = not is_loopback(args.host)
    if shared and not args.token:
        p.error(f"--host {args.host} shares the dashboard on the network: give an access token with "
                f"${TOKEN_ENV} (or --token) so that only people who know it can start trainers")
    command = streamlit_command(args.host, args.port, args.runs_dir, args.allow_root)
    env = dict(os.environ)
    if args.token:
        env[TOKEN_ENV] = args.token
    access = ("shared on the network; visitors must enter the access token" if shared else
              "this machine only" + ("; visitors must enter the access token" if args.token else ""))
    print(f"dashboard: http://{args.host}:{args.port}  (runs in {command[-1]}; {access})", flush=True)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
