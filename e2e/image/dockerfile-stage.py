#!/usr/bin/env python3
"""Print, as JSON, what a target stage of the Dockerfile puts into its image.

    e2e/image/dockerfile-stage.py Dockerfile kss

e2e/images.sh assembles the kss and kss-operator images without Docker from this:
the Dockerfile stays the one place that says which binaries go where, with which
owner, labels, environment, user, exposed ports, entrypoint and command. The stage's
ancestors (FROM <stage>) are followed up to the first FROM that is not a stage of the
file (the external base, e.g. distroless), whose contents e2e/image/runtime-base.list
describes. Only the instructions the runtime stages use are understood (ARG, FROM,
LABEL, ENV, COPY, USER, EXPOSE, ENTRYPOINT, CMD, WORKDIR); any other one in a stage
on the target's chain is an error, so that a new instruction cannot be silently lost.
"""

import json
import re
import shlex
import sys


def logical_lines(text):
    """Instructions with their continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def substitute(value, args):
    def repl(m):
        name = m.group(1) or m.group(2)
        return args.get(name, "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse(path):
    global_args, stages, cur = {}, {}, None
    for line in logical_lines(open(path, encoding="utf-8").read()):
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            cur = {"from": words[0], "name": name, "args": dict(global_args), "lines": []}
            if name:
                stages[name] = cur
            continue
        if cur is None:
            if instr == "ARG":
                k, _, v = rest.partition("=")
                global_args[k] = v
            continue
        cur["lines"].append((instr, rest))
    return stages


def json_or_shell(rest):
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def stage_image(stages, target):
    chain = []
    name = target
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["from"]
    if not chain:
        sys.exit(f"no stage {target!r}")
    chain.reverse()
    img = {
        "target": target,
        "base": chain[0]["from"],
        "labels": {},
        "env": {},
        "user": "",
        "workdir": "",
        "exposed_ports": [],
        "entrypoint": [],
        "cmd": [],
        "copies": [],
    }
    for st in chain:
        args = st["args"]
        for instr, rest in st["lines"]:
            if instr == "ARG":
                k, eq, v = rest.partition("=")
                if eq:
                    args[k] = substitute(v, args)
                elif k not in args:
                    args[k] = ""
            elif instr == "LABEL":
                for word in shlex.split(substitute(rest, args)):
                    k, _, v = word.partition("=")
                    img["labels"][k] = v
            elif instr == "ENV":
                for word in shlex.split(substitute(rest, args)):
                    k, _, v = word.partition("=")
                    img["env"][k] = v
            elif instr == "USER":
                img["user"] = substitute(rest, args)
            elif instr == "WORKDIR":
                img["workdir"] = substitute(rest, args)
            elif instr == "EXPOSE":
                for p in substitute(rest, args).split():
                    img["exposed_ports"].append(p if "/" in p else p + "/tcp")
            elif instr == "ENTRYPOINT":
                img["entrypoint"] = json_or_shell(rest)
                img["cmd"] = []
            elif instr == "CMD":
                img["cmd"] = json_or_shell(rest)
            elif instr == "COPY":
                words = shlex.split(substitute(rest, args))
                opts = {}
                while words and words[0].startswith("--"):
                    k, _, v = words.pop(0)[2:].partition("=")
                    opts[k] = v
                img["copies"].append(
                    {
                        "from": opts.get("from", ""),
                        "chown": opts.get("chown", ""),
                        "chmod": opts.get("chmod", ""),
                        "src": words[:-1],
                        "dst": words[-1],
                    }
                )
            else:
                sys.exit(f"stage {st['name']}: instruction {instr} not understood by {sys.argv[0]}")
    return img


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: dockerfile-stage.py DOCKERFILE TARGET")
    print(json.dumps(stage_image(parse(sys.argv[1]), sys.argv[2]), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
