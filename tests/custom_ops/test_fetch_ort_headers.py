"""custom_ops/cmake/fetch_ort_headers.sh: the Debian mirror comes from apt's own sources (deb822 and one-line
formats), the environment overrides work, and failures are one clear line. No network: fake sources folders,
file: URIs and local header folders only."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "custom_ops" / "cmake" / "fetch_ort_headers.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

DEB822 = """\
Types: deb
# the security archive comes first: it must be skipped
URIs: file:/srv/corp-mirror/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
# a comment inside a stanza
URIs: file:/srv/corp-mirror/debian file:/srv/other/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# deb file:/srv/commented-out/debian bookworm main
deb-src file:/srv/src-only/debian bookworm main
deb file:/srv/one-line/debian-security bookworm-security main
deb file:/srv/third-party/apt cloud-sdk-bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/corp.gpg] file:/srv/one-line/debian bookworm main non-free
"""


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADDERCONVERT_")}
    env.update(extra)
    return env


def debian_mirror(*sources, **env):
    """Source the script (which then runs nothing) and call its discovery function on SOURCES."""
    return subprocess.run(
        ["bash", "-c", 'source "$1" && shift && debian_mirror "$@"', "bash", str(SCRIPT), *map(str, sources)],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def fetch(dest, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), str(dest)], env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fetch_ort_headers.sh: ")
    for needle in needles:
        assert needle in lines[0]


def test_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "debian.sources").write_text(DEB822)
    # A third-party archive with a suite that is no Debian release is skipped, as is a disabled stanza.
    (tmp_path / "nodesource.sources").write_text(
        "Types: deb\nURIs: file:/srv/node\nSuites: nodistro\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: file:/srv/disabled/debian\nSuites: bookworm\nComponents: main\n"
    )
    result = debian_mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file:/srv/corp-mirror/debian /usr/share/keyrings/debian-archive-keyring.gpg"


def test_mirror_from_one_line_sources_list(tmp_path):
    sources_list = tmp_path / "sources.list"
    sources_list.write_text(ONE_LINE)
    result = debian_mirror(sources_list)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file:/srv/one-line/debian /etc/apt/keyrings/corp.gpg"


def test_mirror_from_list_in_a_sources_folder(tmp_path):
    (tmp_path / "corp.list").write_text("deb file:/srv/plain/debian trixie main\n")
    (tmp_path / "ignored.list.disabled").write_text("deb file:/srv/disabled/debian bookworm main\n")
    result = debian_mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file:/srv/plain/debian"


def test_mirror_override_wins(tmp_path):
    (tmp_path / "debian.sources").write_text(DEB822)
    result = debian_mirror(tmp_path, ADDERCONVERT_DEBIAN_MIRROR="file:/srv/override/debian")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file:/srv/override/debian"


def test_no_debian_archive_is_a_clear_error(tmp_path):
    (tmp_path / "sources.list").write_text("deb file:/srv/third-party/apt cloud-sdk-bookworm main\n")
    assert_one_line_error(debian_mirror(tmp_path), "ADDERCONVERT_DEBIAN_MIRROR", "ADDERCONVERT_ORT_HEADERS")


def test_local_headers_are_copied_without_fetching(tmp_path):
    headers = tmp_path / "ort"
    (headers / "core").mkdir(parents=True)
    (headers / "onnxruntime_cxx_api.h").write_text("// fake\n")
    (headers / "core" / "session.h").write_text("// fake\n")
    dest = tmp_path / "dest"
    # An unusable mirror as well: the headers folder must win before any fetch is tried.
    result = fetch(dest, ADDERCONVERT_ORT_HEADERS=str(headers), ADDERCONVERT_DEBIAN_MIRROR=f"file:{tmp_path}/no-mirror")
    assert result.returncode == 0, result.stderr
    assert (dest / "onnxruntime_cxx_api.h").read_text() == "// fake\n"
    assert (dest / "core" / "session.h").is_file()


def test_local_headers_without_the_header_is_a_clear_error(tmp_path):
    headers = tmp_path / "ort"
    headers.mkdir()
    (headers / "onnxruntime_c_api.h").write_text("// only the C header\n")
    dest = tmp_path / "dest"
    result = fetch(dest, ADDERCONVERT_ORT_HEADERS=str(headers))
    assert_one_line_error(result, "ADDERCONVERT_ORT_HEADERS", "onnxruntime_cxx_api.h", str(headers))
    assert not dest.exists()


def test_usage_is_unchanged():
    result = subprocess.run(["bash", str(SCRIPT)], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "usage: fetch_ort_headers.sh DEST")


@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="not Debian")
def test_unreachable_mirror_is_a_clear_error(tmp_path):
    mirror = f"file:{tmp_path}/no-mirror"
    result = fetch(tmp_path / "dest", ADDERCONVERT_DEBIAN_MIRROR=mirror, ADDERCONVERT_DEBIAN_SUITE="trixie")
    assert_one_line_error(result, mirror, "trixie", "ADDERCONVERT_DEBIAN_MIRROR", "ADDERCONVERT_ORT_HEADERS")
    assert not (tmp_path / "dest").exists()
