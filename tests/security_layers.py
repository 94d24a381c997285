"""Skip-or-fail for the security suites: outside CI a machine without a sandbox layer skips
the tests that need it; with ``CI=true`` nothing is skipped, so a missing Landlock, network
namespace, seccomp, size-bounded scratch (tmpfs in a mount namespace) or PID namespace fails
the run instead of passing it silently."""
from __future__ import annotations

import os

import pytest

from sia.harness.supervisor import containment_error, in_ci

LAYER_NAMES = ("landlock", "netns", "seccomp", "scratch")


def missing_layers(layers: dict, needed=LAYER_NAMES, containment: bool = True) -> list[str]:
    missing = [f"{name} ({layers.get('errors', {}).get(name, 'unavailable')})"
               for name in needed if not layers.get(name)]
    if containment and containment_error():
        missing.append(f"pid namespace ({containment_error()})")
    return missing


def needs(layers: dict, needed=LAYER_NAMES, containment: bool = True):
    """A mark: skip when layers are missing, except under CI, where the tests run (and fail)."""
    missing = missing_layers(layers, needed, containment)
    return pytest.mark.skipif(bool(missing) and not in_ci(),
                              reason=f"this machine cannot apply the sandbox: {', '.join(missing)}")


def check_present(layers: dict, needed=LAYER_NAMES, containment: bool = True) -> None:
    """Body of a test that fails under CI when a layer is missing (and skips elsewhere)."""
    missing = missing_layers(layers, needed, containment)
    if not missing:
        return
    if in_ci():
        pytest.fail(f"CI=true but sandbox layers are missing: {', '.join(missing)}")
    pytest.skip(f"sandbox layers missing here: {', '.join(missing)}")


def canary(tmp_path):
    """A file outside every sandbox folder, with a mode, an mtime and an xattr to watch."""
    path = tmp_path / "outside" / "canary.json"
    path.parent.mkdir()
    path.write_text("{}")
    os.chmod(path, 0o600)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    os.setxattr(path, "user.kept", b"1")
    return path


def metadata_of(path) -> tuple:
    st = os.stat(path)
    return st.st_mode, st.st_mtime_ns, st.st_uid, st.st_gid, sorted(os.listxattr(path))


# The probe of both metadata attacks (a kernel submission, a harness): an os call's errno
# name, or "allowed". Each attack prepends it to its own code, which stays one whole file.
TRY_OS_CALL = '''
import errno, os

def _try(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
'''
