"""``hitl-serve``: start the dashboard with Streamlit, bound to localhost unless told otherwise."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def streamlit_command(host: str, port: int, runs_dir: str | Path) -> list[str]:
    """The ``streamlit run`` command line; the runs folder goes to the app after ``--``."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            "--", "--runs-dir", str(Path(runs_dir).resolve())]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="hitl-serve", description="Serve the human-in-the-loop dashboard.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 shares it on the network)")
    p.add_argument("--port", type=int, default=8501, help="default 8501")
    p.add_argument("--runs-dir", default="checkpoints", help="folder holding the runs (default checkpoints/)")
    args = p.parse_args(argv)
    command = streamlit_command(args.host, args.port, args.runs_dir)
    print(f"dashboard: http://{args.host}:{args.port}  (runs in {command[-1]})", flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
