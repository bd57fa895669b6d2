#!/usr/bin/env python3
"""Generate cgsnap(1) from the CLI's own argparse parser, so the man page and
``--help`` cannot disagree.  ``tools/manpage.py > doc/man/cgsnap.1`` (``make
man``); tests/unit/test_packaging.py checks the committed page is current and
that man(1) renders it."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgsnap import __version__  # noqa: E402
from cgsnap.cli import main as cli  # noqa: E402


def esc(text):
    """Roff-escape one line of text."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return ("\\&" + text) if text.startswith((".", "'")) else text


def para(text):
    return "\n".join(esc(line) for line in text.strip().splitlines()) + "\n"


def _opt_line(action):
    names = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings) or \
        f"\\fI{esc(action.metavar or action.dest)}\\fR"
    if action.option_strings and action.nargs != 0:
        names += f" \\fI{esc(str(action.metavar or action.dest.upper()))}\\fR"
    return names


def options(parser):
    out = []
    for group in parser._action_groups:
        acts = [a for a in group._group_actions
                if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
        if not acts:
            continue
        if group.title not in ("positional arguments", "options", "optional arguments"):
            out.append(f".SS {esc(group.title)}\n")
            if group.description:
                out.append(para(group.description))
        for a in acts:
            helptext = (a.help or "") % {"default": a.default, "prog": parser.prog} \
                if "%(" in (a.help or "") else (a.help or "")
            out.append(f".TP\n{_opt_line(a)}\n{para(helptext)}")
    return "".join(out)


def render():
    # argparse wraps usage lines to the terminal: the page must not depend on it
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        return _render()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _render():
    p = cli._parser()
    out = [f'.TH CGSNAP 1 "" "cgsnap {__version__}" "User Commands"\n',
           ".SH NAME\ncgsnap \\- instance\\-level, consistency\\-group snapshots of "
           "virtual machines\n",
           ".SH SYNOPSIS\n\\fBcgsnap\\fR [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR "
           "[\\fIOPTIONS\\fR]\n",
           ".SH DESCRIPTION\n", para(cli.DESCRIPTION),
           ".SH GLOBAL OPTIONS\n", options(p), ".SH COMMANDS\n"]
    for name, sub in p.commands.items():
        out.append(f'.SS "cgsnap {esc(name)}"\n')
        out.append(para(sub.description or sub.format_usage().replace("usage: ", "")))
        out.append(".PP\nUsage:\n.nf\n" + esc(sub.format_usage().replace("usage: ", "").strip())
                   + "\n.fi\n")
        out.append(options(sub).replace(".SS ", ".TP\n\\fB").replace("\n", "\n", 1))
    out.append(".SH EXIT STATUS\n.nf\n" + "\n".join(
        esc(line) for line in cli.EPILOG.splitlines()[1:]) + "\n.fi\n")
    out.append(".SH FILES\n.TP\n/etc/cgsnap/cgsnap.conf\nconfiguration (see "
               "etc/cgsnap/cgsnap.conf.sample)\n.TP\n/var/lib/cgsnap\nthe state directory: "
               "catalog, logbooks, locks, guard records\n")
    out.append(".SH SEE ALSO\n\\fBvirsh\\fR(1), \\fBopenstack\\fR(1), README.md\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
