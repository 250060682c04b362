# Cross-compiling for 64-bit Windows with Debian's mingw-w64 (g++-mingw-w64-x86-64-posix):
#   cmake -S . -B build-windows -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64-x86_64.cmake
# The posix thread model is required: with the win32 model, GCC 12's libstdc++ has no
# std::thread or std::mutex. The programs are linked statically (libgcc, libstdc++,
# winpthread), so each .exe runs on Windows or under Wine without any mingw DLL beside it.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(MI_MINGW_TRIPLET x86_64-w64-mingw32)
find_program(CMAKE_CXX_COMPILER NAMES ${MI_MINGW_TRIPLET}-g++-posix ${MI_MINGW_TRIPLET}-g++)
if(NOT CMAKE_CXX_COMPILER)
  message(FATAL_ERROR "${MI_MINGW_TRIPLET}-g++-posix not found (Debian: apt-get install g++-mingw-w64-x86-64-posix)")
endif()
find_program(CMAKE_C_COMPILER NAMES ${MI_MINGW_TRIPLET}-gcc-posix ${MI_MINGW_TRIPLET}-gcc)
find_program(CMAKE_RC_COMPILER NAMES ${MI_MINGW_TRIPLET}-windres)

# Only the mingw sysroot for libraries and headers; programs (python3, ...) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${MI_MINGW_TRIPLET})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")

# Lets the build run its .exe files (e.g. ctest) through Wine when it is installed.
find_program(MI_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
if(MI_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MI_WINE})
endif()
