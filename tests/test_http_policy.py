"""The pure half of ``ctx.http``: hosts in canonical form, URLs taken apart once, the grant
grammar and its matching by origin, and the address classes a granted name may never
resolve to. Lists of spellings, because the attack is the spelling."""

from __future__ import annotations

import ipaddress

import pytest

from cordon.protocol import PermissionDenied
from cordon.runtime import ConfigError
from cordon.runtime._hostapi._http_policy import address_problem, parse_url
from cordon.runtime._settings._config import parse_config
from cordon.runtime._settings._http_keys import (
    HttpLimits,
    canonical_host,
    check_http_scope,
    parse_grant,
)
from cordon.runtime._settings._permissions import PermissionSet, effective_permissions

# -- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "127.0.1",
        "0177.0.0.1",
        "0x7F.0.0.0x1",
        "127.0.0.1.",
        "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",  # full-width digits and dots
        "127\u30020\u30020\u30021",  # ideographic full stops
    ],
)
def test_every_spelling_of_an_ipv4_address_is_that_address(spelling: str) -> None:
    host = canonical_host(spelling)
    assert (host.text, host.kind) == ("127.0.0.1", "ipv4")


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("API.GitHub.com", "api.github.com"),
        ("api.github.com.", "api.github.com"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("B\u00dcCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("\uff41\uff50\uff49.example", "api.example"),  # full-width letters
        ("[::1]", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]"),
    ],
)
def test_names_and_ipv6_literals_have_one_canonical_form(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling).text == canonical


@pytest.mark.parametrize(
    "spelling",
    [
        "",
        "a..b",
        "a.b..",
        "%31%32%37.0.0.1",
        "127.0.0.1%00",
        "1.2.3.4.5",
        "256.0.0.1",
        "0x1g.0.0.1",
        "example.123",
        "exa mple.com",
        "exa\tmple.com",
        "example.com\x00.evil",
        "a\\b.com",
        "user@host",
        "host:80",
        "[::1",
        "[fe80::1%eth0]",
        "[not-v6]",
        "a" * 64 + ".com",
        "xn--zz.example",  # invalid punycode
        "under\u200bscore.com",  # zero-width space
    ],
)
def test_a_host_that_does_not_canonicalise_cleanly_is_refused(spelling: str) -> None:
    with pytest.raises(ValueError):
        canonical_host(spelling)


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin", "path"),
    [
        ("https://api.github.com", "https://api.github.com:443", "/"),
        ("HTTPS://API.GITHUB.COM:443/repos?x=1#top", "https://api.github.com:443", "/repos?x=1"),
        ("http://0x7f.1:8080/a", "http://127.0.0.1:8080", "/a"),
        ("http://[::1]:8080/", "http://[::1]:8080", "/"),
        ("https://example.com.:443/", "https://example.com:443", "/"),
        ("https://example.com:/x", "https://example.com:443", "/x"),
    ],
)
def test_a_url_is_taken_apart_once_into_a_canonical_target(
    url: str, origin: str, path: str
) -> None:
    target = parse_url(url)
    assert (target.origin, target.path) == (origin, path)


@pytest.mark.parametrize(
    "url",
    [
        "https://user@api.github.com/",
        "https://user:pw@api.github.com/",
        "https://api.github.com@evil.example/",
        "https://evil.example\\@api.github.com/",
        "https://api.github.com\\.evil.example/",
        "https://api.github.com\t.evil.example/",
        "https://api.github.com/\r\nHost: evil",
        "https://api.github.com /",
        "https://%61pi.github.com/",
        "ftp://api.github.com/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https:api.github.com",
        "https:/api.github.com",
        "//api.github.com/",
        "https://api.github.com:0/",
        "https://api.github.com:65536/",
        "https://api.github.com:443a/",
        "https://[fe80::1%25eth0]/",
        "https:///path",
        "https://" + "a" * 9000 + ".com/",
    ],
)
def test_an_ambiguous_or_foreign_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        parse_url(url, plugin="web")
    assert info.value.plugin == "web"
    assert "refused" in info.value.message


# -- grants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "origin"),
    [
        ("api.github.com", "https://api.github.com:443"),
        ("api.github.com:8443", "https://api.github.com:8443"),
        ("http://example.org", "http://example.org:80"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://[::1]:9000", "https://[::1]:9000"),
        ("API.GITHUB.COM.", "https://api.github.com:443"),
        ("2130706433", "https://127.0.0.1:443"),
    ],
)
def test_a_scheme_and_a_port_are_granted_only_when_written(grant: str, origin: str) -> None:
    assert str(parse_grant(grant)) == origin


@pytest.mark.parametrize(
    "grant",
    [
        "*",
        "*.com",
        "a.*.com",
        "*example.com",
        "**.example.com",
        "*.127.0.0.1",
        "*.[::1]",
        "ftp://example.com",
        "example.com/path",
        "example.com?x",
        "user@example.com",
        "example.com:0",
        "example.com:99999",
        "exa mple.com",
        "",
    ],
)
def test_malformed_or_overbroad_grants_are_refused(grant: str) -> None:
    assert check_http_scope(grant) is not None


PLUGIN_GRANTS = ["http:api.github.com", "http:*.slack.com", "http:http://127.0.0.1:8080"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.github.com/x", True),
        ("https://API.GITHUB.COM./x", True),
        ("http://api.github.com/x", False),  # scheme not written: https only
        ("https://api.github.com:8443/x", False),  # port not written: 443 only
        ("https://github.com/", False),
        ("https://api.github.com.evil.example/", False),
        ("https://hooks.slack.com/", True),
        ("https://a.b.slack.com/", True),
        ("https://slack.com/", False),  # *. covers names below, not the name itself
        ("https://evilslack.com/", False),
        ("https://slack.com.evil.example/", False),
        ("http://hooks.slack.com/", False),
        ("http://127.0.0.1:8080/", True),
        ("http://2130706433:8080/", True),
        ("http://127.0.0.1:8081/", False),
        ("https://127.0.0.1:8080/", False),
        ("http://localhost:8080/", False),
        ("http://[::ffff:127.0.0.1]:8080/", False),  # another address family, another grant
    ],
)
def test_grants_match_by_origin_at_label_boundaries(url: str, allowed: bool) -> None:
    perms = effective_permissions(PLUGIN_GRANTS, PLUGIN_GRANTS, [])
    assert perms.allows(parse_url(url).permission) is allowed


def test_a_deny_covers_what_it_names_whatever_was_granted() -> None:
    perms = effective_permissions(
        ["http:*.example.com"], ["http:*.example.com"], ["http:*.internal.example.com"]
    )
    assert perms.allows(parse_url("https://api.example.com/").permission)
    assert not perms.allows(parse_url("https://db.internal.example.com/").permission)


def test_a_request_the_manifest_did_not_make_is_not_granted_by_a_broader_grant() -> None:
    perms = PermissionSet(["http:api.example.com"], ["http:*.example.com"])
    assert perms.allows(parse_url("https://api.example.com/").permission)
    assert not perms.allows(parse_url("https://other.example.com/").permission)
    assert perms.missing == ()


# -- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "169.254.1.1",
        "100.64.0.1",  # shared / CGNAT
        "100.100.100.200",  # Alibaba metadata
        "192.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::8.8.8.8",  # deprecated form, refused whatever it embeds
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
        "64:ff9b:1::1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "2001:db8::1",  # documentation
    ],
)
def test_a_name_may_not_resolve_to_an_internal_or_special_address(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "140.82.112.3", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


# -- the http table ------------------------------------------------------------------------


def test_the_http_bounds_merge_over_the_defaults_key_by_key() -> None:
    config = parse_config(
        {
            "defaults": {"http": {"rate": 5, "timeout": "3 s"}},
            "plugins": {"web": {"http": {"max-response": "1 MiB", "concurrency": 2}}},
        }
    )
    web = config.for_plugin("web").http
    assert web == HttpLimits(rate=5.0, timeout=3.0, max_response=1 << 20, concurrency=2)


def test_bad_http_bounds_are_each_reported_under_their_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "plugins": {
                    "web": {
                        "http": {
                            "max-request": "lots",
                            "max-response": "1 TiB",
                            "concurrency": 0,
                            "rate": -1,
                            "burst": True,
                            "timeout": "0 s",
                            "retries": 3,
                        }
                    }
                }
            }
        )
    paths = {p["path"] for p in info.value.problems}
    assert paths == {
        f"plugins.web.http.{k}"
        for k in (
            "max-request",
            "max-response",
            "concurrency",
            "rate",
            "burst",
            "timeout",
            "retries",
        )
    }


def test_config_show_writes_http_bounds_and_secret_names_that_parse_back() -> None:
    config = parse_config(
        {
            "plugins": {
                "web": {
                    "grant": ["http:api.github.com"],
                    "http": {"rate": 2.5},
                    "secrets": {"GH": {"env": "GH_TOKEN", "hosts": ["api.github.com"]}},
                }
            }
        }
    )
    shown = config.to_toml_dict()["plugins"]["web"]
    assert shown["secrets"] == {"GH": {"env": "GH_TOKEN", "hosts": ["api.github.com"]}}
    assert shown["http"]["rate"] == 2.5
    again = parse_config(config.to_toml_dict())
    assert again.for_plugin("web") == config.for_plugin("web")


def test_http_star_is_a_kill_switch_as_a_deny_and_refused_as_a_grant() -> None:
    perms = effective_permissions(["http:api.example.com"], ["http:api.example.com"], ["http:*"])
    assert not perms.allows(parse_url("https://api.example.com/").permission)
    with pytest.raises(ConfigError):
        effective_permissions(["http:api.example.com"], ["http:*"], [])
