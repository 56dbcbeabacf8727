"""`--pdf`: the HTML printed by Debian's Chromium (`chromium --headless --print-to-pdf`).

The same engine that shows the page prints it, so the PDF has the pages a person gets
with the browser's print dialog (the print CSS of render.py decides them). No browser is
downloaded: the `chromium` package is a system dependency (`make chromium`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_ENV = "CHARGECAP_CHROMIUM"
PRINT_TIMEOUT_SECONDS = 180


class PdfError(Exception):
    pass


def chromium_path() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not found:
        raise PdfError("Chromium not found: install Debian's chromium package "
                       f"(make chromium) or set {CHROMIUM_ENV}")
    return found


def print_to_pdf(html_path: Path, pdf_path: Path) -> None:
    binary = chromium_path()
    with tempfile.TemporaryDirectory(prefix="chargecap-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-pdf-header-footer", f"--user-data-dir={profile}",
               f"--print-to-pdf={pdf_path.resolve()}", html_path.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=PRINT_TIMEOUT_SECONDS,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise PdfError(f"Chromium did not print within {PRINT_TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0 or not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise PdfError(f"Chromium failed to print (exit {done.returncode}): {' | '.join(tail)}")
