"""The training job's log made readable in a text box, as a terminal would leave it.

Progress bars redraw their line with carriage returns and libraries repeat their warnings: kept raw,
the last lines of the log are mostly noise. No gradio import.
"""

from __future__ import annotations

import re


# a Python warning's first line: "/path/file.py:12: FutureWarning: message"
WARNING_LINE = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$")
# a tqdm bar's state: "desc: 40%|####      | 4/10 [00:02<00:03, 2.00it/s]"
TQDM_LINE = re.compile(r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<rest>.*)$")


def clean_log(text: str, keep: int | None = None) -> str:
    """The log as a terminal would leave it, readable in a text box: the last state of each
    carriage-return-updated line, progress bars as plain lines, each distinct Python warning once
    (its source line dropped); the last `keep` lines."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines, warned, after_warning = [], set(), False
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1].rstrip()
        warning = WARNING_LINE.match(line)
        if warning:
            after_warning = True
            key = (warning.group(1), warning.group(2).strip())
            if key not in warned:
                warned.add(key)
                lines.append(f"{key[0]}: {key[1]} (shown once)")
            continue
        if after_warning and raw.startswith((" ", "\t")):  # the warning's source line
            continue
        after_warning = False
        bar = TQDM_LINE.match(line)
        if bar:
            desc = bar.group("desc").strip().rstrip(":")
            line = f"{desc + ': ' if desc else ''}{bar.group('pct')}% {bar.group('rest')}".strip()
        lines.append(line)
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines[-keep:] if keep else lines)
