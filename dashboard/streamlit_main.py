"""``python -m dashboard.streamlit_main run dashboard/app.py ...``: ``streamlit run``, with one change to
the page Streamlit serves: it tells the browser where the server is.

Without that, Streamlit's page guesses the server from its own address: opened directly at
``/review`` it first asks ``/review/_stcore/health`` and ``/review/_stcore/host-config``, gets two 404s
(logged as errors in the browser's console on every direct load of a page) and only then tries the
site's root. Here the served ``index.html`` sets ``window.__streamlit.BACKEND_BASE_URL`` (Streamlit's
own setting for pages embedded elsewhere) to the root the server really answers at."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

MARKER = "<!-- hitl: backend base url -->"


def backend_script(base_url_path: str) -> str:
    base = "/" + base_url_path.strip("/") if base_url_path.strip("/") else ""
    return (f"{MARKER}<script>window.__streamlit = Object.assign({{}}, window.__streamlit, "
            f"{{BACKEND_BASE_URL: window.location.origin + {base + '/'!r}}});</script>")


def static_dir_with_base(original: str | Path, base_url_path: str, root: str | Path | None = None) -> Path:
    """A copy of Streamlit's static folder (its entries linked, not copied) whose index.html sets the
    backend's address; made once per Streamlit version and base path, shared by later starts."""
    import hashlib

    import streamlit

    original = Path(original)
    tag = hashlib.sha1(f"{original}|{base_url_path}|{streamlit.__version__}".encode()).hexdigest()[:12]
    root = Path(root or tempfile.gettempdir())
    target = root / f"hitl-streamlit-static-{os.getuid() if hasattr(os, 'getuid') else 0}-{tag}"
    if (target / "index.html").is_file():
        return target
    building = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=root))
    for entry in original.iterdir():
        if entry.name != "index.html":
            (building / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    html = (original / "index.html").read_text(encoding="utf-8")
    head = html.index("<head>") + len("<head>")
    (building / "index.html").write_text(html[:head] + backend_script(base_url_path) + html[head:], encoding="utf-8")
    try:
        building.rename(target)
    except OSError:  # another start made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return target


def install() -> None:
    """Make Streamlit's server serve the static folder with the backend's address."""
    from streamlit import config, file_util

    original = file_util.get_static_dir

    def get_static_dir() -> str:
        try:
            return str(static_dir_with_base(original(), config.get_option("server.baseUrlPath") or ""))
        except OSError:
            return original()  # the console errors come back, the dashboard still works

    file_util.get_static_dir = get_static_dir


def main() -> None:
    install()
    from streamlit.web import cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
