"""Output formats, as cliff/OSC give them: table, json, yaml, value."""

import json

import yaml

FORMATS = ("table", "json", "yaml", "value")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def table(columns, rows):
    """A plain ASCII grid table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa
    out = [sep, line(columns), sep] + [line(r) for r in cells] + [sep]
    return "\n".join(out)


def emit_list(fmt, columns, rows, stream):
    """A list of records: ``columns`` names, ``rows`` lists of values."""
    if fmt == "json":
        stream.write(json.dumps([dict(zip(columns, r)) for r in rows], indent=2,
                                ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        stream.write(yaml.safe_dump([dict(zip(columns, r)) for r in rows], sort_keys=False,
                                    allow_unicode=True))
    elif fmt == "value":
        for r in rows:
            stream.write(" ".join(_cell(v) for v in r) + "\n")
    else:
        stream.write(table(columns, rows) + "\n")


def emit_doc(fmt, doc, stream, summary=None):
    """One document (a manifest): json/yaml print it whole; table/value print
    ``summary`` (field, value) pairs."""
    if fmt == "json":
        stream.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        stream.write(yaml.safe_dump(doc, sort_keys=True, allow_unicode=True))
    elif fmt == "value":
        for _, v in summary:
            stream.write(_cell(v) + "\n")
    else:
        stream.write(table(["Field", "Value"], [(k, _cell(v)) for k, v in summary]) + "\n")
