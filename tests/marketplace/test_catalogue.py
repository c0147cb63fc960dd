"""The HTML catalogue (``GET /``, ``GET /p/{id}``) against a real registry on a loopback port:
over plain HTTP (status, headers, what the markup may contain), then in a real headless
browser (Debian's ``chromium``), which must not run, load or link anything a hostile publisher
put in a plugin's name, description, links or readme.

The hostile checks parse the page and hold it to a whitelist (elements, attributes, link
targets) rather than looking for one payload's spelling: a new trick that yields any element,
event attribute or link the catalogue's own markup does not have fails them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

import anyio
import httpx2
import pytest

from cordon.runtime._marketplace._client import RegistryClient
from cordon.runtime._marketplace._html import MAX_README_CHARS, render_readme, safe_url
from cordon.runtime._marketplace._pages import PAGE_SIZE, SECURITY_HEADERS
from cordon.runtime._packages._archive import pack
from tests.marketplace.conftest import package
from tests.marketplace.serving import Server, running_registry
from tests.packages.installing import plugin_folder

ROOT: Final = Path(__file__).resolve().parents[2]
#: Screenshots are copied here for a person to look at (ignored by git).
ARTIFACTS: Final = ROOT / ".artifacts"
#: Every request and every browser run has a deadline: a hung server or browser fails the
#: test, never hangs it. Chromium's first start on a busy 2-CPU box takes seconds.
DEADLINE: Final = 60.0
BROWSER_TIMEOUT: Final = 120.0
BIDI: Final = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
#: The only elements the catalogue's own markup uses.
ALLOWED_TAGS: Final = {
    "html", "head", "meta", "title", "link", "body", "header", "main", "a", "h1", "h2", "h3",
    "h4", "h5", "h6", "p", "div", "span", "strong", "code", "pre", "ul", "li", "table",
    "thead", "tbody", "tr", "th", "td", "section", "form", "input", "select", "option",
    "button", "nav",
}  # fmt: skip
HOSTILE_README: Final = (
    "# Weather <script>document.title='pwned-h'</script>\n\n"
    "<script>document.title='pwned'</script>\n"
    "<img src=x onerror=\"document.title='pwned-img'\">\n"
    '<img src="https://evil.example/track.png">\n'
    "[click me](javascript:document.title='pwned-link')\n"
    '<a href="javascript:alert(1)">raw link</a>\n'
    "<iframe src=//evil.example></iframe><style>body{display:none}</style>\n"
    "Invoice \u202egnp.exe and \u2066isolated\u2069 text\x00\x07\n\n"
    "- item <b onmouseover=alert(1)>bold</b>\n\n"
    "```\n</code></pre><script>alert('fence')</script>\n```\n\n"
    + ("A" * 99 + "\n")
    * 10_000  # 1 MB: the registry keeps 256 KiB, the page shows less
)


class Markup(HTMLParser):
    """Every element, attribute and link in a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(name, value or "") for name, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Markup:
    markup = Markup()
    markup.feed(page)
    markup.close()
    return markup


def assert_inert(page: str) -> None:
    """``page`` holds only the catalogue's own elements, no event attributes, no link or
    resource from anywhere but this registry or a plain http(s) link, no bidi controls."""
    markup = parse(page)
    assert set(markup.tags) <= ALLOWED_TAGS, set(markup.tags) - ALLOWED_TAGS
    names = {name for name, _ in markup.attrs}
    assert not {n for n in names if n.startswith("on")}, names
    assert not names & {"style", "srcdoc", "formaction", "src"}, names
    for name, value in markup.attrs:
        if name in ("href", "action"):
            assert value.startswith(("/", "https://", "http://")) and not value.startswith("//"), (
                name,
                value,
            )
    assert not any(c in page for c in BIDI)
    assert "\x00" not in page and "\x07" not in page


@dataclass
class Catalogue:
    server: Server
    url: str


def hostile_package(tmp: Path) -> Path:
    folder = plugin_folder(tmp / "src", "weather", "2.0.0", permissions=("log", "exec:curl"))
    (folder / "weather_main.py").rename(folder / "entry_main.py")
    manifest = folder / "plugin.toml"
    text = manifest.read_text().replace('"weather_main:plugin"', '"entry_main:plugin"')
    fields = (
        "description = \"Forecasts <script>document.title='pwned-d'</script> \\u202eexe.txt\"\n"
        "keywords = ['forecast', '<img src=x onerror=alert(1)>']\n"
        "homepage = 'https://weather.example/home'\n"
        "authors = [{ name = '<b>Mallory</b>' }]\n"
    )
    manifest.write_text(text.replace("[plugin]\n", "[plugin]\n" + fields, 1))
    (folder / "README.md").write_text(HOSTILE_README)
    return pack(folder, tmp / "dist")


#: More plugins than one page holds, so the listing has a second page.
_WORDS: Final = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
)  # fmt: skip
FILLER: Final = [f"filler-{w}" for w in _WORDS]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    """One registry for the module, never changed by a test: ``docker``, the hostile
    ``weather`` (published with a ``javascript:`` repository), ``sundial`` (1.1.0 yanked with
    markup in the reason) and enough fillers for two pages."""
    assert len(FILLER) + 3 > PAGE_SIZE
    tmp = tmp_path_factory.mktemp("catalogue")
    with running_registry(tmp / "registry") as server:
        ids = ["docker", "weather", "sundial", *FILLER]
        token = server.token(*ids)

        async def publish_all() -> None:
            with anyio.fail_after(DEADLINE * 3):
                async with RegistryClient(server.url) as reg:
                    await reg.publish(
                        package(tmp / "docker", "docker", description="Run containers"),
                        token,
                        category="devops",
                    )
                    await reg.publish(
                        hostile_package(tmp / "weather"),
                        token,
                        category="data",
                        repository="javascript:document.title='pwned-repo'",
                    )
                    for version in ("1.0.0", "1.1.0"):
                        await reg.publish(
                            package(tmp / f"sundial-{version}", "sundial", version), token
                        )
                    await reg.yank("sundial", "1.1.0", "<b>broken</b> build", token)
                    for i, pid in enumerate(FILLER):
                        await reg.publish(package(tmp / pid, pid, description=f"Filler {i}"), token)

        anyio.run(publish_all)
        yield Catalogue(server=server, url=server.url)


def get(url: str) -> httpx2.Response:
    with httpx2.Client(trust_env=False, timeout=DEADLINE) as http:
        return http.get(url)


def assert_secure_headers(r: httpx2.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (name, r.headers)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp


# -- over HTTP ------------------------------------------------------------------------------


def test_the_front_page_lists_plugins_by_downloads_with_their_permissions_and_a_second_page(
    catalogue: Catalogue,
) -> None:
    r = get(catalogue.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_secure_headers(r)
    assert_inert(r.text)
    assert r.text.count('<li><a href="/p/') == PAGE_SIZE
    assert "page 1 of 2" in r.text and "/?sort=downloads&amp;page=2" in r.text
    second = get(catalogue.url + "/?sort=downloads&page=2")
    assert second.status_code == 200 and "page 2 of 2" in second.text
    shown = second.text.count('<li><a href="/p/')
    assert shown == len(FILLER) + 3 - PAGE_SIZE
    assert '<span class="perm">log</span>' in r.text


def test_sorting_by_name_orders_the_list_alphabetically(catalogue: Catalogue) -> None:
    r = get(catalogue.url + "/?sort=name")
    ids = [v.removeprefix("/p/") for n, v in parse(r.text).attrs if n == "href" and "/p/" in v]
    assert ids == sorted(ids) and ids[0] == "docker"


def test_a_search_with_a_typo_finds_the_plugin_and_a_category_narrows_it(
    catalogue: Catalogue,
) -> None:
    r = get(catalogue.url + "/?q=dokcer")
    assert r.status_code == 200
    first = next(v for n, v in parse(r.text).attrs if n == "href" and v.startswith("/p/"))
    assert first == "/p/docker"
    assert 'value="dokcer"' in r.text  # the form keeps the query
    narrowed = get(catalogue.url + "/?q=dokcer&category=data")
    assert "/p/docker" not in narrowed.text and "Nothing found" in narrowed.text


def test_a_plugin_page_shows_permissions_versions_downloads_rating_and_safe_links(
    catalogue: Catalogue,
) -> None:
    r = get(catalogue.url + "/p/weather")
    assert r.status_code == 200
    assert_secure_headers(r)
    page = r.text
    perms = page.index('<section class="perms">')
    assert page.index("Versions") > perms < page.index("Readme")  # permissions come first
    assert '<span class="perm">exec:curl</span>' in page[perms:]
    assert "<code>2.0.0</code>" in page and "0 downloads" in page and "not rated yet" in page
    assert '<a href="https://weather.example/home"' in page
    assert "pwned-repo" not in page  # a javascript: repository is not even shown
    assert "cordon plugin install weather" in page


def test_a_hostile_readme_name_and_keywords_come_out_as_inert_text(catalogue: Catalogue) -> None:
    r = get(catalogue.url + "/p/weather")
    page = r.text
    assert_inert(page)
    text = "".join(parse(page).text)
    # Shown as the characters the publisher typed, not dropped: a reader sees the attempt.
    assert "<script>document.title='pwned'</script>" in text
    assert "<img src=x onerror=\"document.title='pwned-img'\">" in text
    assert "[click me](javascript:document.title='pwned-link')" in text
    assert "</code></pre><script>alert('fence')</script>" in text
    assert "<b>Mallory</b>" in text
    assert "Invoice \ufffdgnp.exe" in text
    # 1 MB of readme: the page shows a bounded part and says so.
    assert len(r.content) < 300_000
    assert "The readme is cut here" in page


def test_a_yanked_version_is_marked_with_its_reason(catalogue: Catalogue) -> None:
    page = get(catalogue.url + "/p/sundial").text
    assert '<span class="yanked">yanked</span>: &lt;b&gt;broken&lt;/b&gt; build' in page
    assert page.count('class="yanked"') == 1
    assert "<code>1.1.0</code>" in page and "<code>1.0.0</code>" in page
    assert "cordon plugin install sundial" in page


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/p/no-such-plugin", 404),
        ("/p/..%2F..%2Fetc%2Fpasswd", 400),
        ("/p/%3Cscript%3E", 400),
        ("/?sort=evil", 400),
        ("/?page=0", 400),
        ("/?page=99999999", 400),
        ("/?category=..%2F", 400),
        ("/?q=" + "x" * 201, 400),
    ],
)
def test_an_unknown_plugin_or_a_bad_parameter_is_an_html_error_page(
    catalogue: Catalogue, path: str, status: int
) -> None:
    r = get(catalogue.url + path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert_secure_headers(r)
    assert_inert(r.text)
    assert catalogue.server.alive()
    assert get(catalogue.url + "/").status_code == 200


def test_fts_syntax_in_a_search_is_text(catalogue: Catalogue) -> None:
    for q in ('"', "NEAR(a b)", "docker*", "id:docker OR 1", "'; DROP TABLE plugins; --"):
        r = get(catalogue.url + "/?" + httpx2.QueryParams({"q": q}).__str__())
        assert r.status_code == 200, (q, r.text)
        assert_inert(r.text)


def test_the_stylesheet_is_served_with_the_same_headers(catalogue: Catalogue) -> None:
    r = get(catalogue.url + "/assets/catalogue.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert_secure_headers(r)


# -- the renderer, on every input of a kind ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:x",
        "//evil.example/x",
        "/local/path",
        "https:/no-host",
        "https://",
        "https://ex ample.org",
        "https://example.org/\u202egnp.exe",
        "https://example.org/\nx",
        "ftp://example.org",
        "https://" + "a" * 600 + ".org",
    ],
)
def test_only_an_absolute_http_url_with_a_host_becomes_a_link(url: str) -> None:
    assert safe_url(url) is None
    assert safe_url("https://example.org/a?b=c#d") == "https://example.org/a?b=c#d"
    assert safe_url("http://example.org") == "http://example.org"


def test_any_readme_renders_to_the_renderers_own_markup_only() -> None:
    # Random text over the characters markup is made of: whatever the order, the output holds
    # only the renderer's elements, no attribute but its note's class, and no raw controls.
    rng = random.Random(1234)
    alphabet = [
        *"<>\"'&=/:;!-#*`~[]() \t\n",
        "\n\n",
        "```",
        "script",
        "img",
        "on",
        "a",
        "href",
        "javascript",
        "\u202e",
        "\u2066",
        "\x00",
        "\r",
        "&#60;",
        "<!--",
    ]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        out = render_readme(text)
        markup = parse(out)
        assert set(markup.tags) <= {"h3", "h4", "h5", "h6", "p", "ul", "li", "pre", "code"}, (
            text,
            out,
        )
        assert markup.attrs == [], (text, out)
        assert not any(c in out for c in BIDI + "\x00\r"), (text, out)
        assert "<!--" not in out


def test_a_readme_over_the_page_limit_is_cut_with_a_note() -> None:
    out = render_readme("x" * (MAX_README_CHARS + 1))
    assert out.count("x") < MAX_README_CHARS + 10 and "The readme is cut here" in out
    assert "cut here" not in render_readme("x" * MAX_README_CHARS)


# -- in a real browser ----------------------------------------------------------------------


def chromium() -> str:
    """Debian's chromium; missing is a failure in CI (``.ci/run`` installs it) and a skip
    elsewhere."""
    path = shutil.which("chromium")
    if path is None:
        why = "chromium is not installed (apt-get install chromium; with CI set this fails)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the browser tests")
        pytest.skip(why)
    return path


def browser_processes(profile: Path) -> list[int]:
    """Processes whose command line names ``profile`` (the run's own user data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(profile).encode() in cmdline:
            found.append(int(entry.name))
    return found


def run_browser(tmp_path: Path, *args: str) -> str:
    """Run headless chromium with ``args`` under a deadline in its own process group, which
    is killed whatever happens (no renderer or zygote is left behind); its stdout."""
    profile = tmp_path / "chromium-profile"
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    left = browser_processes(profile)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"chromium left processes behind: {left}"
    return out.decode()


def test_in_a_browser_the_search_results_show_the_matching_plugin(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    dom = run_browser(tmp_path, "--dump-dom", catalogue.url + "/?q=containers")
    links = [v for n, v in parse(dom).attrs if n == "href" and v.startswith("/p/")]
    assert links[0] == "/p/docker", links
    assert "Run containers" in dom


def test_in_a_browser_the_hostile_plugin_page_runs_and_loads_nothing_of_the_publishers(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    dom = run_browser(tmp_path, "--dump-dom", catalogue.url + "/p/weather")
    # The DOM after the browser parsed and loaded the page: any script that had run would
    # have renamed the document, and any element the readme smuggled in would be here.
    assert "<title>weather · cordon registry</title>" in dom
    assert "pwned" not in "".join(t for t in parse(dom).text if "document.title" not in t)
    assert_inert(dom)
    assert "<script" not in dom.lower().replace("&lt;script", "")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize(
    ("name", "path"), [("weather", "/p/weather"), ("search", "/?q=filler&sort=name")]
)
def test_in_a_browser_a_screenshot_of_a_page_is_kept(
    catalogue: Catalogue, tmp_path: Path, name: str, path: str
) -> None:
    shot = tmp_path / f"{name}.png"
    run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", catalogue.url + path)
    data = shot.read_bytes()
    assert png_size(data) == (1200, 900)
    # A blank page compresses to almost nothing; a rendered one with text does not.
    assert len(data) > 20_000, len(data)
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / f"catalogue-{name}.png"
    shutil.copyfile(shot, kept)
    print(f"screenshot of {path}: {kept}")
