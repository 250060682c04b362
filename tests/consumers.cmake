# Consumer projects: the library used the ways users bring it in, each configured, built and
# run by consumers/run_consumer.py (tests/consumers/main.cpp asks for a token with a canceled
# context: nothing is sent). Included from tests/CMakeLists.txt; needs Python3_EXECUTABLE.
#   consumer_install           cmake --install of this build into consumers/prefix (fixture)
#   consumer_find_package      find_package(managed_identity CONFIG) from that prefix
#   consumer_pkg_config        pkg-config from that prefix: Cflags only, no Libs
#   consumer_add_subdirectory  add_subdirectory(<source tree>)
#   consumer_fetch_content     FetchContent with SOURCE_DIR = the source tree (no download)
#   consumer_single_header     the header copied alone; c++ -std=c++17 main.cpp -pthread
#   consumer_meson_subproject  Meson: dependency('managed_identity'[_impl]) from subprojects/ (a copy)
#   consumer_meson_wrap        Meson: the same from a wrap-file whose archive is in packagecache
#                              (both skipped, exit 77, without meson: Debian's `meson` package)
# The first three exist only with MI_INSTALL (install rules). Scratch: <build>/tests/consumers.
# Label `consumer`: ctest -L consumer runs them alone.
find_package(PkgConfig QUIET)

set(_mi_consumer_work "${CMAKE_CURRENT_BINARY_DIR}/consumers")
set(_mi_consumer_prefix "${_mi_consumer_work}/prefix")
set(_mi_consumer_args
  "--source-dir=${PROJECT_SOURCE_DIR}"
  "--version=${PROJECT_VERSION}"
  "--cmake=${CMAKE_COMMAND}"
  "--generator=${CMAKE_GENERATOR}"
  "--make-program=${CMAKE_MAKE_PROGRAM}"
  "--cxx=${CMAKE_CXX_COMPILER}"
  "--cxx-id=${CMAKE_CXX_COMPILER_ID}"
  "--config=$<CONFIG>"
  "--use-curl=${MI_USE_CURL}"
  "--curl-enabled=${MI_CURL_ENABLED}"
  "--curl-linked=${MI_CURL_LINKED_ENABLED}"
  "--impl-type=$<TARGET_PROPERTY:managed_identity_impl,TYPE>")

function(mi_add_consumer_test name)
  add_test(NAME consumer_${name}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/consumers/run_consumer.py ${name}
                   "--work-dir=${_mi_consumer_work}/${name}" ${_mi_consumer_args} ${ARGN})
  set_tests_properties(consumer_${name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 LABELS consumer)
endfunction()

# The install tests write into the scratch prefix only: not added when an install directory
# is absolute (cmake --install --prefix would write there, e.g. to /usr/include).
set(_mi_install_tests ${MI_INSTALL})
if(MI_INSTALL)
  include(GNUInstallDirs)
  foreach(_dir CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_BINDIR CMAKE_INSTALL_DATADIR)
    if(IS_ABSOLUTE "${${_dir}}")
      message(STATUS "consumer_install, _find_package, _pkg_config not added: ${_dir} is absolute")
      set(_mi_install_tests OFF)
    endif()
  endforeach()
endif()
if(_mi_install_tests)
  mi_add_consumer_test(install "--build-dir=${PROJECT_BINARY_DIR}" "--prefix=${_mi_consumer_prefix}"
                       "--includedir=${CMAKE_INSTALL_INCLUDEDIR}")
  set_tests_properties(consumer_install PROPERTIES FIXTURES_SETUP mi_consumer_prefix)
  mi_add_consumer_test(find_package "--prefix=${_mi_consumer_prefix}")
  mi_add_consumer_test(pkg_config "--prefix=${_mi_consumer_prefix}" "--pkg-config=${PKG_CONFIG_EXECUTABLE}")
  set_tests_properties(consumer_find_package consumer_pkg_config PROPERTIES FIXTURES_REQUIRED mi_consumer_prefix)
endif()
mi_add_consumer_test(add_subdirectory)
mi_add_consumer_test(fetch_content)
mi_add_consumer_test(single_header)
find_program(MESON_EXECUTABLE meson)
if(MESON_EXECUTABLE)
  set(_mi_meson_arg "--meson=${MESON_EXECUTABLE}")
else()
  set(_mi_meson_arg "")
endif()
mi_add_consumer_test(meson_subproject ${_mi_meson_arg})
mi_add_consumer_test(meson_wrap ${_mi_meson_arg})

# A sanitized build installs an instrumented library: its consumer must link the runtime too.
if(MI_SANITIZE AND _mi_install_tests)
  set_tests_properties(consumer_find_package PROPERTIES
                       ENVIRONMENT "CXXFLAGS=-fsanitize=${MI_SANITIZE};LDFLAGS=-fsanitize=${MI_SANITIZE}")
endif()
