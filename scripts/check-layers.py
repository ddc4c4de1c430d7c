#!/usr/bin/env python3
"""The layer check of `make lint` (issue 12): every module of `src/` may import only from the
layers below its own, never sideways or upward. Prints each offending import with its file and
line and exits 1; exits 0 when the tree holds the rule.

The rule table below is the one drawn in docs/architecture.md; change both together.
`dataloom_codec` (crates/codec) sits below every layer. `lib.rs` and `main.rs` are exempt: the
first only declares the modules and the crate surface, the second is the binary.
"""
import pathlib
import re
import sys

# layer -> modules of src/ in it (a module is a directory or a top-level file of src/).
LAYERS = {
    1: ["config", "metrics"],
    2: ["model"],
    3: ["store", "schema"],
    4: ["broker", "auth"],
    5: ["session"],
    6: ["net", "http", "sys"],
    7: ["server", "cli", "notify"],
}
EXEMPT = {"lib.rs", "main.rs"}

LAYER_OF = {m: n for n, mods in LAYERS.items() for m in mods}

def module_of(path: pathlib.Path, src: pathlib.Path) -> str:
    return path.relative_to(src).parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    """Blanks `//` comments (doc comments included), keeping every line where it was."""
    return "\n".join(line.split("//", 1)[0] for line in text.split("\n"))


def first_segments(group: str):
    """`a::x, b::{c, d}, e` -> a, b, e (items at the top level of a `{...}` group)."""
    depth, cur = 0, ""
    for ch in group + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            name = cur.strip().split("::")[0].strip()
            if name:
                yield name
            cur = ""
        else:
            cur += ch


def imports(text: str):
    """(line, module, statement) for every `crate::module` path, `use crate::{...}` groups too."""
    code = strip_comments(text)
    for m in re.finditer(r"\bcrate::", code):
        pos = m.end()
        line = code.count("\n", 0, m.start()) + 1
        stmt = code[m.start():].split("\n", 1)[0].strip()
        if code.startswith("{", pos):
            depth, end = 0, pos
            while end < len(code):
                depth += {"{": 1, "}": -1}.get(code[end], 0)
                if depth == 0:
                    break
                end += 1
            for name in first_segments(code[pos + 1 : end]):
                yield line, name, stmt
        else:
            name = re.match(r"[a-z_][a-z0-9_]*", code[pos:])
            if name:
                yield line, name.group(0), stmt


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    src = root / "src"
    errors = []
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src)
        if len(rel.parts) == 1 and rel.name in EXEMPT:
            continue
        own = module_of(path, src)
        if own not in LAYER_OF:
            errors.append(f"{path.relative_to(root)}: module `{own}` has no layer in scripts/check-layers.py")
            continue
        for lineno, target, stmt in imports(path.read_text()):
            if target == own or target in ("self", "super"):
                continue
            where = f"{path.relative_to(root)}:{lineno}"
            if target not in LAYER_OF:
                errors.append(f"{where}: `crate::{target}` is no module of the layer table")
                continue
            mine, theirs = LAYER_OF[own], LAYER_OF[target]
            if theirs >= mine:
                how = "sideways" if theirs == mine else "upward"
                errors.append(f"{where}: `{own}` (layer {mine}) imports `{target}` (layer {theirs}) {how}: {stmt}")
    for e in errors:
        print(e)
    if errors:
        print(f"layer check: {len(errors)} import(s) break the rule table of scripts/check-layers.py")
        return 1
    print("layer check: every module imports only from layers below it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
