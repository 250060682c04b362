// The implementation's standard and platform headers, and its internal macros.
// amalgamate.py wraps this part and the ones after it in the MI_IMPLEMENTATION gate.
#pragma once
#include "api.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <thread>

#if MI_DETAIL_WINDOWS
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#define MI_DETAIL_UNDEF_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#define MI_DETAIL_UNDEF_NOMINMAX
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#if defined(_MSC_VER)
#pragma comment(lib, "ws2_32.lib")
#endif
#else
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

#if MI_DETAIL_CURL
// libcurl's headers are needed whether it is loaded at run time or linked.
#if !MI_DETAIL_CURL_LINKED
#include <dlfcn.h>
#endif
#if defined(__has_include)
#if !__has_include(<curl/curl.h>)
#error "MI_USE_CURL needs libcurl's headers at build time (e.g. libcurl4-openssl-dev)"
#endif
#endif
#include <curl/curl.h>
#if LIBCURL_VERSION_NUM < 0x075000
#error "MI_USE_CURL needs the headers of libcurl 7.80.0 or later (CURLOPT_PREREQFUNCTION)"
#endif
#endif

// Helpers that build messages stay out of line (MI_DETAIL_NOINLINE), and so do the six
// called-once steps of an acquisition that would otherwise be inlined into two very large
// functions (building the request, reading the response, parsing the token, the refresh, the
// Arc challenge, the pinned endpoint): 1.7 % fewer compile instructions for the same binary
// (bench/compile_instructions.sh). Functions that run
// only on failures, retries or the Azure Arc challenge, or once per client (New, options,
// detection), are cold (MI_DETAIL_COLD): GCC optimises them for size and moves them, and
// whatever it inlines of them, out of the hot path. Cold alone, without noinline, gives the
// smaller binary (4 KB less stripped mi-token, bench/build_cost.sh; BENCHMARKS.md).
#if defined(__GNUC__) || defined(__clang__)
#define MI_DETAIL_NOINLINE __attribute__((noinline))
#define MI_DETAIL_COLD __attribute__((cold))
#elif defined(_MSC_VER)
#define MI_DETAIL_NOINLINE __declspec(noinline)
#define MI_DETAIL_COLD __declspec(noinline)
#else
#define MI_DETAIL_NOINLINE
#define MI_DETAIL_COLD
#endif
