#!/usr/bin/env python3
"""Compiles the header the way users will: a declarations-only TU, the
implementation TU (header included three times) and a third TU linked together,
with every warning as an error, with g++ and clang++ (when present), as C++17,
C++20 and C++23, with and without exceptions and RTTI, and with and without
MI_USE_CURL (when libcurl's headers are there): loaded at run time, so linked without
-lcurl -lssl -lcrypto, and once with MI_CURL_LINKED and those libraries. Then runs the
program: with a canceled context it must return 0 without any network I/O. Also checks
that the header leaves no internal macro defined in the includer, and that MI_CURL_LINKED
without MI_USE_CURL is refused. Prints 'N passed, M failed'."""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "tests", "compile")
WARN = ["-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-Werror"]
SOURCES = ["decl_user.cpp", "impl_twice.cpp", "other_tu.cpp"]


def have_curl():
    return os.path.exists("/usr/include/curl/curl.h") or os.path.exists(
        "/usr/include/x86_64-linux-gnu/curl/curl.h")


# The macros the header may leave defined in the includer, besides the ones the includer
# defined itself: the include guard, the version, the two size limits (public defaults),
# and, in the implementation TU, the guard that stops a second inclusion from compiling
# the implementation again.
PUBLIC_MACROS = {"MI_MANAGED_IDENTITY_HPP", "MI_VERSION_MAJOR", "MI_VERSION_MINOR", "MI_VERSION_PATCH",
                 "MI_VERSION_STRING", "MI_MAX_RESPONSE_BYTES", "MI_MAX_HEADER_BYTES"}


def leaked_macros(cxx, flags, tmp):
    """The MI_* and Windows macros left defined after including the header twice."""
    src = os.path.join(tmp, "macros.cpp")
    with open(src, "w") as f:
        f.write('#include "managed_identity.hpp"\n#include "managed_identity.hpp"\n')
    r = subprocess.run([cxx, "-std=c++17", "-dM", "-E", "-I", ROOT, *flags, src],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    defined = {line.split()[1].split("(")[0] for line in r.stdout.splitlines() if line.startswith("#define ")}
    own = {f[2:].split("=")[0] for f in flags if f.startswith("-D")}
    allowed = PUBLIC_MACROS | own
    if "MI_IMPLEMENTATION" in own:
        allowed.add("MI_DETAIL_IMPLEMENTATION_INCLUDED")
    return sorted(m for m in defined if (m.startswith("MI_") and m not in allowed)), ""


def macro_checks(cxx, tmp):
    """(label, ok, detail) for the macro hygiene checks with one compiler."""
    out = []
    configs = [[], ["-DMI_IMPLEMENTATION"], ["-DMI_NO_EXCEPTIONS", "-DMI_IMPLEMENTATION"]]
    if have_curl():
        configs += [["-DMI_IMPLEMENTATION", "-DMI_USE_CURL"],
                    ["-DMI_IMPLEMENTATION", "-DMI_USE_CURL", "-DMI_CURL_LINKED"]]
    for flags in configs:
        leaked, err = leaked_macros(cxx, flags, tmp)
        ok = leaked == []
        detail = err if leaked is None else "left defined: " + " ".join(leaked or [])
        out.append(("%s no internal macro leaks (%s)" % (cxx, " ".join(flags) or "declarations"), ok, detail))
    # MI_CURL_LINKED alone would be silently ignored: it must be an error that says why.
    src = os.path.join(tmp, "linked_alone.cpp")
    with open(src, "w") as f:
        f.write('#include "managed_identity.hpp"\n')
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-I", ROOT, "-DMI_CURL_LINKED", src],
                       capture_output=True, text=True)
    ok = r.returncode != 0 and "define MI_USE_CURL" in r.stderr
    out.append(("%s MI_CURL_LINKED without MI_USE_CURL is an error" % cxx, ok, r.stderr[:2000]))
    return out


# -Weverything on the implementation TU (clang++), minus the warnings that only describe
# C++98 compatibility or struct padding. Every other warning is fixed, or allowed here with
# its reason:
#   -Wno-weak-vtables: mi::HttpClient and mi::Exception are public interface types defined
#     in the declarations, so their vtables are emitted wherever they are used.
EVERYTHING = ["-Weverything", "-Wno-c++98-compat", "-Wno-c++98-compat-pedantic", "-Wno-padded",
              "-Wno-weak-vtables", "-Werror"]

# The implementation's names with external linkage: the public API, and in mi::detail only
# the types that the public declarations name (their layout is hidden behind pointers, and
# their members are reached from the public classes' functions). Everything else in the
# implementation has internal linkage, so it can neither clash with nor be called from
# another translation unit. A symbol is accepted when its name mentions one of these.
EXTERNAL_DETAIL_TYPES = ["detail::ContextState", "detail::ClientState", "detail::ClientConfig",
                         "detail::AcquireConfig", "detail::ErrorAccess",
                         # members of ClientState: the pinned endpoint, workload identity's inputs, their URL
                         "detail::PinnedEndpoint", "detail::WorkloadSetup", "detail::Url",
                         # called from Result<T>'s inline members, in every translation unit
                         "detail::bad_result_access", "detail::bad_error_access"]


def exported_detail_symbols(cxx, flags, tmp):
    """Defined external mi::detail symbols of the implementation object that are not allowed."""
    src = os.path.join(tmp, "impl.cpp")
    obj = os.path.join(tmp, "impl.o")
    with open(src, "w") as f:
        f.write('#define MI_IMPLEMENTATION\n#include "managed_identity.hpp"\n')
    r = subprocess.run([cxx, "-std=c++17", "-O2", "-c", "-I", ROOT, *flags, src, "-o", obj],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    nm = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", obj], capture_output=True, text=True)
    bad = []
    for line in nm.stdout.splitlines():
        name = line.split(" ", 2)[-1]
        if "mi::v1::detail::" in name and not any(t in name for t in EXTERNAL_DETAIL_TYPES):
            bad.append(name)
    return sorted(set(bad)), ""


def linkage_checks(tmp):
    out = []
    configs = [[]] + ([["-DMI_USE_CURL"]] if have_curl() else [])
    if shutil.which("clang++"):
        for flags in configs:
            src = os.path.join(tmp, "everything.cpp")
            with open(src, "w") as f:
                f.write('#define MI_IMPLEMENTATION\n#include "managed_identity.hpp"\n')
            r = subprocess.run(["clang++", "-std=c++17", "-fsyntax-only", *EVERYTHING, "-I", ROOT, *flags, src],
                               capture_output=True, text=True)
            out.append(("clang++ -Weverything on the implementation %s" % " ".join(flags), r.returncode == 0,
                        r.stderr))
    if shutil.which("nm"):
        for cxx in [c for c in ("g++", "clang++") if shutil.which(c)]:
            for flags in configs:
                bad, err = exported_detail_symbols(cxx, flags, tmp)
                detail = err if bad is None else "%d external detail symbols:\n%s" % (len(bad or []),
                                                                                    "\n".join((bad or [])[:60]))
                out.append(("%s implementation exports no internal detail symbol %s" % (cxx, " ".join(flags)),
                            bad == [], detail))
    return out


def main():
    compilers = [c for c in ("g++", "clang++") if shutil.which(c)]
    # (label, standard, extra flags, libcurl libraries to link, link and run). The C++20/23 runs stop
    # after the front end (-fsyntax-only), where the language-mode warnings come from;
    # that keeps the matrix cheap enough for every CI run.
    variants = [("c++17", "-std=c++17", [], [], True),
                ("c++17 no-exceptions no-rtti", "-std=c++17", ["-fno-exceptions", "-fno-rtti"], [], True),
                ("c++20", "-std=c++20", [], [], False),
                ("c++23", "-std=c++2b", [], [], False)]
    if have_curl():
        # Run-time loading needs the headers only: no libcurl or OpenSSL on the link line.
        variants += [("c++17 curl", "-std=c++17", ["-DMI_USE_CURL"], [], True),
                     ("c++17 curl no-exceptions no-rtti", "-std=c++17",
                      ["-DMI_USE_CURL", "-fno-exceptions", "-fno-rtti"], [], False),
                     ("c++20 curl", "-std=c++20", ["-DMI_USE_CURL"], [], False),
                     ("c++17 curl linked", "-std=c++17", ["-DMI_USE_CURL", "-DMI_CURL_LINKED"],
                      ["-lcurl", "-lssl", "-lcrypto"], True)]
    passed = failed = 0
    env = dict(os.environ)
    for var in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
                "MSI_SECRET", "IMDS_ENDPOINT"):
        env.pop(var, None)
    # Never let the run reach the real IMDS address: the context is canceled before
    # any I/O, and the endpoint points at loopback anyway.
    env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:9"
    with tempfile.TemporaryDirectory() as tmp:
        for cxx in compilers:
            for name, std, flags, libs, link in variants:
                label = "%s %s%s" % (cxx, name, "" if link else " (syntax only)")
                out = os.path.join(tmp, "prog")
                cmd = [cxx, std, "-O0", *WARN, *flags, "-I", ROOT]
                cmd += [os.path.join(HERE, s) for s in SOURCES]
                cmd += ["-o", out, "-pthread", *libs] if link else ["-fsyntax-only"]
                r = subprocess.run(cmd, capture_output=True, text=True)
                ok = r.returncode == 0
                detail = r.stderr
                if ok and link:
                    run = subprocess.run([out], capture_output=True, text=True, env=env, timeout=60)
                    ok = run.returncode == 0
                    detail = run.stderr
                print("%s: %s" % ("PASS" if ok else "FAIL", label))
                if not ok:
                    print(detail[:3000])
                passed += ok
                failed += not ok
        checks = linkage_checks(tmp)
        for cxx in compilers:
            checks += macro_checks(cxx, tmp)
        if True:
            for label, ok, detail in checks:
                print("%s: %s" % ("PASS" if ok else "FAIL", label))
                if not ok:
                    print(detail[:3000])
                passed += ok
                failed += not ok
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
