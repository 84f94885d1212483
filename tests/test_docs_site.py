"""The documentation: the MkDocs site builds in strict mode (offline), every page is in the nav,
the CLI reference is generated from the parsers, the README stays a five-minute read and its
links resolve on GitHub, and no page teaches the deprecated `--pretrained false` spelling."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
GENERATED = {"cli.md"}  # written by the hook at build time, never committed
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _gen_module() -> ModuleType:
    """scripts/gen_cli_reference.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_cli_reference",
                                                  ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a missing image or a page outside the
    nav is a warning, and strict mode fails on it. No network is needed (theme.font: false)."""
    assert importlib.util.find_spec("material"), "mkdocs-material missing: pip install -e '.[test]'"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    for image in ("report_screenshot.png", "fewshot_probes.png", "progress.svg"):
        assert (site / image).is_file(), image
    cli_page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    from cytotune.cli import build_parser

    for name, _help, _sub in _gen_module()._subcommands(build_parser()):
        assert f"cytotune {name}" in cli_page, name


def test_mkdocs_config_is_offline() -> None:
    """Fonts from Google and the social/privacy plugins fetch from the network: kept off."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False
    assert not {"social", "privacy", "optimize"} & {
        p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])}
    assert "scripts/gen_cli_reference.py" in config["hooks"]


def test_every_doc_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = _nav_pages(config["nav"])
    assert len(in_nav) == len(set(in_nav)), "a page listed twice in the nav"
    on_disk = {p.name for p in DOCS.glob("*.md")} | GENERATED
    assert set(in_nav) == on_disk


def test_cli_reference_is_generated_from_the_parsers() -> None:
    """Every option of every command (and nested command) appears on the generated page, so a
    new flag reaches the docs without anyone writing it twice."""
    from cytotune.cli import build_parser

    page = _gen_module().render()
    assert "do not edit by hand" in page

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        assert f"`{' '.join(path)}`" in page, path
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:  # hidden on purpose (a deprecated alias)
                continue
            for option in action.option_strings:
                assert option in page, (path, option)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])

    walk(build_parser(), ["cytotune"])
    assert not (DOCS / "cli.md").exists(), "docs/cli.md is generated at build time: remove it"


def test_cli_reference_script_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_reference.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == _gen_module().render()


def test_readme_is_a_five_minute_read() -> None:
    text = README.read_text(encoding="utf-8")
    assert 150 <= len(text.splitlines()) <= 200, len(text.splitlines())
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("```bash", 1)[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_links_resolve_on_github() -> None:
    """README links are repository paths (valid on GitHub); an anchor must name a heading; and
    every committed docs page is reachable from the README."""
    text = README.read_text(encoding="utf-8")
    links = [a or b for a, b in LINK.findall(text)]
    linked = {link.partition("#")[0] for link in links}
    missing = {f"docs/{p.name}" for p in DOCS.glob("*.md") if p.name != "index.md"} - linked
    assert not missing, f"README does not link {sorted(missing)}"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to missing {path}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in {_github_slug(h) for h in headings}, link


def test_no_deprecated_pretrained_spelling() -> None:
    pattern = re.compile(r"--pretrained[ =]+(false|true)\b", re.I)
    for path in _markdown_files():
        match = pattern.search(path.read_text(encoding="utf-8"))
        assert match is None, f"{path.relative_to(ROOT)}: {match.group(0)!r}"
