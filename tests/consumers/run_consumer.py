#!/usr/bin/env python3
"""Builds and runs one consumer of the library, the way users bring it in:

  install           cmake --install the current build into --prefix; checks the files
  find_package      find_package(managed_identity CONFIG) from that prefix (after install)
  pkg_config        pkg-config --cflags/--libs/--modversion from that prefix (after install);
                    main.cpp compiled with those Cflags alone
  add_subdirectory  add_subdirectory(<source tree>)
  fetch_content     FetchContent with SOURCE_DIR = the source tree (nothing downloaded)
  single_header     managed_identity.hpp copied alone next to main.cpp; c++ -std=c++17 main.cpp -pthread
  meson_subproject  tests/consumers/meson with the source tree copied into subprojects/managed_identity
                    and dependency('managed_identity') / dependency('managed_identity_impl')
  meson_wrap        the same through a wrap-file whose archive (made from the source tree) is already
                    in subprojects/packagecache, so Meson unpacks it and downloads nothing

Each consumer is configured with MI_BUILD_TESTS=OFF and MI_BUILD_EXAMPLES=OFF, built, and
main.cpp run. main.cpp asks for a token with a canceled context, so nothing is sent; the run
environment also points IMDS at 127.0.0.1:9 and drops every other source's variables.
Nothing here reaches the network. Exit status 0 = passed, 77 = skipped (ctest
SKIP_RETURN_CODE), anything else = failed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77


class Failure(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def run(cmd, cwd=None, env=None):
    log("$ " + " ".join(cmd))
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = r.stdout or ""
    sys.stdout.write(out)
    log("  (%.1f s, exit %d)" % (time.monotonic() - start, r.returncode))
    if r.returncode != 0:
        raise Failure("command failed with exit status %d: %s" % (r.returncode, " ".join(cmd)))
    return out


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def run_env():
    """The environment the consumer programs run in: IMDS on a closed loopback port, no
    other source configured. The canceled context means nothing is sent anyway."""
    env = dict(os.environ)
    for var in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
                "MSI_SECRET", "IMDS_ENDPOINT", "DEFAULT_IDENTITY_CLIENT_ID"):
        env.pop(var, None)
    env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:9"
    return env


def find_executable(build_dir, name):
    wanted = {name, name + ".exe"}
    for root, dirs, files in os.walk(build_dir):
        dirs[:] = [d for d in dirs if d != "CMakeFiles" and not d.startswith("_deps")]
        for f in files:
            if f in wanted:
                return os.path.join(root, f)
    raise Failure("built no executable named %s under %s" % (name, build_dir))


def run_program(path, version):
    out = run([path], env=run_env())
    if "managed_identity %s," % version not in out or "OK:" not in out:
        raise Failure("%s did not print the expected version %s and OK" % (path, version))


def library_options(args):
    """For a consumer that builds the library from its source tree: nothing but the library."""
    return ["-DMI_SOURCE_DIR=" + args.source_dir, "-DMI_BUILD_TESTS=OFF", "-DMI_BUILD_EXAMPLES=OFF",
            "-DMI_USE_CURL=" + args.use_curl]


def cmake_consumer(args, project, extra_defs, executables):
    """Configures tests/consumers/<project> in <work>/build, builds it and runs the executables."""
    build = fresh_dir(os.path.join(args.work_dir, "build"))
    cmd = [args.cmake, "-S", os.path.join(HERE, project), "-B", build, "-G", args.generator,
           "-DCMAKE_CXX_COMPILER=" + args.cxx]
    if args.make_program:
        cmd.append("-DCMAKE_MAKE_PROGRAM=" + args.make_program)
    # No CMAKE_BUILD_TYPE: no -g, no -O, the quickest build. (--config below is for
    # multi-config generators; an imported target's only configuration is used anyway.)
    cmd += extra_defs
    run(cmd)
    build_cmd = [args.cmake, "--build", build, "--parallel", "2"]
    if args.config:
        build_cmd += ["--config", args.config]
    run(build_cmd)
    for name in executables:
        run_program(find_executable(build, name), args.version)


# ---- the consumers -------------------------------------------------------------------------

# What an install holds, by file name (the directories follow GNUInstallDirs: lib or lib64...).
INSTALLED = {
    "managed_identity.hpp": "the header",
    "LICENSE": "the license the header names",
    "managed_identityConfig.cmake": "the CMake package config",
    "managed_identityConfigVersion.cmake": "the CMake package version file",
    "managed_identityTargets.cmake": "the exported targets",
    "managed_identity.pc": "the pkg-config file",
}
IMPL_LIB = re.compile(r"^(lib)?managed_identity_impl(\.a|\.lib|\.so[.0-9]*|\.dylib|\.dll)$")
TARGETS_CONFIG = re.compile(r"^managed_identityTargets-[A-Za-z0-9_]+\.cmake$")


def installed_files(prefix):
    """{file name: [relative paths]} of everything under prefix."""
    found = {}
    for root, _, files in os.walk(prefix):
        for f in files:
            found.setdefault(f, []).append(os.path.relpath(os.path.join(root, f), prefix).replace(os.sep, "/"))
    return found


def installed(prefix, name):
    """The one installed file of that name (absolute), or a Failure saying to run install."""
    paths = installed_files(prefix).get(name, []) if os.path.isdir(prefix) else []
    if len(paths) != 1:
        raise Failure("%s: expected one %s under %s, found %d (the consumer_install test runs first)"
                      % (INSTALLED.get(name, name), name, prefix, len(paths)))
    return os.path.normpath(os.path.join(prefix, paths[0]))


def do_install(args):
    if not args.prefix or not args.build_dir:
        raise Failure("install needs --prefix and --build-dir")
    prefix = os.path.abspath(args.prefix)
    # The prefix is wiped first: never a directory holding the source or build tree.
    for tree in (args.source_dir, os.path.abspath(args.build_dir)):
        if os.path.commonpath([prefix, tree]) == prefix:
            raise Failure("refusing to wipe %s: it holds %s" % (prefix, tree))
    fresh_dir(prefix)
    cmd = [args.cmake, "--install", args.build_dir, "--prefix", prefix]
    if args.config:
        cmd += ["--config", args.config]
    try:
        run(cmd)
    except Failure:
        raise Failure("cmake --install failed: is the project built? (cmake --build %s)" % args.build_dir)
    manifest = os.path.join(args.build_dir, "install_manifest.txt")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            outside = [line.strip() for line in f if line.strip() and
                       not os.path.normpath(line.strip()).startswith(os.path.normpath(prefix) + os.sep)]
        if outside:
            raise Failure("installed outside the prefix: " + ", ".join(outside))
    found = installed_files(prefix)
    for name in sorted(found):
        for path in found[name]:
            log("  installed " + path)
    for name in INSTALLED:
        installed(prefix, name)
    want = os.path.normpath(os.path.join(prefix, args.includedir, "managed_identity.hpp"))
    if installed(prefix, "managed_identity.hpp") != want:
        raise Failure("the header is not installed as %s" % os.path.relpath(want, prefix))
    if not any(IMPL_LIB.match(name) for name in found):
        raise Failure("the implementation library (libmanaged_identity_impl.a) is not installed")
    unexpected = [p for name, paths in found.items() for p in paths
                  if name not in INSTALLED and not IMPL_LIB.match(name) and not TARGETS_CONFIG.match(name)]
    if unexpected:
        raise Failure("installed files nobody asked for: " + ", ".join(sorted(unexpected)))
    config_dir = os.path.dirname(installed(prefix, "managed_identityConfig.cmake"))
    for name in ("managed_identityConfigVersion.cmake", "managed_identityTargets.cmake"):
        if os.path.dirname(installed(prefix, name)) != config_dir:
            raise Failure("%s is not next to managed_identityConfig.cmake" % name)
    with open(installed(prefix, "managed_identity.hpp"), encoding="utf-8") as f:
        installed_header = f.read()
    with open(os.path.join(args.source_dir, "managed_identity.hpp"), encoding="utf-8") as f:
        if f.read() != installed_header:
            raise Failure("the installed header differs from the source tree's managed_identity.hpp")
    with open(os.path.join(config_dir, "managed_identityConfigVersion.cmake"), encoding="utf-8") as f:
        version_file = f.read()
    if 'set(PACKAGE_VERSION "%s")' % args.version not in version_file:
        raise Failure("managed_identityConfigVersion.cmake does not say version %s" % args.version)
    # ARCH_INDEPENDENT: the header-only package fits any pointer size, so no check is made.
    if not re.search(r'if\("TRUE"\)\s*return\(\)', version_file):
        raise Failure("managed_identityConfigVersion.cmake checks the pointer size: not ARCH_INDEPENDENT")


def do_find_package(args):
    prefix = os.path.abspath(args.prefix)
    installed(prefix, "managed_identityConfig.cmake")
    cmake_consumer(args, "find_package",
                   ["-DCMAKE_PREFIX_PATH=" + prefix,
                    "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
                    "-DMI_EXPECTED_VERSION=" + args.version,
                    "-DMI_EXPECTED_PREFIX=" + prefix,
                    "-DMI_EXPECTED_CURL=" + args.curl_enabled,
                    "-DMI_EXPECTED_CURL_LINKED=" + args.curl_linked,
                    "-DMI_EXPECTED_IMPL_TYPE=" + args.impl_type],
                   ["app_impl", "app_header_only"])


def do_pkg_config(args):
    if not args.pkg_config or args.pkg_config.endswith("NOTFOUND") or args.cxx_id == "MSVC":
        log("SKIP: no pkg-config, or a compiler that does not take -I/-pthread")
        return SKIP
    prefix = os.path.abspath(args.prefix)
    pc = installed(prefix, "managed_identity.pc")
    header = installed(prefix, "managed_identity.hpp")
    with open(pc, encoding="utf-8") as f:
        text = f.read()
    log(text)
    # The header-only target has nothing to link (doctest #1098): no Libs: line at all.
    if re.search(r"^\s*Libs(\.private)?\s*:", text, re.M):
        raise Failure("managed_identity.pc has a Libs: line; the header-only package must not")
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = os.path.dirname(pc)
    modversion = run([args.pkg_config, "--modversion", "managed_identity"], env=env).strip()
    if modversion != args.version:
        raise Failure("pkg-config --modversion says %r, expected %s" % (modversion, args.version))
    libs = run([args.pkg_config, "--libs", "managed_identity"], env=env).strip()
    if libs:
        raise Failure("pkg-config --libs managed_identity is %r, expected nothing" % libs)
    cflags = run([args.pkg_config, "--cflags", "managed_identity"], env=env).split()
    includes = [f[2:] for f in cflags if f.startswith("-I")]
    if not any(os.path.realpath(os.path.join(d, "managed_identity.hpp")) == os.path.realpath(header)
               for d in includes):
        raise Failure("pkg-config --cflags (%s) does not point at %s" % (" ".join(cflags), os.path.dirname(header)))
    # Those flags alone find the header: compile main.cpp (declarations only; the
    # single_header test builds and runs the whole program).
    work = fresh_dir(os.path.join(args.work_dir, "build"))
    run([args.cxx, "-std=c++17", *cflags, "-c", os.path.join(HERE, "main.cpp"), "-o", os.path.join(work, "main.o")])


def write_single_tu_main(directory):
    """main.cpp as the program's only TU: MI_IMPLEMENTATION defined before the include."""
    with open(os.path.join(HERE, "main.cpp"), encoding="utf-8") as f:
        body = f.read()
    path = os.path.join(directory, "main.cpp")
    with open(path, "w", encoding="utf-8") as f:
        f.write("#define MI_IMPLEMENTATION  // the program's only TU\n" + body)
    return path


def do_add_subdirectory(args):
    cmake_consumer(args, "add_subdirectory", library_options(args), ["app"])


def do_fetch_content(args):
    # Fully disconnected: even a mistaken declaration could not download anything.
    cmake_consumer(args, "fetch_content", library_options(args) + ["-DFETCHCONTENT_FULLY_DISCONNECTED=ON"], ["app"])


def do_single_header(args):
    if args.cxx_id == "MSVC":
        log("SKIP: the plain command line is for g++/clang++")
        return SKIP
    work = fresh_dir(os.path.join(args.work_dir, "build"))
    shutil.copyfile(os.path.join(args.source_dir, "managed_identity.hpp"), os.path.join(work, "managed_identity.hpp"))
    write_single_tu_main(work)
    run([args.cxx, "-std=c++17", "main.cpp", "-pthread", "-o", "app"], cwd=work)
    run_program(os.path.join(work, "app"), args.version)


# What a Meson user gets: the files the top-level meson.build uses, and the licence.
MESON_FILES = ("meson.build", "managed_identity.hpp", "cmake/managed_identity_impl.cpp", "LICENSE")
MESON_PROVIDE = "[provide]\ndependency_names = managed_identity, managed_identity_impl\n"


def copy_meson_tree(source_dir, dest):
    for rel in MESON_FILES:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(source_dir, rel), os.path.join(dest, rel))


def meson_consumer(args, populate):
    """tests/consumers/meson (with main.cpp and impl.cpp) in <work>/src; populate(src/subprojects)
    brings the library in; then meson setup, compile, and both programs run."""
    meson = args.meson or shutil.which("meson")
    if not meson or meson.endswith("NOTFOUND") or args.cxx_id == "MSVC":
        log("SKIP: no meson (Debian: apt-get install meson)")
        return SKIP
    src = fresh_dir(os.path.join(args.work_dir, "src"))
    for name in ("meson/meson.build", "meson/meson_options.txt", "main.cpp", "impl.cpp"):
        shutil.copyfile(os.path.join(HERE, name), os.path.join(src, os.path.basename(name)))
    with open(os.path.join(src, "meson.build"), encoding="utf-8") as f:
        text = f.read().replace("'../main.cpp'", "'main.cpp'").replace("'../impl.cpp'", "'impl.cpp'")
    with open(os.path.join(src, "meson.build"), "w", encoding="utf-8") as f:
        f.write(text)
    populate(os.path.join(src, "subprojects"))
    build = os.path.join(args.work_dir, "build")
    if os.path.isdir(build):
        shutil.rmtree(build)
    env = dict(os.environ)
    env["CXX"] = args.cxx
    # --wrap-mode=nodownload: a wrap that would need the network fails instead.
    run([meson, "setup", build, src, "--wrap-mode=nodownload", "-Dexpected_version=" + args.version], env=env)
    run([meson, "compile", "-C", build, "-j", "2"], env=env)
    for name in ("app_impl", "app_header_only"):
        run_program(find_executable(build, name), args.version)


def do_meson_subproject(args):
    def populate(subprojects):
        copy_meson_tree(args.source_dir, os.path.join(subprojects, "managed_identity"))
        # The directory is there already: this wrap only says which dependencies it provides.
        with open(os.path.join(subprojects, "managed_identity.wrap"), "w", encoding="utf-8") as f:
            f.write("[wrap-file]\ndirectory = managed_identity\n\n" + MESON_PROVIDE)
    return meson_consumer(args, populate)


def do_meson_wrap(args):
    import hashlib
    import tarfile

    def populate(subprojects):
        cache = os.path.join(subprojects, "packagecache")
        os.makedirs(cache)
        archive = os.path.join(cache, "managed_identity-%s.tar.gz" % args.version)
        staging = fresh_dir(os.path.join(args.work_dir, "archive"))
        top = "managed_identity-%s" % args.version
        copy_meson_tree(args.source_dir, os.path.join(staging, top))
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(os.path.join(staging, top), arcname=top)
        with open(archive, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        # The URL is never fetched: the archive is in packagecache and the mode is nodownload.
        with open(os.path.join(subprojects, "managed_identity.wrap"), "w", encoding="utf-8") as f:
            f.write("[wrap-file]\ndirectory = %s\nsource_url = https://example.invalid/%s.tar.gz\n"
                    "source_filename = %s\nsource_hash = %s\n\n%s"
                    % (top, top, os.path.basename(archive), digest, MESON_PROVIDE))
    return meson_consumer(args, populate)


MODES = {
    "install": do_install,
    "find_package": do_find_package,
    "pkg_config": do_pkg_config,
    "add_subdirectory": do_add_subdirectory,
    "fetch_content": do_fetch_content,
    "single_header": do_single_header,
    "meson_subproject": do_meson_subproject,
    "meson_wrap": do_meson_wrap,
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--work-dir", required=True, help="scratch directory of this consumer (wiped)")
    p.add_argument("--source-dir", required=True, help="the library's source tree")
    p.add_argument("--build-dir", default="", help="the library's build tree (install)")
    p.add_argument("--prefix", default="", help="install prefix (install, find_package, pkg_config)")
    p.add_argument("--includedir", default="include", help="CMAKE_INSTALL_INCLUDEDIR (install)")
    p.add_argument("--version", required=True, help="the expected version (PROJECT_VERSION)")
    p.add_argument("--cmake", default="cmake")
    p.add_argument("--generator", default="")
    p.add_argument("--make-program", default="")
    p.add_argument("--cxx", default="c++")
    p.add_argument("--cxx-id", default="")
    p.add_argument("--config", default="", help="build type / configuration; empty for none")
    p.add_argument("--use-curl", default="AUTO", help="MI_USE_CURL for the library in the consumer")
    p.add_argument("--curl-enabled", default="OFF", help="whether the installed build has libcurl")
    p.add_argument("--curl-linked", default="OFF", help="whether it links libcurl (MI_CURL_LINKED)")
    p.add_argument("--impl-type", default="STATIC_LIBRARY", help="the installed mi::managed_identity_impl's TYPE")
    p.add_argument("--pkg-config", default="")
    p.add_argument("--meson", default="", help="the meson program (default: found on PATH)")
    args = p.parse_args()
    args.source_dir = os.path.abspath(args.source_dir)
    args.work_dir = os.path.abspath(args.work_dir)
    if not args.generator:
        args.generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.monotonic()
    try:
        status = MODES[args.mode](args) or 0
    except Failure as e:
        log("FAIL (%s): %s" % (args.mode, e))
        return 1
    log("%s (%s, %.1f s)" % ("SKIPPED" if status == SKIP else "PASSED", args.mode, time.monotonic() - start))
    return status


if __name__ == "__main__":
    sys.exit(main())
