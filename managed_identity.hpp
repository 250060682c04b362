// managed_identity.hpp -- GENERATED FILE, DO NOT EDIT.
// Built by amalgamate.py from the parts in src/; edit those and run
// `python3 amalgamate.py`. Each part starts at a `// ---- src/<part> ----` line.

// ---- src/header_top.hpp ----
// SPDX-License-Identifier: MIT
//
// managed_identity.hpp -- Azure managed identity tokens for C++17, in one header.
//
// Gets OAuth access tokens for the managed identity of the Azure resource the
// program runs on (VM, App Service, Functions, Arc server, Cloud Shell, Service
// Fabric, Azure ML, AKS pod with workload identity), with no secret in the program.
// Mirrors MSAL for Go's `apps/managedidentity` package.
//
// USING THE HEADER
//   In exactly ONE .cpp file of the program (never in a header):
//       #define MI_IMPLEMENTATION
//       #include "managed_identity.hpp"
//   Everywhere else just #include "managed_identity.hpp" for the declarations.
//   With CMake, link mi::managed_identity_impl instead and define nothing.
//
// QUICK START
//   auto client = mi::New(mi::SystemAssigned());   // or mi::UserAssignedClientID("...")
//   if (!client) { puts(client.error().message().c_str()); return 1; }
//   auto token = client->AcquireToken(mi::Context::Background(),
//                                     "https://vault.azure.net");
//   if (!token) { puts(token.error().message().c_str()); return 1; }
//   send_with_header("Authorization: Bearer " + token->access_token);
//   // Tokens are cached process-wide and refreshed before they expire:
//   // call AcquireToken before every use, it is cheap on a cache hit.
//
// CONFIGURATION (every macro has a default; "all TUs" = must be identical in
// every translation unit that includes the header, "impl TU" = only matters in
// the one that defines MI_IMPLEMENTATION)
//   MI_IMPLEMENTATION        impl TU   compile the implementation here
//   MI_NO_EXCEPTIONS         all TUs   never throw (auto-detected from -fno-exceptions);
//                                      Result::value() on an error then aborts
//   MI_USE_CURL              impl TU   HTTPS through libcurl (Service Fabric, workload identity);
//                                      libcurl must use OpenSSL; builds with the libcurl
//                                      and OpenSSL headers; libcurl is loaded with dlopen
//                                      at the first HTTPS request (POSIX; -ldl on old glibc)
//   MI_CURL_LINKED           impl TU   with MI_USE_CURL: link libcurl instead of loading it
//                                      (-lcurl -lssl -lcrypto; static builds; always so
//                                      on Windows)
//   MI_CURL_LIBRARY          impl TU   with MI_USE_CURL: the library to load, a string
//                                      literal ("libcurl.so.4" then "libcurl.so";
//                                      macOS "libcurl.4.dylib")
//   MI_MAX_RESPONSE_BYTES    impl TU   largest accepted response body (1 MiB)
//   MI_MAX_HEADER_BYTES      impl TU   largest accepted response head (64 KiB)
//   MI_AZURE_ARC_TOKEN_DIR   impl TU   directory the Arc key file must be in
//                                      (platform default; for tests)
//   MI_AZURE_ARC_HIMDS_PATH  impl TU   file whose presence means "Arc agent installed"
//                                      (platform default; for tests)
//
// TRANSPORTS
//   http:// endpoints (IMDS, App Service, Arc, Cloud Shell, Azure ML) use a small
//   HTTP/1.1 client over POSIX or WinSock sockets: no proxy, no redirects, bounded
//   sizes and times. https:// (Service Fabric, workload identity) needs MI_USE_CURL;
//   only workload identity's Entra ID requests honour HTTPS_PROXY / NO_PROXY, and
//   mi::WithCAFile("ca.pem") adds trust anchors to the system store for them (a
//   TLS-inspecting proxy's CA, a local emulator's). Any transport can be replaced
//   with mi::WithHTTPClient(std::shared_ptr<mi::HttpClient>).
//
// SOURCES (seven; detected from the environment by mi::GetSource(), once per
// client; the first that matches, in this order)
//   WorkloadIdentity  AZURE_FEDERATED_TOKEN_FILE + AZURE_TENANT_ID (AKS; checked first;
//                  AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST, AZURE_KUBERNETES_TOKEN_PROXY)
//   ServiceFabric  IDENTITY_ENDPOINT + IDENTITY_HEADER + IDENTITY_SERVER_THUMBPRINT
//   AppService     IDENTITY_ENDPOINT + IDENTITY_HEADER
//   AzureML        MSI_ENDPOINT + MSI_SECRET (+ DEFAULT_IDENTITY_CLIENT_ID)
//   CloudShell     MSI_ENDPOINT
//   AzureArc       IDENTITY_ENDPOINT + IMDS_ENDPOINT, or the Arc agent installed
//   DefaultToIMDS  otherwise; AZURE_POD_IDENTITY_AUTHORITY_HOST overrides the host
//
// THREAD SAFETY
//   mi::Client, mi::Context and the token cache may be used from any number of
//   threads. Concurrent cache misses for one token make one request.
//
// ERRORS AND LOGGING
//   Nothing throws. Calls return mi::Result<T>; on failure .error() is an
//   mi::Error with a code (mi::Errc), a message saying what to fix, the HTTP
//   status, the endpoint's error code, description and correlation id.
//   mi::WithLogger receives diagnostics. Neither ever contains a token or secret.
//
// SECURITY NOTES
//   Checked: Service Fabric's server certificate is pinned to
//   IDENTITY_SERVER_THUMBPRINT during the handshake; Entra ID's certificate chain
//   and host name are validated (system store plus mi::WithCAFile); Arc key files must be
//   regular files of at most 4096 bytes in the agent's token directory; every
//   value put in a URL is percent-encoded; response sizes are bounded.
//   Not checked: that a plain-http metadata endpoint is genuine (nothing can be).
//
// LICENSE: MIT. Copyright (c) 2026 the managed_identity.hpp authors.

// ---- configuration, normalised once ---------------------------------------
// Every configuration macro is read here and nowhere else: the rest of the header
// tests only the MI_DETAIL_* values below. They are set again on every inclusion
// (a second inclusion may compile the implementation) and undefined at the end,
// so none of them reaches the includer.

// Exceptions: on unless the compiler has them off or MI_NO_EXCEPTIONS is defined.
#if defined(MI_NO_EXCEPTIONS) || !(defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND))
#define MI_DETAIL_EXCEPTIONS 0
#else
#define MI_DETAIL_EXCEPTIONS 1
#endif

#if defined(_MSVC_LANG)
#define MI_DETAIL_CPLUSPLUS _MSVC_LANG
#else
#define MI_DETAIL_CPLUSPLUS __cplusplus
#endif
#if MI_DETAIL_CPLUSPLUS < 201703L
#error "managed_identity.hpp needs C++17 or later (use -std=c++17 or /std:c++17)"
#endif

#if defined(_WIN32)
#define MI_DETAIL_WINDOWS 1
#else
#define MI_DETAIL_WINDOWS 0
#endif

// HTTPS through libcurl: loaded with dlopen at the first HTTPS request, unless the
// program links it (MI_CURL_LINKED; always so on Windows, which has no dlopen).
#if defined(MI_CURL_LINKED) && !defined(MI_USE_CURL)
#error "MI_CURL_LINKED only chooses how MI_USE_CURL gets libcurl: define MI_USE_CURL too"
#endif
#if defined(MI_USE_CURL)
#define MI_DETAIL_CURL 1
#else
#define MI_DETAIL_CURL 0
#endif
#if defined(MI_USE_CURL) && (defined(MI_CURL_LINKED) || defined(_WIN32))
#define MI_DETAIL_CURL_LINKED 1
#else
#define MI_DETAIL_CURL_LINKED 0
#endif

// ---- src/api.hpp ----
// The public API (README.md shows it in use). Everything here is OS-free; state of
// the heavier classes sits behind pointers so no macro changes a public layout.

#ifndef MI_MANAGED_IDENTITY_HPP
#define MI_MANAGED_IDENTITY_HPP

#define MI_VERSION_MAJOR 0
#define MI_VERSION_MINOR 1
#define MI_VERSION_PATCH 0
#define MI_VERSION_STRING "0.1.0"

// ---- size limits (public: the includer may read them) ----------------------

#ifndef MI_MAX_RESPONSE_BYTES
#define MI_MAX_RESPONSE_BYTES (1024 * 1024)
#endif
#ifndef MI_MAX_HEADER_BYTES
#define MI_MAX_HEADER_BYTES (64 * 1024)
#endif
#if (MI_MAX_RESPONSE_BYTES) < 1024 || (MI_MAX_HEADER_BYTES) < 1024
#error "MI_MAX_RESPONSE_BYTES and MI_MAX_HEADER_BYTES must be at least 1024: token responses are larger"
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>
#if MI_DETAIL_EXCEPTIONS
#include <exception>
#endif

namespace mi {
inline namespace v1 {

namespace detail {
struct ContextState;
struct ClientState;
struct ClientConfig;
struct AcquireConfig;
struct ErrorAccess;
}  // namespace detail

// ---- identities ------------------------------------------------------------

enum class IDKind { SystemAssigned, ClientID, ObjectID, ResourceID };

class ID {
 public:
  ID() = default;  // system-assigned
  IDKind kind() const noexcept { return kind_; }
  const std::string& value() const noexcept { return value_; }  // empty for system-assigned

 private:
  ID(IDKind kind, std::string value) : kind_(kind), value_(std::move(value)) {}
  friend ID UserAssignedClientID(std::string);
  friend ID UserAssignedObjectID(std::string);
  friend ID UserAssignedResourceID(std::string);
  IDKind kind_ = IDKind::SystemAssigned;
  std::string value_;
};

inline ID SystemAssigned() { return ID(); }
inline ID UserAssignedClientID(std::string client_id) { return ID(IDKind::ClientID, std::move(client_id)); }
inline ID UserAssignedObjectID(std::string object_id) { return ID(IDKind::ObjectID, std::move(object_id)); }
inline ID UserAssignedResourceID(std::string resource_id) {
  return ID(IDKind::ResourceID, std::move(resource_id));
}

// ---- sources ---------------------------------------------------------------

enum class Source { DefaultToIMDS, AppService, AzureArc, CloudShell, ServiceFabric, AzureML,
                    WorkloadIdentity };

inline std::string_view to_string(Source source) noexcept {
  switch (source) {
    case Source::DefaultToIMDS: return "DefaultToIMDS";
    case Source::AppService: return "AppService";
    case Source::AzureArc: return "AzureArc";
    case Source::CloudShell: return "CloudShell";
    case Source::ServiceFabric: return "ServiceFabric";
    case Source::AzureML: return "AzureML";
    case Source::WorkloadIdentity: return "WorkloadIdentity";
  }
  return "Unknown";
}

// Reads the environment (and, for Azure Arc, whether the agent is installed).
// No network I/O; an empty variable counts as unset.
Source GetSource();

enum class TokenSource { IdentityProvider, Cache };

inline std::string_view to_string(TokenSource source) noexcept {
  switch (source) {
    case TokenSource::IdentityProvider: return "IdentityProvider";
    case TokenSource::Cache: return "Cache";
  }
  return "Unknown";
}

enum class LogLevel { Error, Warning, Info, Verbose };

inline std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::Error: return "Error";
    case LogLevel::Warning: return "Warning";
    case LogLevel::Info: return "Info";
    case LogLevel::Verbose: return "Verbose";
  }
  return "Unknown";
}

// ---- errors ----------------------------------------------------------------

enum class Errc {
  invalid_argument,        // empty ID, malformed endpoint URL, control character in env input
  unsupported_identity,    // the source cannot take this kind of user-assigned ID
  network,                 // resolve/connect/send/receive failed, or the peer closed early
  timeout,                 // per-attempt timeout or the context's deadline passed
  canceled,                // the context was canceled
  http_status,             // the endpoint's final answer was not a success
  invalid_response,        // not HTTP/1.x, too large, or an unusable success body
  arc_challenge,           // the Azure Arc challenge failed or the identity was not confirmed
  tls,                     // handshake or thumbprint failure, or HTTPS not compiled in
  platform_not_supported,  // e.g. Azure Arc on an OS other than Linux or Windows
};

inline std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::unsupported_identity: return "unsupported_identity";
    case Errc::network: return "network";
    case Errc::timeout: return "timeout";
    case Errc::canceled: return "canceled";
    case Errc::http_status: return "http_status";
    case Errc::invalid_response: return "invalid_response";
    case Errc::arc_challenge: return "arc_challenge";
    case Errc::tls: return "tls";
    case Errc::platform_not_supported: return "platform_not_supported";
  }
  return "unknown";
}

class Error {
 public:
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  Errc code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }  // actionable; no token or secret
  int status_code() const noexcept { return status_code_; }          // HTTP status, 0 when none
  const std::string& error_code() const noexcept { return error_code_; }
  const std::string& error_description() const noexcept { return error_description_; }
  const std::string& correlation_id() const noexcept { return correlation_id_; }
  Source source() const noexcept { return source_; }
  // Whether the same call may succeed later: transport failures, timeouts and the statuses
  // the retry policy retries. Decided from code(), status_code() and source() alone, so an
  // error built by a custom HttpClient answers like the built-in transport's.
  bool retryable() const noexcept;

 private:
  friend struct detail::ErrorAccess;
  Errc code_;
  std::string message_;
  int status_code_ = 0;
  std::string error_code_;
  std::string error_description_;
  std::string correlation_id_;
  Source source_ = Source::DefaultToIMDS;
};

#if MI_DETAIL_EXCEPTIONS
// Thrown by Result<T>::value() on a failed result (only when exceptions are on).
class Exception : public std::exception {
 public:
  explicit Exception(Error error) : error_(std::move(error)) {}
  const Error& error() const noexcept { return error_; }
  const char* what() const noexcept override { return error_.message().c_str(); }

 private:
  Error error_;
};
#endif

namespace detail {
[[noreturn]] inline void bad_result_access(const Error& error) {
#if MI_DETAIL_EXCEPTIONS
  throw Exception(error);
#else
  (void)std::fprintf(stderr, "mi::Result::value() called on an error result: %s\n", error.message().c_str());
  std::abort();
#endif
}
[[noreturn]] inline void bad_error_access() {
  (void)std::fprintf(stderr, "mi::Result::error() called on a successful result\n");
  std::abort();
}
}  // namespace detail

// A value or an Error, like std::expected<T, Error>.
template <class T>
class Result {
 public:
  Result(T value) : ok_(true) { ::new (static_cast<void*>(&value_)) T(std::move(value)); }  // NOLINT
  Result(Error error) : ok_(false) { ::new (static_cast<void*>(&error_)) Error(std::move(error)); }  // NOLINT
  Result(const Result& other) : ok_(other.ok_) {
    if (ok_) ::new (static_cast<void*>(&value_)) T(other.value_);
    else ::new (static_cast<void*>(&error_)) Error(other.error_);
  }
  Result(Result&& other) noexcept(std::is_nothrow_move_constructible<T>::value) : ok_(other.ok_) {
    if (ok_) ::new (static_cast<void*>(&value_)) T(std::move(other.value_));
    else ::new (static_cast<void*>(&error_)) Error(std::move(other.error_));
  }
  Result& operator=(const Result& other) {
    if (this != &other) { Result copy(other); destroy(); construct_from(std::move(copy)); }
    return *this;
  }
  Result& operator=(Result&& other) noexcept(std::is_nothrow_move_constructible<T>::value) {
    if (this != &other) { destroy(); construct_from(std::move(other)); }
    return *this;
  }
  ~Result() { destroy(); }

  explicit operator bool() const noexcept { return ok_; }
  bool ok() const noexcept { return ok_; }

  T& value() & { check(); return value_; }
  const T& value() const& { check(); return value_; }
  T&& value() && { check(); return std::move(value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const {  // precondition: !ok()
    if (ok_) detail::bad_error_access();
    return error_;
  }

 private:
  void check() const { if (!ok_) detail::bad_result_access(error_); }
  void destroy() noexcept {
    if (ok_) value_.~T();
    else error_.~Error();
  }
  void construct_from(Result&& other) {
    ok_ = other.ok_;
    if (ok_) ::new (static_cast<void*>(&value_)) T(std::move(other.value_));
    else ::new (static_cast<void*>(&error_)) Error(std::move(other.error_));
  }
  union {
    T value_;
    Error error_;
  };
  bool ok_;
};

// ---- tokens ----------------------------------------------------------------

struct AuthResult {
  std::string access_token;
  std::string token_type;                              // "Bearer" when the endpoint omits it
  std::string resource;                                // the requested resource, /.default trimmed
  std::chrono::system_clock::time_point expires_on;
  std::chrono::system_clock::time_point refresh_on;    // epoch when there is none
  TokenSource token_source = TokenSource::IdentityProvider;
};

// ---- context: deadline and cancellation -------------------------------------

class Context {
 public:
  Context() = default;  // same as Background()
  static Context Background() { return Context(); }
  Context WithTimeout(std::chrono::milliseconds timeout) const;
  Context WithDeadline(std::chrono::steady_clock::time_point deadline) const;
  Context WithCancel() const;
  void Cancel() const;  // cancels this context and its descendants; no effect on Background()

  // Extras: the earliest deadline of this context and its ancestors
  // (steady_clock::time_point::max() when none), and whether it was canceled.
  std::chrono::steady_clock::time_point deadline() const noexcept;
  bool canceled() const noexcept;
  bool expired() const noexcept;  // the deadline has passed

 private:
  explicit Context(std::shared_ptr<detail::ContextState> state) : state_(std::move(state)) {}
  friend struct detail::ContextState;
  std::shared_ptr<detail::ContextState> state_;
};

// ---- HTTP transport seam ----------------------------------------------------

struct HttpRequest {
  std::string method, url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Service Fabric: the SHA-1 thumbprint (40 upper-case hex digits) that the server's
  // leaf certificate must match; empty for every other source.
  std::string pinned_sha1;
};
struct HttpResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};
class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Sends one request; never follows redirects. Transport failures are errors
  // (network, timeout, canceled, tls, invalid_response); any status is a value.
  virtual Result<HttpResponse> Do(const Context& ctx, const HttpRequest& request) = 0;
  // True only if Do() compares a non-empty request.pinned_sha1 with the SHA-1 of the
  // server's leaf certificate during the TLS handshake and sends nothing on a mismatch.
  // Service Fabric's secret goes only to such a transport: New() refuses any other.
  virtual bool PinsServerCertificate() const noexcept { return false; }
};

// ---- options -----------------------------------------------------------------

class ClientOption {
 public:
  explicit ClientOption(std::function<void(detail::ClientConfig&)> apply) : apply_(std::move(apply)) {}
  void apply(detail::ClientConfig& config) const { if (apply_) apply_(config); }

 private:
  std::function<void(detail::ClientConfig&)> apply_;
};

class AcquireTokenOption {
 public:
  explicit AcquireTokenOption(std::function<void(detail::AcquireConfig&)> apply) : apply_(std::move(apply)) {}
  void apply(detail::AcquireConfig& config) const { if (apply_) apply_(config); }

 private:
  std::function<void(detail::AcquireConfig&)> apply_;
};

ClientOption WithHTTPClient(std::shared_ptr<HttpClient> client);
ClientOption WithRetryPolicyDisabled();
ClientOption WithClientCapabilities(std::vector<std::string> capabilities);
ClientOption WithLogger(std::function<void(LogLevel, std::string_view)> logger);
// Extra trust anchors (a PEM file) for the HTTPS endpoints whose certificate chain is
// validated (WorkloadIdentity), on top of the system's trust store; used by the built-in
// libcurl transport only, and never for Service Fabric (its certificate is pinned).
ClientOption WithCAFile(std::string pem_path);
AcquireTokenOption WithClaims(std::string claims);

// Extra options (beyond MSAL Go's set; README.md lists them).
// Retries after the first attempt; the source's default when not given (IMDS 3, others 3).
ClientOption WithMaxRetries(int retries);
// Connect timeout and whole-attempt timeout of each request (defaults 5 s and 30 s).
ClientOption WithTimeouts(std::chrono::milliseconds connect, std::chrono::milliseconds attempt);
// Test hooks: the wall clock used for expiry and refresh times, and the function
// that waits between retries (it receives the wait; the library has already made
// sure the wait ends before the context's deadline).
ClientOption WithClock(std::function<std::chrono::system_clock::time_point()> now);
ClientOption WithSleep(std::function<void(std::chrono::milliseconds)> sleep);

// ---- the client ----------------------------------------------------------------

class Client {
 public:
  Result<AuthResult> AcquireToken(const Context& ctx, std::string_view resource) const;
  Result<AuthResult> AcquireToken(const Context& ctx, std::string_view resource,
                                  const std::vector<AcquireTokenOption>& options) const;
  template <class First, class... Rest,
            class = typename std::enable_if<std::is_convertible<First, AcquireTokenOption>::value>::type>
  Result<AuthResult> AcquireToken(const Context& ctx, std::string_view resource, First&& first,
                                  Rest&&... rest) const {
    return AcquireToken(ctx, resource,
                        std::vector<AcquireTokenOption>{AcquireTokenOption(std::forward<First>(first)),
                                                        AcquireTokenOption(std::forward<Rest>(rest))...});
  }
  Source source() const noexcept;
  const ID& id() const noexcept;

 private:
  explicit Client(std::shared_ptr<detail::ClientState> state) : state_(std::move(state)) {}
  friend struct detail::ClientState;
  std::shared_ptr<detail::ClientState> state_;
};

Result<Client> New(ID id, const std::vector<ClientOption>& options);
inline Result<Client> New(ID id) { return New(std::move(id), std::vector<ClientOption>{}); }
template <class First, class... Rest,
          class = typename std::enable_if<std::is_convertible<First, ClientOption>::value>::type>
Result<Client> New(ID id, First&& first, Rest&&... rest) {
  return New(std::move(id), std::vector<ClientOption>{ClientOption(std::forward<First>(first)),
                                                      ClientOption(std::forward<Rest>(rest))...});
}

// Is a managed identity endpoint here? For a program that runs both on Azure and elsewhere,
// to choose its credential at start-up (README.md, "Probe"). A source the environment
// configures is answered without I/O; IMDS, and an Azure Arc agent found by its file, by one
// request with no retries, bounded by the context's deadline or, when it has none, by 1 s.
// Requests no token and caches nothing. Not present: an error, network or timeout. Takes the
// same options as New (and checks them the same way).
Result<Source> Probe(const Context& ctx, const std::vector<ClientOption>& options);
inline Result<Source> Probe(const Context& ctx) { return Probe(ctx, std::vector<ClientOption>{}); }
template <class First, class... Rest,
          class = typename std::enable_if<std::is_convertible<First, ClientOption>::value>::type>
Result<Source> Probe(const Context& ctx, First&& first, Rest&&... rest) {
  return Probe(ctx, std::vector<ClientOption>{ClientOption(std::forward<First>(first)),
                                              ClientOption(std::forward<Rest>(rest))...});
}

}  // namespace v1
}  // namespace mi

#endif  // MI_MANAGED_IDENTITY_HPP (declarations)

// ============================================================================
// IMPLEMENTATION. Compiled only where MI_IMPLEMENTATION is defined, once per
// translation unit even if the header is included again.
// ============================================================================
#if defined(MI_IMPLEMENTATION) && !defined(MI_DETAIL_IMPLEMENTATION_INCLUDED)
#define MI_DETAIL_IMPLEMENTATION_INCLUDED

// ---- src/impl_begin.hpp ----
// The implementation's standard and platform headers, and its internal macros.
// amalgamate.py wraps this part and the ones after it in the MI_IMPLEMENTATION gate.

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

// ---- src/util.hpp ----
// Small helpers shared by every part: errors, strings, environment, UUIDs,
// hashes. Nothing here does I/O except reading the environment.

namespace mi {
inline namespace v1 {
namespace detail {

// Builds mi::Error values with the fields the public constructor does not take.
struct ErrorAccess {
  MI_DETAIL_COLD static Error make(Errc code, std::string message, Source source = Source::DefaultToIMDS) {
    Error e(code, std::move(message));
    e.source_ = source;
    return e;
  }
  static void set_status(Error& e, int status) { e.status_code_ = status; }
  static void set_source(Error& e, Source source) { e.source_ = source; }
  static void set_server_details(Error& e, std::string code, std::string description, std::string correlation_id) {
    e.error_code_ = std::move(code);
    e.error_description_ = std::move(description);
    e.correlation_id_ = std::move(correlation_id);
  }
  static void set_correlation_id(Error& e, std::string id) { e.correlation_id_ = std::move(id); }
  static void set_message(Error& e, std::string message) { e.message_ = std::move(message); }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

MI_DETAIL_COLD inline Error make_error(Errc code, std::string message) {
  return ErrorAccess::make(code, std::move(message));
}

// ---- message building --------------------------------------------------------------

// Joins the parts into one string. Messages are built with this (and num below) rather
// than with chains of std::string operator+ and std::to_string, each of which inlines
// a temporary string and its clean-up at the call site: that made most of the code.
MI_DETAIL_NOINLINE std::string cat(std::initializer_list<std::string_view> parts) {
  size_t size = 0;
  for (std::string_view part : parts) size += part.size();
  std::string out;
  out.reserve(size);
  for (std::string_view part : parts) out.append(part.data(), part.size());
  return out;
}

// Decimal text of an integer (std::to_string, out of line; unsigned values are cast by the caller).
MI_DETAIL_NOINLINE std::string num(long long value) { return std::to_string(value); }

// An error result, the message parts joined: one call at each of the many places that
// give up, instead of a string, an Error and a Result built (and cleaned up) inline.
template <class T>
MI_DETAIL_COLD Result<T> failure(Errc code, std::initializer_list<std::string_view> message) {
  return Result<T>(make_error(code, cat(message)));
}

// ---- name/value lists ------------------------------------------------------------

using StringPairs = std::vector<std::pair<std::string, std::string>>;

// Appends one name/value pair (query parameters, headers). Every caller goes through
// this one function, so the vector's growth code is compiled once, not once per
// combination of argument types.
void add_pair(StringPairs& list, std::string_view name, std::string_view value) {
  list.emplace_back(std::string(name), std::string(value));
}

// ---- strings -------------------------------------------------------------------

inline char ascii_lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ascii_lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  if (a == b) return true;  // the common case (same spelling), a vectorised compare
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

inline bool starts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}
inline bool ends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

inline std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True if any byte is a C0 control character or DEL (never allowed on the wire).
inline bool has_control_char(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// RFC 3986: unreserved characters stay, every other byte becomes %XX.
std::string percent_encode(std::string_view s) {
  static const char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() + s.size() / 2);
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

inline int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX (and '+' as space when form is true); invalid escapes stay as they are.
std::string percent_decode(std::string_view s, bool form) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    } else if (c == '+' && form) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string to_hex(const unsigned char* data, size_t n) {
  static const char hex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = hex[data[i] >> 4];
    out[2 * i + 1] = hex[data[i] & 15];
  }
  return out;
}

// Parses a non-negative decimal integer that fits in int64; the whole view must be digits.
inline bool parse_int64(std::string_view s, int64_t& out) noexcept {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

// ---- environment -----------------------------------------------------------------

// The variable's value; an unset and an empty variable both give "".
std::string env(const char* name) {
#if defined(_MSC_VER)
  char* value = nullptr;
  size_t len = 0;
  if (_dupenv_s(&value, &len, name) != 0 || value == nullptr) return std::string();
  std::string out(value);
  std::free(value);
  return out;
#else
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
#endif
}

// ---- randomness ---------------------------------------------------------------------

// Request ids and retry jitter need uniqueness, not secrecy: a splitmix64 stream seeded
// once from the OS's random source where it is cheap to read, mixed with time and addresses.
inline uint64_t splitmix64_mix(uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t random_seed() {
  uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                  (static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) << 1) ^
                  static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&seed));
#if !MI_DETAIL_WINDOWS
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    uint64_t bytes = 0;
    if (::read(fd, &bytes, sizeof bytes) == static_cast<ssize_t>(sizeof bytes)) seed ^= bytes;
    ::close(fd);
  }
#else
  seed ^= static_cast<uint64_t>(GetCurrentProcessId()) << 32 ^ static_cast<uint64_t>(GetTickCount64());
#endif
  return seed;
}

// The stream's position, advanced atomically (splitmix64 needs nothing else), so no lock:
// a fork() while another thread draws leaves nothing held in the child. Constant-initialised
// (no guard) and trivially destroyed, so it is usable at any time, from any thread.
struct RandomState {
  std::atomic<uint64_t> position{0};
  std::atomic<bool> seeded{false};
  std::atomic<bool> fork_handler{false};
};
inline RandomState& random_state() noexcept {
  static RandomState state;
  return state;
}

#if !MI_DETAIL_WINDOWS
// A forked child starts with a copy of the parent's position: without a new seed both
// would send the same request ids and wait the same jitter. Runs in the child right after
// fork(), where only async-signal-safe calls are allowed: random_seed makes only those
// (clock reads, open, read, close).
inline void random_reseed_in_child() noexcept { random_state().position.store(random_seed(), std::memory_order_relaxed); }
#endif

MI_DETAIL_COLD void random_first_seed(RandomState& s) {
  // Threads racing to the first draw each store a seed; any of them will do.
  s.position.store(random_seed(), std::memory_order_relaxed);
#if !MI_DETAIL_WINDOWS  // Windows has no fork()
  if (!s.fork_handler.exchange(true)) ::pthread_atfork(nullptr, nullptr, &random_reseed_in_child);
#endif
  s.seeded.store(true, std::memory_order_release);
}

uint64_t random_u64() {
  RandomState& s = random_state();
  if (!s.seeded.load(std::memory_order_acquire)) random_first_seed(s);
  uint64_t z = s.position.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) + 0x9e3779b97f4a7c15ull;
  return splitmix64_mix(z);
}

// A random (version 4, RFC 9562) UUID in lowercase 8-4-4-4-12 form.
std::string uuid4() {
  unsigned char b[16];
  uint64_t hi = random_u64(), lo = random_u64();
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<unsigned char>(hi >> (8 * i));
    b[8 + i] = static_cast<unsigned char>(lo >> (8 * i));
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static const char hex[] = "0123456789abcdef";
  char text[36];
  size_t n = 0;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text[n++] = '-';
    text[n++] = hex[b[i] >> 4];
    text[n++] = hex[b[i] & 15];
  }
  return std::string(text, sizeof text);
}

// ---- SHA-256 (FIPS 180-4), for Service Fabric's token_sha256_to_refresh ---------------

MI_DETAIL_COLD std::string sha256_hex(std::string_view data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  std::string msg(data);
  uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<char>(bits >> (8 * i)));
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * static_cast<size_t>(i));
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + s1 + ch + k[i] + w[i];
      uint32_t s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = s0 + maj;
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  unsigned char out[32];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<unsigned char>(h[i] >> (24 - 8 * j));
  return to_hex(out, 32);
}

// ---- time --------------------------------------------------------------------------

using SysClock = std::chrono::system_clock;
using SteadyClock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// The wall clock at the kernel's tick resolution (a few ms), about 4x cheaper than
// SysClock::now() where the OS has it: enough for "expires in more than 5 minutes".
inline SysClock::time_point coarse_now() noexcept {
#if defined(CLOCK_REALTIME_COARSE)
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) == 0)
    return SysClock::time_point(std::chrono::duration_cast<SysClock::duration>(std::chrono::seconds(ts.tv_sec) +
                                                                               std::chrono::nanoseconds(ts.tv_nsec)));
#endif
  return SysClock::now();
}

// The whole seconds around the epoch that SysClock can hold. Where it counts nanoseconds
// in 64 bits (libstdc++, libc++ on Linux) that is only the years 1678 to 2262: converting
// a date outside them would overflow, so every conversion goes through the check below.
constexpr int64_t kClockMaxSeconds =
    static_cast<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(SysClock::duration::max()).count());
constexpr int64_t kClockMinSeconds =
    static_cast<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(SysClock::duration::min()).count());

// Seconds since the epoch as a time point; false (and `out` untouched) outside the clock's range.
inline bool from_unix_seconds(int64_t s, SysClock::time_point& out) noexcept {
  if (s < kClockMinSeconds || s > kClockMaxSeconds) return false;
  out = SysClock::time_point(std::chrono::duration_cast<SysClock::duration>(std::chrono::seconds(s)));
  return true;
}
// The same, saturating at the ends of the clock's range (for values known to be in it).
inline SysClock::time_point from_unix_seconds(int64_t s) noexcept {
  SysClock::time_point out;
  if (!from_unix_seconds(s, out)) out = s < 0 ? SysClock::time_point::min() : SysClock::time_point::max();
  return out;
}
inline int64_t to_unix_seconds(SysClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
inline int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? static_cast<unsigned>(-3) : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/json.hpp ----
// A strict RFC 8259 JSON parser for the small bodies the endpoints send.
// Grammar exactly as the RFC (no comments, trailing commas, leading zeros,
// NaN or single quotes), strings validated as UTF-8 with every escape decoded
// (surrogate pairs joined, lone ones rejected), numbers kept as their literal
// text, nesting limited to kMaxJsonDepth before recursing. Error messages give
// a byte offset and never quote the input (it may hold a token).
//
// A tree of every value costs about 90 bytes per value, so a 1 MiB body of tiny values
// ("[0,0,...]") would cost some 45 MB. Bodies from the network are therefore parsed with
// a filter: the whole grammar is still checked, but only the members the caller reads are
// built; everything else is validated and dropped on the fly.
//
// Failure is reported as the parser's own small status (what and at which byte), not as an
// mi::Error: the parser knows neither the source nor which body it reads, so each caller
// words the Error once, for its body.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

struct JsonValue {
  enum class Type : unsigned char { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  std::string text;  // String: the decoded UTF-8 value; Number: the literal exactly as written
  std::vector<JsonValue> items;                            // Array elements
  std::vector<std::pair<std::string, JsonValue>> members;  // Object members in document order

  // Special members are defined after the class: their definitions need
  // std::pair<std::string, JsonValue>, which needs JsonValue complete (clang
  // with libstdc++ in C++20 mode rejects the implicit inline ones).
  JsonValue();
  JsonValue(const JsonValue& other);
  JsonValue(JsonValue&& other) noexcept;
  JsonValue& operator=(const JsonValue& other);
  JsonValue& operator=(JsonValue&& other) noexcept;
  MI_DETAIL_NOINLINE ~JsonValue();  // recursive: inlined, GCC copies it into itself levels deep

  // The first member with that key (objects only), else nullptr.
  const JsonValue* find(std::string_view key) const noexcept;
  bool is_number() const noexcept { return type == Type::Number; }
  bool is_string() const noexcept { return type == Type::String; }
  bool is_object() const noexcept { return type == Type::Object; }
};

// Inline, so that only those the program uses are compiled; the destructor (always used) is not.
inline JsonValue::JsonValue() = default;
inline JsonValue::JsonValue(const JsonValue& other) = default;
inline JsonValue::JsonValue(JsonValue&& other) noexcept = default;
inline JsonValue& JsonValue::operator=(const JsonValue& other) = default;
inline JsonValue& JsonValue::operator=(JsonValue&& other) noexcept = default;
JsonValue::~JsonValue() = default;

const JsonValue* JsonValue::find(std::string_view key) const noexcept {
  if (type != Type::Object) return nullptr;
  for (const auto& member : members)
    if (member.first == key) return &member.second;
  return nullptr;
}

constexpr int kMaxJsonDepth = 64;

// Which object members to build: called with the object's depth (0 for the root) and the
// member's decoded name. Array elements are never built under a filter.
using JsonKeep = bool (*)(int depth, std::string_view name) noexcept;

// The outcome of a parse: `error` is nullptr on success, else what was wrong (no input
// quoted), found at byte `offset`.
struct JsonStatus {
  const char* error = nullptr;
  size_t offset = 0;
  explicit operator bool() const noexcept { return error == nullptr; }
};

class JsonParser {
 public:
  JsonParser(std::string_view text, JsonKeep keep) noexcept
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()), keep_(keep) {}

  // Parses the whole input as one document.
  JsonStatus parse_document(JsonValue& out);

 private:
  bool fail(const char* what, const char* at) noexcept {
    error_ = what;
    offset_ = static_cast<size_t>(at - begin_);
    return false;
  }
  void skip_whitespace() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  // A null `out` checks the value without building it.
  bool parse_value(JsonValue* out, int depth);
  bool parse_array(JsonValue* out, int depth);
  bool parse_object(JsonValue* out, int depth);
  bool parse_string(std::string* out);
  bool parse_escaped(std::string& out, const char* start);
  bool parse_number(JsonValue* out);
  bool parse_literal(const char* word, size_t length);
  bool parse_hex4(const char* at, unsigned& out) noexcept;
  bool skip_utf8_sequence() noexcept;

  const char* begin_;
  const char* p_;
  const char* end_;
  const char* error_ = nullptr;
  size_t offset_ = 0;
  JsonKeep keep_;        // nullptr: build everything
  std::string scratch_;  // names under a filter and escaped strings that are dropped, reused
};

JsonStatus JsonParser::parse_document(JsonValue& out) {
  out = JsonValue();
  skip_whitespace();
  if (parse_value(&out, 0)) {
    skip_whitespace();
    if (p_ != end_) fail("unexpected data after the JSON document", p_);
  }
  return JsonStatus{error_, offset_};
}

bool JsonParser::parse_value(JsonValue* out, int depth) {
  if (p_ == end_) return fail("unexpected end of input, expected a value", p_);
  switch (*p_) {
    case '{': return parse_object(out, depth);
    case '[': return parse_array(out, depth);
    case '"':
      if (out == nullptr) return parse_string(nullptr);
      out->type = JsonValue::Type::String;
      return parse_string(&out->text);
    case 't':
    case 'f':
      if (out != nullptr) {
        out->type = JsonValue::Type::Bool;
        out->boolean = *p_ == 't';
      }
      return *p_ == 't' ? parse_literal("true", 4) : parse_literal("false", 5);
    case 'n':
      if (out != nullptr) out->type = JsonValue::Type::Null;
      return parse_literal("null", 4);
    default:
      if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) return parse_number(out);
      return fail("unexpected character, expected a value", p_);
  }
}

bool JsonParser::parse_literal(const char* word, size_t length) {
  if (static_cast<size_t>(end_ - p_) < length) {
    // Report the first mismatching byte, or the end of input for a truncated literal.
    for (const char* q = p_; q < end_; ++q)
      if (*q != word[static_cast<size_t>(q - p_)]) return fail("invalid literal", q);
    return fail("unexpected end of input in a literal", end_);
  }
  for (size_t i = 0; i < length; ++i)
    if (p_[i] != word[i]) return fail("invalid literal", p_ + i);
  p_ += length;
  return true;
}

bool JsonParser::parse_number(JsonValue* out) {
  const char* start = p_;
  auto is_digit = [this]() noexcept { return p_ < end_ && *p_ >= '0' && *p_ <= '9'; };
  if (*p_ == '-') ++p_;
  if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
  if (*p_ == '0') {
    ++p_;
    if (is_digit()) return fail("invalid number (leading zero)", p_);
  } else {
    while (is_digit()) ++p_;
  }
  if (p_ < end_ && *p_ == '.') {
    ++p_;
    if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
    while (is_digit()) ++p_;
  }
  if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
    ++p_;
    if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
    while (is_digit()) ++p_;
  }
  if (out != nullptr) {
    out->type = JsonValue::Type::Number;
    out->text.assign(start, static_cast<size_t>(p_ - start));
  }
  return true;
}

bool JsonParser::parse_hex4(const char* at, unsigned& out) noexcept {
  if (end_ - at < 4) {
    for (const char* q = at; q < end_; ++q)
      if (hex_value(*q) < 0) return fail("invalid \\u escape", q);
    return fail("unexpected end of input in a \\u escape", end_);
  }
  unsigned v = 0;
  for (int i = 0; i < 4; ++i) {
    int h = hex_value(at[i]);
    if (h < 0) return fail("invalid \\u escape", at + i);
    v = (v << 4) | static_cast<unsigned>(h);
  }
  out = v;
  return true;
}

// Validates one multi-byte UTF-8 sequence at p_ (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF) and moves past it.
bool JsonParser::skip_utf8_sequence() noexcept {
  const unsigned char* s = reinterpret_cast<const unsigned char*>(p_);
  const unsigned char* e = reinterpret_cast<const unsigned char*>(end_);
  unsigned char c = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return fail("invalid UTF-8 in a string", p_);
  }
  for (size_t i = 1; i <= need; ++i) {
    if (s + i >= e) return fail("unexpected end of input in a UTF-8 sequence", end_);
    unsigned char b = s[i];
    unsigned char b_lo = i == 1 ? lo : static_cast<unsigned char>(0x80);
    unsigned char b_hi = i == 1 ? hi : static_cast<unsigned char>(0xBF);
    if (b < b_lo || b > b_hi) return fail("invalid UTF-8 in a string", p_ + i);
  }
  p_ += need + 1;
  return true;
}

bool JsonParser::parse_string(std::string* out) {
  ++p_;  // the opening quote
  const char* start = p_;
  // Fast path: no escapes, so the value is the raw bytes (validated in place).
  while (p_ < end_) {
    unsigned char c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      if (out != nullptr) out->assign(start, static_cast<size_t>(p_ - start));
      ++p_;
      return true;
    }
    if (c == '\\') return parse_escaped(out != nullptr ? *out : scratch_, start);
    if (c < 0x20) return fail("unescaped control character in a string", p_);
    if (c < 0x80) {
      ++p_;
    } else if (!skip_utf8_sequence()) {
      return false;
    }
  }
  return fail("unexpected end of input in a string", end_);
}

// The slow path, from the first backslash on; [start, p_) is already validated.
bool JsonParser::parse_escaped(std::string& out, const char* start) {
  out.clear();
  out.reserve(static_cast<size_t>(p_ - start) + 16);
  out.append(start, static_cast<size_t>(p_ - start));
  while (p_ < end_) {
    unsigned char c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      ++p_;
      return true;
    }
    if (c < 0x20) return fail("unescaped control character in a string", p_);
    if (c >= 0x80) {
      const char* run = p_;
      if (!skip_utf8_sequence()) return false;
      out.append(run, static_cast<size_t>(p_ - run));
      continue;
    }
    if (c != '\\') {
      // Copy the run of plain ASCII up to the next special byte at once.
      const char* run = p_;
      while (p_ < end_) {
        unsigned char d = static_cast<unsigned char>(*p_);
        if (d == '"' || d == '\\' || d < 0x20 || d >= 0x80) break;
        ++p_;
      }
      out.append(run, static_cast<size_t>(p_ - run));
      continue;
    }
    const char* escape = p_;
    if (++p_ == end_) return fail("unexpected end of input in an escape", end_);
    char e = *p_++;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        unsigned cp;
        if (!parse_hex4(p_, cp)) return false;
        p_ += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate in a \\u escape", escape);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (end_ - p_ < 2) {
            if (p_ == end_ || (*p_ == '\\' && p_ + 1 == end_))
              return fail("unexpected end of input after a high surrogate", end_);
            return fail("lone high surrogate in a \\u escape", escape);
          }
          if (p_[0] != '\\' || p_[1] != 'u') return fail("lone high surrogate in a \\u escape", escape);
          unsigned low;
          if (!parse_hex4(p_ + 2, low)) return false;
          if (low < 0xDC00 || low > 0xDFFF) return fail("high surrogate not followed by a low surrogate", p_);
          p_ += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        if (cp < 0x80) {
          out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
          out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
          out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
          out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
        break;
      }
      default: return fail("invalid escape in a string", escape);
    }
  }
  return fail("unexpected end of input in a string", end_);
}

bool JsonParser::parse_array(JsonValue* out, int depth) {
  if (depth >= kMaxJsonDepth) return fail("JSON nested too deeply", p_);
  ++p_;  // '['
  if (out != nullptr) out->type = JsonValue::Type::Array;
  if (keep_ != nullptr) out = nullptr;  // elements are checked, not built
  skip_whitespace();
  if (p_ < end_ && *p_ == ']') {
    ++p_;
    return true;
  }
  for (;;) {
    JsonValue* item = nullptr;
    if (out != nullptr) {
      out->items.emplace_back();
      item = &out->items.back();
    }
    if (!parse_value(item, depth + 1)) return false;
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an array", p_);
    if (*p_ == ']') {
      ++p_;
      return true;
    }
    if (*p_ != ',') return fail("expected ',' or ']' in an array", p_);
    ++p_;
    skip_whitespace();
  }
}

bool JsonParser::parse_object(JsonValue* out, int depth) {
  if (depth >= kMaxJsonDepth) return fail("JSON nested too deeply", p_);
  ++p_;  // '{'
  if (out != nullptr) out->type = JsonValue::Type::Object;
  skip_whitespace();
  if (p_ < end_ && *p_ == '}') {
    ++p_;
    return true;
  }
  for (;;) {
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ != '"') return fail("expected a string key in an object", p_);
    JsonValue* value = nullptr;
    if (out == nullptr) {
      if (!parse_string(nullptr)) return false;
    } else if (keep_ == nullptr) {
      out->members.emplace_back();
      auto& member = out->members.back();
      if (!parse_string(&member.first)) return false;
      value = &member.second;
    } else {
      // Only the first member of a kept name is built (find() returns the first anyway),
      // so repeating a wanted name costs nothing either.
      if (!parse_string(&scratch_)) return false;
      if (keep_(depth, scratch_) && out->find(scratch_) == nullptr) {
        out->members.emplace_back(scratch_, JsonValue());
        value = &out->members.back().second;
      }
    }
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ != ':') return fail("expected ':' after an object key", p_);
    ++p_;
    skip_whitespace();
    if (!parse_value(value, depth + 1)) return false;
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ == '}') {
      ++p_;
      return true;
    }
    if (*p_ != ',') return fail("expected ',' or '}' in an object", p_);
    ++p_;
    skip_whitespace();
  }
}

// Parses one whole document (whitespace around it allowed, nothing else), checking the
// grammar in full. A body from the network passes the `keep` filter of the members its
// caller reads: only those are built (under the root, and under a kept object), the first
// of each name, and arrays stay empty, so memory beyond the input is the kept text and at
// most the longest string, whatever the body's shape. A null `keep` builds the whole tree.
JsonStatus parse_json(std::string_view text, JsonKeep keep, JsonValue& out) {
  return JsonParser(text, keep).parse_document(out);
}

// `value` as compact JSON text: strings escaped as RFC 8259 requires (UTF-8 passes through,
// the parser validated it), numbers exactly as written. Depth is bounded by the parser's.
MI_DETAIL_COLD void write_json(const JsonValue& value, std::string& out) {
  auto write_string = [&out](std::string_view text) {
    static const char hex[] = "0123456789abcdef";
    out.push_back('"');
    for (char ch : text) {
      unsigned char c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        out.push_back('\\');
        out.push_back(ch);
      } else if (c < 0x20 || c == 0x7f) {
        out += "\\u00";
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 15]);
      } else {
        out.push_back(ch);
      }
    }
    out.push_back('"');
  };
  switch (value.type) {
    case JsonValue::Type::Null: out += "null"; return;
    case JsonValue::Type::Bool: out += value.boolean ? "true" : "false"; return;
    case JsonValue::Type::Number: out += value.text; return;
    case JsonValue::Type::String: write_string(value.text); return;
    case JsonValue::Type::Array:
      out.push_back('[');
      for (size_t i = 0; i < value.items.size(); ++i) {
        if (i > 0) out.push_back(',');
        write_json(value.items[i], out);
      }
      out.push_back(']');
      return;
    case JsonValue::Type::Object:
      out.push_back('{');
      for (size_t i = 0; i < value.members.size(); ++i) {
        if (i > 0) out.push_back(',');
        write_string(value.members[i].first);
        out.push_back(':');
        write_json(value.members[i].second, out);
      }
      out.push_back('}');
      return;
  }
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/url.hpp ----
// URL parsing (absolute http:// and https:// only) and query merging.
// Strict on purpose: the URLs come from the environment and go on the wire, so
// anything that could split a request or smuggle credentials is refused.

namespace mi {
inline namespace v1 {
namespace detail {

struct Url {
  std::string scheme;  // "http" or "https", lowercased
  std::string host;    // lowercased reg-name, IPv4, or IPv6 without brackets
  uint16_t port = 0;   // explicit or the scheme default (80/443)
  std::string path;    // starts with '/', "/" when empty
  std::string query;   // raw, without '?', "" when none

  // path + ("?" + query if non-empty): the request-target of an HTTP request.
  std::string target() const;
  // host (bracketed if IPv6) + (":port" unless the scheme's default): the Host header.
  std::string host_header() const;
  // host (bracketed if IPv6) + ":port", always with the port: for messages.
  std::string authority() const;
  // scheme://host_header()target(): the URL again, normalised, without a fragment.
  std::string str() const;
};

std::string Url::target() const { return query.empty() ? path : cat({path, "?", query}); }

std::string Url::authority() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : "", ":", num(port)});
}

std::string Url::host_header() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  const bool default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
  if (default_port) return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : ""});
  return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : "", ":", num(port)});
}

std::string Url::str() const { return cat({scheme, "://", host_header(), target()}); }

namespace {  // internal linkage: nothing below is visible outside this translation unit

namespace url_impl {

inline bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// Dotted-quad IPv4 (inside an IPv6 literal): four decimal parts 0-255, no leading zeros.
bool valid_ipv4(std::string_view s) {
  int parts = 0;
  size_t i = 0;
  while (parts < 4) {
    size_t start = i;
    unsigned value = 0;
    while (i < s.size() && is_digit(s[i]) && i - start < 4) value = value * 10 + static_cast<unsigned>(s[i++] - '0');
    size_t len = i - start;
    if (len == 0 || len > 3 || value > 255 || (len > 1 && s[start] == '0')) return false;
    ++parts;
    if (parts < 4) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

// RFC 4291 text form: eight groups of 1-4 hex digits, one "::" at most, an optional
// dotted-quad tail. Zone identifiers are not accepted.
bool valid_ipv6(std::string_view s) {
  if (s.empty()) return false;
  int groups = 0;
  bool compressed = false;
  size_t i = 0;
  if (s.size() >= 2 && s[0] == ':' && s[1] == ':') {
    compressed = true;
    i = 2;
  } else if (s[0] == ':') {
    return false;
  }
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && hex_value(s[i]) >= 0 && i - start < 5) ++i;
    if (i < s.size() && s[i] == '.') {  // the IPv4 tail ends the address
      if (!valid_ipv4(s.substr(start))) return false;
      groups += 2;
      break;
    }
    size_t len = i - start;
    if (len == 0 || len > 4) return false;
    ++groups;
    if (i == s.size()) break;
    if (s[i] != ':') return false;
    ++i;
    if (i < s.size() && s[i] == ':') {
      if (compressed) return false;
      compressed = true;
      ++i;
    } else if (i == s.size()) {
      return false;  // a single trailing ':'
    }
  }
  return compressed ? groups <= 7 : groups == 8;
}

// Characters allowed in a host name: letters, digits, '-', '.', '_', '~'.
inline bool host_char(char c) noexcept { return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~'; }

Result<Url> bad_url(std::string_view why) { return failure<Url>(Errc::invalid_argument, {why}); }

// The authority split into its host (IPv6 without brackets) and the text after ':'.
struct HostPort {
  std::string_view host;
  std::string_view port;  // empty when absent or "host:" (both mean the default)
};

// "host[:port]" or "[IPv6][:port]"; the host is checked, the port only split off.
Result<HostPort> split_authority(std::string_view authority) {
  HostPort out;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return failure<HostPort>(Errc::invalid_argument, {"bad IPv6 literal (missing ']')"});
    out.host = authority.substr(1, close - 1);
    if (!valid_ipv6(out.host)) return failure<HostPort>(Errc::invalid_argument, {"bad IPv6 literal"});
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':')
      return failure<HostPort>(Errc::invalid_argument, {"unexpected characters after the IPv6 literal"});
    if (!after.empty()) out.port = after.substr(1);
  } else {
    size_t colon = authority.find(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string_view::npos) out.port = authority.substr(colon + 1);
    for (char c : out.host)
      if (!host_char(c))
        return failure<HostPort>(Errc::invalid_argument, {"the host name contains a character that is not allowed"});
  }
  if (out.host.empty()) return failure<HostPort>(Errc::invalid_argument, {"the URL has no host"});
  return out;
}

// Decimal 1-65535; empty text is the scheme's default (RFC 3986 allows "host:").
Result<uint16_t> parse_port(std::string_view text, uint16_t default_port) {
  if (text.empty()) return default_port;
  if (text.size() > 5) return failure<uint16_t>(Errc::invalid_argument, {"the port is out of range (1-65535)"});
  unsigned value = 0;
  for (char c : text) {
    if (!is_digit(c)) return failure<uint16_t>(Errc::invalid_argument, {"the port is not a number"});
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value == 0 || value > 65535)
    return failure<uint16_t>(Errc::invalid_argument, {"the port is out of range (1-65535)"});
  return static_cast<uint16_t>(value);
}

}  // namespace url_impl

// Parses and validates an absolute http:// or https:// URL. The error (invalid_argument)
// says what is wrong in words and never quotes the URL, which may carry a secret.
Result<Url> parse_url(std::string_view text) {
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f)
      return url_impl::bad_url("the URL contains a control character, a space or a non-ASCII byte");
  }
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return url_impl::bad_url("not an absolute http:// or https:// URL");
  Url url;
  url.scheme = ascii_lowercase(text.substr(0, sep));
  if (url.scheme != "http" && url.scheme != "https") return url_impl::bad_url("the scheme must be http or https");
  std::string_view rest = text.substr(sep + 3);
  rest = rest.substr(0, rest.find('#'));  // a fragment is never sent

  size_t authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  if (authority.find('@') != std::string_view::npos)
    return url_impl::bad_url("the URL must not contain user information (user@host)");
  Result<url_impl::HostPort> host_port = url_impl::split_authority(authority);
  if (!host_port) return host_port.error();
  const uint16_t default_port = url.scheme == "https" ? uint16_t{443} : uint16_t{80};
  Result<uint16_t> port = url_impl::parse_port(host_port->port, default_port);
  if (!port) return port.error();
  url.host = ascii_lowercase(host_port->host);
  url.port = *port;

  std::string_view path_and_query =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  size_t qmark = path_and_query.find('?');
  std::string_view path = path_and_query.substr(0, qmark);
  url.path = path.empty() ? std::string("/") : std::string(path);
  if (qmark != std::string_view::npos) url.query = std::string(path_and_query.substr(qmark + 1));
  return url;
}

// Appends a pair and moves it back past the names that sort after it: the list stays sorted by
// name and stable (a repeated name keeps its order: the endpoint's first, then ours). A query
// has a handful of pairs; std::stable_sort would add 12 KB of instantiations for them
// (bench/build_cost.sh).
void add_pair_sorted(StringPairs& pairs, std::string_view name, std::string_view value) {
  add_pair(pairs, name, value);
  for (size_t i = pairs.size() - 1; i > 0 && pairs[i].first < pairs[i - 1].first; --i) pairs[i].swap(pairs[i - 1]);
}

std::string merge_query(std::string_view existing_raw,
                        const std::vector<std::pair<std::string, std::string>>& params) {
  StringPairs pairs;
  size_t pos = 0;
  while (pos <= existing_raw.size()) {
    size_t amp = existing_raw.find('&', pos);
    std::string_view part =
        existing_raw.substr(pos, amp == std::string_view::npos ? std::string_view::npos : amp - pos);
    if (!part.empty()) {
      size_t eq = part.find('=');
      std::string name = percent_decode(part.substr(0, eq), true);
      std::string value = eq == std::string_view::npos ? std::string() : percent_decode(part.substr(eq + 1), true);
      bool replaced = false;
      for (const auto& p : params)
        if (p.first == name) replaced = true;
      if (!replaced) add_pair_sorted(pairs, name, value);
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  for (const auto& p : params) add_pair_sorted(pairs, p.first, p.second);
  std::string out;
  for (const auto& p : pairs) {
    if (!out.empty()) out.push_back('&');
    out += percent_encode(p.first);
    out.push_back('=');
    out += percent_encode(p.second);
  }
  return out;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/http.hpp ----
// HTTP/1.1 on the wire: request serialisation and an incremental response parser
// with bounded memory. Strict about framing (RFC 9112): anything ambiguous is
// refused rather than guessed at. Messages never quote header values or body bytes.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

namespace http_impl {

// RFC 9110 tchar.
inline bool is_tchar(char c) noexcept {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

// A name for a message: control and non-ASCII bytes escaped, at most 64 characters.
MI_DETAIL_COLD std::string printable_name(std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (out.size() >= 64) {
      out += "...";
      break;
    }
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// True if a field value holds a control character other than HTAB (CR, LF, NUL, DEL...).
inline bool bad_field_char(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return true;
  }
  return false;
}

inline std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Appends without letting the string's capacity grow past `cap` (the caller has
// checked that size() + n <= cap), so memory stays within the limit. Growth is
// geometric, but done by hand: std::string::reserve may itself double a capacity
// (libstdc++ does), while a fresh string reserves what it is asked for.
void append_bounded(std::string& s, const char* data, size_t n, size_t cap) {
  size_t need = s.size() + n;
  if (need > s.capacity()) {
    size_t grow = s.capacity() * 2;
    if (grow < need) grow = need;
    if (grow > cap) grow = cap < need ? need : cap;
    std::string bigger;
    bigger.reserve(grow);
    bigger.append(s);
    s.swap(bigger);
  }
  s.append(data, n);
}

}  // namespace http_impl

// A request ready for the socket: where to connect, and the bytes to send.
struct WireRequest {
  Url url;
  std::string bytes;
};

namespace http_impl {

// Every header name a token, no value with a control character. The error never
// quotes a value: it may be a secret.
Result<bool> check_headers(const StringPairs& headers) {
  for (const auto& header : headers) {
    if (!is_token(header.first))
      return failure<bool>(Errc::invalid_argument,
                           {"the request cannot be sent: the header name \"", printable_name(header.first),
                            "\" is not a valid HTTP token (empty, or a control character, space or separator)"});
    if (has_control_char(header.second))
      return failure<bool>(Errc::invalid_argument,
                           {"the request cannot be sent: the value of the header \"", header.first,
                            "\" contains a control character (such as CR or LF)"});
  }
  return true;
}

}  // namespace http_impl

// Parses request.url and writes the request line, the headers, Content-Length and
// "Connection: close". This is the built-in transport's one parse of the URL: parse_url
// refuses any control character, space or non-ASCII byte, so the request-target and the
// Host header built from it cannot split the request, and the Url is only ever made here.
Result<WireRequest> serialize_request(const HttpRequest& request) {
  Result<Url> url = parse_url(request.url);
  if (!url)
    return failure<WireRequest>(Errc::invalid_argument, {"the endpoint URL is invalid: ", url.error().message()});
  if (!http_impl::is_token(request.method))
    return failure<WireRequest>(Errc::invalid_argument,
                                {"the request cannot be sent: the HTTP method is empty or not a valid token"});
  Result<bool> headers = http_impl::check_headers(request.headers);
  if (!headers) return headers.error();
  WireRequest out;
  std::string& text = out.bytes;
  text.reserve(256 + request.body.size());
  text += request.method;
  text += ' ';
  text += url->target();
  text += " HTTP/1.1\r\nHost: ";
  text += url->host_header();
  text += "\r\n";
  for (const auto& header : request.headers) {
    // The transport owns the framing headers; the request's own copies are dropped.
    if (iequals(header.first, "Host") || iequals(header.first, "Content-Length") ||
        iequals(header.first, "Transfer-Encoding") || iequals(header.first, "Connection"))
      continue;
    text += header.first;
    text += ": ";
    text += header.second;
    text += "\r\n";
  }
  if (!request.body.empty() || request.method == "POST" || request.method == "PUT" || request.method == "PATCH") {
    text += "Content-Length: ";
    text += num(static_cast<long long>(request.body.size()));
    text += "\r\n";
  }
  text += "Connection: close\r\n\r\n";
  text += request.body;
  out.url = std::move(*url);
  return out;
}

// Incremental HTTP/1.x response parser. Feed it what the socket delivers; it
// holds at most one pending line (bounded by max_header_bytes) and the body
// (bounded by max_body_bytes), whatever the peer sends.
class ResponseParser {
 public:
  // A small status, not Result<T>: the parser runs once per chunk of bytes, most calls
  // end in need_more (neither a value nor an error), and it has no Source or endpoint to
  // put in an Error; its caller turns error() into the request's Error once.
  enum class Status { need_more, done, error };

  explicit ResponseParser(size_t max_header_bytes = static_cast<size_t>(MI_MAX_HEADER_BYTES),
                          size_t max_body_bytes = static_cast<size_t>(MI_MAX_RESPONSE_BYTES))
      : max_header_(max_header_bytes), max_body_(max_body_bytes) {}

  // Consumes bytes; done once one final (non-1xx) response is complete. Bytes after
  // it are ignored.
  Status feed(const char* data, size_t size);
  // The peer closed the connection: completes a close-delimited body, else an error.
  Status finish();
  HttpResponse& response() noexcept { return response_; }  // valid after done
  const Error& error() const noexcept { return error_; }   // valid after error

 private:
  enum class State { status_line, header_line, length_body, close_body, chunk_size, chunk_data, chunk_data_end, trailer_line, done, failed };

  MI_DETAIL_COLD Status fail(Errc code, std::string message);
  MI_DETAIL_COLD Status invalid(std::string_view reason) { return invalid({reason}); }
  MI_DETAIL_COLD Status invalid(std::initializer_list<std::string_view> reason);
  MI_DETAIL_COLD Status body_too_large();
  Status on_line(std::string_view line);
  Status on_status_line(std::string_view line);
  Status on_header_line(std::string_view line);
  // What frames the body, as the head declares it.
  struct Framing {
    bool has_te = false, has_cl = false;
    int codings = 0;       // Transfer-Encoding codings, in all its fields
    bool chunked = false;  // the last coding is chunked
    std::string length;    // normalised digits of Content-Length
  };
  Status on_head_end();
  Status read_framing(Framing& framing);
  Status on_chunk_size(std::string_view line);
  Status on_trailer_line(std::string_view line);

  size_t max_header_;
  size_t max_body_;
  State state_ = State::status_line;
  std::string line_;        // the pending line, terminator included
  size_t head_bytes_ = 0;   // status lines, header and trailer lines consumed so far
  uint64_t remaining_ = 0;  // bytes left of a Content-Length body or of a chunk
  bool http10_ = false;
  HttpResponse response_;
  Error error_{Errc::invalid_response, std::string()};
};

ResponseParser::Status ResponseParser::fail(Errc code, std::string message) {
  state_ = State::failed;
  error_ = make_error(code, std::move(message));
  line_.clear();
  line_.shrink_to_fit();
  return Status::error;
}

ResponseParser::Status ResponseParser::invalid(std::initializer_list<std::string_view> reason) {
  std::string message = "invalid HTTP response: ";
  for (std::string_view part : reason) message.append(part.data(), part.size());
  return fail(Errc::invalid_response, std::move(message));
}

ResponseParser::Status ResponseParser::body_too_large() {
  return invalid({"the body is larger than the limit of ", num(static_cast<long long>(max_body_)),
                  " bytes (MI_MAX_RESPONSE_BYTES)"});
}

ResponseParser::Status ResponseParser::feed(const char* data, size_t size) {
  size_t pos = 0;
  for (;;) {
    if (state_ == State::done) return Status::done;
    if (state_ == State::failed) return Status::error;
    if (pos >= size) return Status::need_more;
    const char* p = data + pos;
    size_t n = size - pos;
    switch (state_) {
      case State::length_body:
      case State::chunk_data: {
        size_t take = remaining_ < n ? static_cast<size_t>(remaining_) : n;
        http_impl::append_bounded(response_.body, p, take, max_body_);
        remaining_ -= take;
        pos += take;
        if (remaining_ == 0) state_ = state_ == State::length_body ? State::done : State::chunk_data_end;
        break;
      }
      case State::close_body: {
        if (n > max_body_ - response_.body.size()) return body_too_large();
        http_impl::append_bounded(response_.body, p, n, max_body_);
        pos += n;
        break;
      }
      case State::status_line:  // a line: status line, header, chunk size, chunk end or trailer
      case State::header_line:
      case State::chunk_size:
      case State::chunk_data_end:
      case State::trailer_line:
      case State::done:  // not reached: the loop stops at done and failed
      case State::failed: {
        const void* nl = std::memchr(p, '\n', n);
        size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - p) + 1 : n;
        if (state_ == State::status_line) {
          // Fail fast on anything that is not HTTP/1.x (HTTP/0.9 bodies, garbage).
          static const char prefix[] = "HTTP/1.";
          for (size_t i = line_.size(), j = 0; i < 7 && j < take; ++i, ++j)
            if (p[j] != prefix[i]) return invalid("the endpoint did not answer with an HTTP/1.x status line");
        }
        bool head = state_ == State::status_line || state_ == State::header_line || state_ == State::trailer_line;
        size_t limit = head ? max_header_ - head_bytes_ : state_ == State::chunk_data_end ? 2 : max_header_;
        if (take > limit - line_.size()) {
          if (head)
            return invalid({"the response head is larger than the limit of ", num(static_cast<long long>(max_header_)),
                            " bytes (MI_MAX_HEADER_BYTES)"});
          if (state_ == State::chunk_data_end) return invalid("a chunk is longer than its declared size");
          return invalid("a chunk-size line is too long");
        }
        http_impl::append_bounded(line_, p, take, limit);
        pos += take;
        if (nl) {
          if (head) head_bytes_ += line_.size();
          std::string_view line(line_);
          line.remove_suffix(1);
          if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
          Status s = on_line(line);
          if (s == Status::error) return s;
          line_.clear();
        }
        break;
      }
    }
  }
}

ResponseParser::Status ResponseParser::finish() {
  switch (state_) {
    case State::done: return Status::done;
    case State::failed: return Status::error;
    case State::close_body: state_ = State::done; return Status::done;
    case State::status_line:
    case State::header_line:
    case State::length_body:
    case State::chunk_size:
    case State::chunk_data:
    case State::chunk_data_end:
    case State::trailer_line: break;
  }
  return fail(Errc::network, "the endpoint closed the connection before the response was complete");
}

ResponseParser::Status ResponseParser::on_line(std::string_view line) {
  switch (state_) {
    case State::status_line: return on_status_line(line);
    case State::header_line: return on_header_line(line);
    case State::chunk_size: return on_chunk_size(line);
    case State::chunk_data_end:
      if (!line.empty()) return invalid("a chunk is longer than its declared size");
      state_ = State::chunk_size;
      return Status::need_more;
    case State::trailer_line: return on_trailer_line(line);
    case State::length_body:  // not reached: bodies are not read as lines
    case State::close_body:
    case State::chunk_data:
    case State::done:
    case State::failed: break;
  }
  return invalid("internal parser state");
}

ResponseParser::Status ResponseParser::on_status_line(std::string_view line) {
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (line.size() < 12 || (line[7] != '0' && line[7] != '1') || line[8] != ' ' || (line.size() > 12 && line[12] != ' '))
    return invalid("malformed status line");
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return invalid("malformed status code");
    status = status * 10 + (line[i] - '0');
  }
  if (status < 100 || status > 599) return invalid("status code out of range");
  if (http_impl::bad_field_char(line.substr(12))) return invalid("control character in the status line");
  response_.status = status;
  http10_ = line[7] == '0';
  state_ = State::header_line;
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_header_line(std::string_view line) {
  if (line.empty()) return on_head_end();
  if (line[0] == ' ' || line[0] == '\t') return invalid("obsolete header line folding (obs-fold)");
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return invalid("a header line has no colon");
  std::string_view name = line.substr(0, colon);
  if (!http_impl::is_token(name)) return invalid("a header name is not a valid token");
  std::string_view value = http_impl::trim_ows(line.substr(colon + 1));
  if (http_impl::bad_field_char(value))
    return invalid({"the header \"", http_impl::printable_name(name), "\" contains a control character"});
  add_pair(response_.headers, name, value);
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_head_end() {
  int status = response_.status;
  if (status < 200) {
    if (status == 101) return invalid("unexpected 101 Switching Protocols");
    response_.headers.clear();  // an interim response (100 Continue, 103 Early Hints...): skip it
    response_.status = 0;
    state_ = State::status_line;
    return Status::need_more;
  }
  if (status == 204 || status == 304) {  // never a body
    state_ = State::done;
    return Status::done;
  }
  Framing framing;
  if (read_framing(framing) == Status::error) return Status::error;
  if (framing.has_te && framing.has_cl) return invalid("both Transfer-Encoding and Content-Length are present");
  if (framing.has_te) {
    if (http10_) return invalid("Transfer-Encoding in an HTTP/1.0 response");
    if (framing.codings != 1 || !framing.chunked)
      return invalid("unsupported Transfer-Encoding (only chunked is understood)");
    state_ = State::chunk_size;
    return Status::need_more;
  }
  if (framing.has_cl) {
    int64_t value = 0;
    if (!parse_int64(framing.length, value) || static_cast<uint64_t>(value) > max_body_) return body_too_large();
    if (value == 0) {
      state_ = State::done;
      return Status::done;
    }
    remaining_ = static_cast<uint64_t>(value);
    response_.body.reserve(static_cast<size_t>(value));
    state_ = State::length_body;
    return Status::need_more;
  }
  state_ = State::close_body;  // no framing: the body ends when the peer closes
  return Status::need_more;
}

// Collects the Transfer-Encoding codings and the Content-Length value (equal values in a
// list or repeated are one); need_more, or error for a malformed or conflicting length.
ResponseParser::Status ResponseParser::read_framing(Framing& framing) {
  for (const auto& header : response_.headers) {
    bool te = iequals(header.first, "Transfer-Encoding");
    bool cl = !te && iequals(header.first, "Content-Length");
    if (!te && !cl) continue;
    std::string_view rest = header.second;
    bool any = false;
    for (;;) {
      size_t comma = rest.find(',');
      std::string_view item = http_impl::trim_ows(rest.substr(0, comma));
      if (!item.empty()) {
        any = true;
        if (te) {
          ++framing.codings;
          framing.chunked = iequals(item, "chunked");
        } else {
          for (char c : item)
            if (c < '0' || c > '9') return invalid("Content-Length is not a non-negative decimal number");
          while (item.size() > 1 && item[0] == '0') item.remove_prefix(1);
          if (framing.has_cl && item != framing.length) return invalid("conflicting Content-Length values");
          framing.length.assign(item.data(), item.size());
          framing.has_cl = true;
        }
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    if (te) framing.has_te = true;
    if (cl && !any) return invalid("empty Content-Length");
  }
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_chunk_size(std::string_view line) {
  uint64_t size = 0;
  size_t i = 0;
  for (; i < line.size(); ++i) {
    int digit = hex_value(line[i]);
    if (digit < 0) break;
    if (size > (std::numeric_limits<uint64_t>::max() >> 4)) return invalid("the chunk size overflows");
    size = size * 16 + static_cast<uint64_t>(digit);
  }
  if (i == 0) return invalid("malformed chunk size");
  std::string_view ext = http_impl::trim_ows(line.substr(i));  // chunk extensions are ignored
  if (!ext.empty() && ext[0] != ';') return invalid("malformed chunk size");
  if (http_impl::bad_field_char(ext)) return invalid("control character in a chunk extension");
  if (size == 0) {
    state_ = State::trailer_line;
    return Status::need_more;
  }
  if (size > max_body_ - response_.body.size()) return body_too_large();
  remaining_ = size;
  state_ = State::chunk_data;
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_trailer_line(std::string_view line) {
  if (line.empty()) {
    state_ = State::done;
    return Status::done;
  }
  // Trailers are read and dropped, but must still be well-formed.
  if (line[0] == ' ' || line[0] == '\t') return invalid("obsolete line folding in the trailer");
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || !http_impl::is_token(line.substr(0, colon)))
    return invalid("malformed trailer field");
  if (http_impl::bad_field_char(line.substr(colon + 1))) return invalid("control character in a trailer field");
  return Status::need_more;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/context.hpp ----
// mi::Context: a chain of states, each with its own cancel flag and the
// effective (earliest) deadline of the chain. Checking is lock-free; blocking
// operations wait in short slices so a Cancel() from another thread is seen
// within one slice (kContextSlice).

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr Millis kContextSlice{10};

}  // namespace

struct ContextState {
  std::shared_ptr<ContextState> parent;
  SteadyClock::time_point deadline = SteadyClock::time_point::max();
  std::atomic<bool> canceled{false};

  bool is_canceled() const noexcept {
    for (const ContextState* s = this; s != nullptr; s = s->parent.get())
      if (s->canceled.load(std::memory_order_acquire)) return true;
    return false;
  }

  static Context child(const Context& parent, SteadyClock::time_point deadline) {
    auto state = std::make_shared<ContextState>();
    state->parent = parent.state_;
    SteadyClock::time_point inherited = parent.deadline();
    state->deadline = deadline < inherited ? deadline : inherited;
    return Context(std::move(state));
  }
  static const ContextState* of(const Context& ctx) noexcept { return ctx.state_.get(); }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// Why a context stopped, or ok.
enum class ContextStatus { ok, canceled, expired };

inline ContextStatus context_status(const Context& ctx) noexcept {
  if (ctx.canceled()) return ContextStatus::canceled;
  if (ctx.expired()) return ContextStatus::expired;
  return ContextStatus::ok;
}

// The error for a context that stopped; `doing` (the parts joined) says what was interrupted.
MI_DETAIL_COLD Error context_error(ContextStatus status, std::initializer_list<std::string_view> doing) {
  std::string message = status == ContextStatus::canceled ? "the request was canceled (mi::Context::Cancel) while "
                                                          : "the context's deadline passed while ";
  for (std::string_view part : doing) message.append(part.data(), part.size());
  if (status == ContextStatus::canceled) return make_error(Errc::canceled, std::move(message));
  message += "; give the call more time (mi::Context::WithTimeout) or check that the endpoint is reachable";
  return make_error(Errc::timeout, std::move(message));
}
MI_DETAIL_COLD inline Error context_error(ContextStatus status, std::string_view doing) {
  return context_error(status, {doing});
}
// context_error as a Result<T>.
template <class T>
MI_DETAIL_COLD Result<T> stopped(ContextStatus status, std::initializer_list<std::string_view> doing) {
  return Result<T>(context_error(status, doing));
}

// Milliseconds left before the context's deadline (capped at `cap`), at least 0.
inline Millis time_left(const Context& ctx, Millis cap) noexcept {
  SteadyClock::time_point deadline = ctx.deadline();
  if (deadline == SteadyClock::time_point::max()) return cap;
  SteadyClock::time_point now = SteadyClock::now();
  if (deadline <= now) return Millis(0);
  auto left = std::chrono::duration_cast<Millis>(deadline - now) + Millis(1);
  return left < cap ? left : cap;
}

// Sleeps for `duration` unless the context stops first; returns its status.
ContextStatus sleep_for(const Context& ctx, Millis duration) {
  SteadyClock::time_point end = SteadyClock::now() + duration;
  for (;;) {
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return status;
    SteadyClock::time_point now = SteadyClock::now();
    if (now >= end) return ContextStatus::ok;
    auto slice = std::chrono::duration_cast<Millis>(end - now) + Millis(1);
    std::this_thread::sleep_for(std::min(slice, time_left(ctx, kContextSlice)));
  }
}

}  // namespace
}  // namespace detail

Context Context::WithTimeout(std::chrono::milliseconds timeout) const {
  detail::SteadyClock::time_point now = detail::SteadyClock::now();
  // Saturate instead of overflowing on huge timeouts.
  if (timeout >= std::chrono::duration_cast<detail::Millis>(detail::SteadyClock::time_point::max() - now))
    return detail::ContextState::child(*this, detail::SteadyClock::time_point::max());
  return detail::ContextState::child(*this, now + timeout);
}

Context Context::WithDeadline(std::chrono::steady_clock::time_point deadline) const {
  return detail::ContextState::child(*this, deadline);
}

Context Context::WithCancel() const { return detail::ContextState::child(*this, detail::SteadyClock::time_point::max()); }

void Context::Cancel() const {
  if (state_) state_->canceled.store(true, std::memory_order_release);
}

std::chrono::steady_clock::time_point Context::deadline() const noexcept {
  return state_ ? state_->deadline : detail::SteadyClock::time_point::max();
}

bool Context::canceled() const noexcept { return state_ && state_->is_canceled(); }

bool Context::expired() const noexcept {
  return state_ && state_->deadline != detail::SteadyClock::time_point::max() && detail::SteadyClock::now() >= state_->deadline;
}

}  // namespace v1
}  // namespace mi

// ---- src/socket.hpp ----
// The transport for http:// endpoints: one TCP connection per request over POSIX
// or WinSock sockets. No proxy (metadata endpoints are link-local or loopback),
// no redirects, no pooling. Connecting, sending and receiving wait in slices of
// kContextSlice so a Cancel() from another thread or the context's deadline stops
// them promptly. Numeric hosts (the usual metadata endpoints) skip DNS; a host
// name is resolved on a helper thread, so that its wait is bounded the same way.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

#if MI_DETAIL_WINDOWS
using socket_handle = SOCKET;
#else
using socket_handle = int;
#endif

// How the transport turns a host name into addresses: getaddrinfo's contract, and the
// list it returns is freed with freeaddrinfo. A parameter of SocketTransport rather than a
// direct call, so that tests can pass a resolver that blocks until they release it.
using Resolver = int (*)(const char* host, const char* port, const addrinfo* hints, addrinfo** out);

inline int system_resolver(const char* host, const char* port, const addrinfo* hints, addrinfo** out) {
  return ::getaddrinfo(host, port, hints, out);
}

namespace sock_impl {

#if MI_DETAIL_WINDOWS
const socket_handle kNoSocket = INVALID_SOCKET;
#else
constexpr socket_handle kNoSocket = -1;
#if defined(MSG_NOSIGNAL)
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;  // SO_NOSIGPIPE is set on the socket instead (Apple)
#endif
#endif

inline int last_error() noexcept {
#if MI_DETAIL_WINDOWS
  return WSAGetLastError();
#else
  return errno;
#endif
}

inline bool is_interrupted(int err) noexcept {
#if MI_DETAIL_WINDOWS
  return err == WSAEINTR;
#else
  return err == EINTR;
#endif
}

inline bool would_block(int err) noexcept {
#if MI_DETAIL_WINDOWS
  return err == WSAEWOULDBLOCK;
#else
  return err == EAGAIN || err == EWOULDBLOCK;
#endif
}

// A short, lowercase reason for an OS socket error (thread-safe, no strerror).
MI_DETAIL_COLD std::string describe_error(int err) {
#if MI_DETAIL_WINDOWS
  switch (err) {
    case WSAECONNREFUSED: return "connection refused";
    case WSAETIMEDOUT: return "timed out";
    case WSAENETUNREACH: return "network unreachable";
    case WSAEHOSTUNREACH: return "host unreachable";
    case WSAENETDOWN: return "network is down";
    case WSAECONNRESET: return "connection reset by peer";
    case WSAECONNABORTED: return "connection aborted";
    case WSAESHUTDOWN: return "connection shut down";
    case WSAEADDRNOTAVAIL: return "address not available";
    case WSAEAFNOSUPPORT: return "address family not supported";
    case WSAEACCES: return "permission denied";
    case WSAEMFILE: return "too many open sockets";
    case WSAENOBUFS: return "no buffer space available";
    case WSAHOST_NOT_FOUND: return "host not found";
    case WSATRY_AGAIN: return "temporary name resolution failure";
    case WSANO_DATA: return "no address for the host name";
    case WSANO_RECOVERY: return "name resolution failed";
    case WSANOTINITIALISED: return "WinSock not initialised";
    case WSASYSNOTREADY: return "network subsystem not ready";
    case WSAVERNOTSUPPORTED: return "WinSock 2.2 not supported";
    default: return cat({"WinSock error ", num(err)});
  }
#else
  switch (err) {
    case ECONNREFUSED: return "connection refused";
    case ETIMEDOUT: return "timed out";
    case ENETUNREACH: return "network unreachable";
    case EHOSTUNREACH: return "host unreachable";
    case ENETDOWN: return "network is down";
    case ECONNRESET: return "connection reset by peer";
    case ECONNABORTED: return "connection aborted";
    case EPIPE: return "connection closed by peer";
    case EADDRNOTAVAIL: return "address not available";
    case EAFNOSUPPORT: return "address family not supported";
    case EACCES: return "permission denied";
    case EPERM: return "operation not permitted";
    case EMFILE: return "too many open files";
    case ENFILE: return "too many open files in the system";
    case ENOBUFS: return "no buffer space available";
    case ENOMEM: return "out of memory";
    default: return cat({"errno ", num(err)});
  }
#endif
}

// WinSock is started on first use, once per process (never by a static object).
inline bool network_ready(int& err) {
#if MI_DETAIL_WINDOWS
  static std::once_flag once;
  static int result = 0;
  std::call_once(once, [] {
    WSADATA data;
    result = WSAStartup(MAKEWORD(2, 2), &data);
  });
  err = result;
  return result == 0;
#else
  err = 0;
  return true;
#endif
}

inline void close_socket(socket_handle s) noexcept {
  if (s == kNoSocket) return;
#if MI_DETAIL_WINDOWS
  ::closesocket(s);
#else
  ::close(s);  // never retried on EINTR: the descriptor is gone either way (Linux)
#endif
}

// Owns a socket; closes it on scope exit.
class SocketGuard {
 public:
  explicit SocketGuard(socket_handle s = kNoSocket) noexcept : s_(s) {}
  SocketGuard(const SocketGuard&) = delete;
  SocketGuard& operator=(const SocketGuard&) = delete;
  ~SocketGuard() { close_socket(s_); }
  socket_handle get() const noexcept { return s_; }
  socket_handle release() noexcept {
    socket_handle s = s_;
    s_ = kNoSocket;
    return s;
  }

 private:
  socket_handle s_;
};

// Owns a getaddrinfo result.
struct AddrInfoDeleter {
  void operator()(addrinfo* list) const noexcept { ::freeaddrinfo(list); }
};
using AddrList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// getaddrinfo cannot be interrupted, so a host name is looked up on a detached
// thread while the caller waits in context slices: Cancel(), the context's deadline
// and the connect timeout bound the wait. A lookup that outlives its caller
// finishes alone; whoever drops the last reference frees the result. At most
// kMaxHostLookups such threads run at once: with a stalled resolver, callers that
// give up would otherwise leave one more thread behind each time.
struct HostLookup {
  std::string host, port;
  addrinfo hints{};
  Resolver resolve = &system_resolver;
  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  int rc = 0;
  int sys_error = 0;  // errno when rc is EAI_SYSTEM
  AddrList list;

  void run() noexcept {
    addrinfo* out = nullptr;
    int code = resolve(host.c_str(), port.c_str(), &hints, &out);
    int sys = errno;
    std::lock_guard<std::mutex> lock(mutex);
    rc = code;
    sys_error = sys;
    list.reset(out);
    done = true;
    finished.notify_all();
  }
};

constexpr int kMaxHostLookups = 4;

struct HostLookupSlots {
  std::mutex mutex;
  std::condition_variable freed;
  int busy = 0;  // lookups running (on a thread or inline)
};

// Never destroyed: a detached lookup may return its slot while the process exits.
inline HostLookupSlots& host_lookup_slots() {
  static HostLookupSlots* slots = new HostLookupSlots();
  return *slots;
}

inline void release_host_lookup_slot() noexcept {
  HostLookupSlots& slots = host_lookup_slots();
  {
    std::lock_guard<std::mutex> lock(slots.mutex);
    --slots.busy;
  }
  slots.freed.notify_all();  // all: a woken waiter may leave (canceled) without taking it
}

#if MI_DETAIL_WINDOWS
inline DWORD WINAPI host_lookup_main(LPVOID arg) {
#else
inline void* host_lookup_main(void* arg) {
#endif
  {
    std::unique_ptr<std::shared_ptr<HostLookup>> lookup(static_cast<std::shared_ptr<HostLookup>*>(arg));
    (*lookup)->run();
  }
  release_host_lookup_slot();
#if MI_DETAIL_WINDOWS
  return 0;
#else
  return nullptr;
#endif
}

// Starts `lookup` on a detached thread; false when no thread could be made.
inline bool start_host_lookup(const std::shared_ptr<HostLookup>& lookup) {
  auto* arg = new (std::nothrow) std::shared_ptr<HostLookup>(lookup);
  if (arg == nullptr) return false;
#if MI_DETAIL_WINDOWS
  HANDLE thread = ::CreateThread(nullptr, 0, &host_lookup_main, arg, 0, nullptr);
  if (thread == nullptr) {
    delete arg;
    return false;
  }
  ::CloseHandle(thread);
  return true;
#else
  pthread_attr_t attr;
  if (::pthread_attr_init(&attr) != 0) {
    delete arg;
    return false;
  }
  ::pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int rc = ::pthread_create(&thread, &attr, &host_lookup_main, arg);
  ::pthread_attr_destroy(&attr);
  if (rc != 0) {
    delete arg;
    return false;
  }
  return true;
#endif
}

// A non-blocking, close-on-exec TCP socket with TCP_NODELAY and no SIGPIPE.
socket_handle open_socket(int family, int type, int protocol, int& err) {
#if MI_DETAIL_WINDOWS
#if defined(WSA_FLAG_NO_HANDLE_INHERIT)
  const DWORD no_inherit = WSA_FLAG_NO_HANDLE_INHERIT;
#else
  const DWORD no_inherit = 0x80;  // older SDKs lack the name
#endif
  SOCKET s = ::WSASocketW(family, type, protocol, nullptr, 0, WSA_FLAG_OVERLAPPED | no_inherit);
  if (s == INVALID_SOCKET && WSAGetLastError() == WSAEINVAL)  // Windows 7 before SP1: no such flag
    s = ::WSASocketW(family, type, protocol, nullptr, 0, WSA_FLAG_OVERLAPPED);
  if (s == INVALID_SOCKET) {
    err = WSAGetLastError();
    return kNoSocket;
  }
  u_long non_blocking = 1;
  if (::ioctlsocket(s, static_cast<long>(FIONBIO), &non_blocking) != 0) {
    err = WSAGetLastError();
    ::closesocket(s);
    return kNoSocket;
  }
#else
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
  int s = ::socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
  if (s < 0) {
    err = errno;
    return kNoSocket;
  }
#else
  int s = ::socket(family, type, protocol);
  if (s < 0) {
    err = errno;
    return kNoSocket;
  }
  int fd_flags = ::fcntl(s, F_GETFD);
  int fl_flags = ::fcntl(s, F_GETFL);
  if (fd_flags < 0 || ::fcntl(s, F_SETFD, fd_flags | FD_CLOEXEC) < 0 || fl_flags < 0 ||
      ::fcntl(s, F_SETFL, fl_flags | O_NONBLOCK) < 0) {
    err = errno;
    ::close(s);
    return kNoSocket;
  }
#endif
#if defined(SO_NOSIGPIPE)
  int no_sigpipe = 1;
  ::setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &no_sigpipe, static_cast<socklen_t>(sizeof no_sigpipe));
#endif
#endif
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), static_cast<socklen_t>(sizeof one));
  err = 0;
  return s;
}

enum class Wait { ready, stopped, deadline, failed };

// Waits until `s` is readable (or writable), polling in slices of at most
// kContextSlice so the context is checked often. `until` bounds the wait too
// (time_point::max() for none). On `stopped`, `status` says why; on `failed`, `err`.
Wait wait_socket(socket_handle s, bool for_write, bool connecting, const Context& ctx, SteadyClock::time_point until,
                 ContextStatus& status, int& err) {
  for (;;) {
    status = context_status(ctx);
    if (status != ContextStatus::ok) return Wait::stopped;
    SteadyClock::time_point now = SteadyClock::now();
    if (until != SteadyClock::time_point::max() && now >= until) return Wait::deadline;
    Millis slice = time_left(ctx, kContextSlice);
    if (until != SteadyClock::time_point::max()) {
      Millis left = std::chrono::duration_cast<Millis>(until - now) + Millis(1);
      if (left < slice) slice = left;
    }
    int ms = static_cast<int>(slice.count());
#if MI_DETAIL_WINDOWS
    int r;
    if (connecting) {
      // WSAPoll does not report a failed connect on older Windows 10 builds; select does.
      (void)for_write;
      fd_set writable, failed;
      FD_ZERO(&writable);
      FD_ZERO(&failed);
      FD_SET(s, &writable);
      FD_SET(s, &failed);
      timeval tv;
      tv.tv_sec = ms / 1000;
      tv.tv_usec = (ms % 1000) * 1000;
      r = ::select(0, nullptr, &writable, &failed, &tv);
    } else {
      WSAPOLLFD p{};
      p.fd = s;
      p.events = for_write ? POLLWRNORM : POLLRDNORM;
      r = ::WSAPoll(&p, 1, ms);
    }
    if (r > 0) return Wait::ready;
    if (r < 0) {
      err = WSAGetLastError();
      if (err == WSAEINTR) continue;
      return Wait::failed;
    }
#else
    (void)connecting;
    pollfd p{};
    p.fd = s;
    p.events = for_write ? POLLOUT : POLLIN;
    int r = ::poll(&p, 1, ms);
    if (r > 0) return Wait::ready;  // POLLERR and POLLHUP too: the next call reports them
    if (r < 0) {
      err = errno;
      if (err == EINTR) continue;
      return Wait::failed;
    }
#endif
  }
}

// What bounds one connect: the context, and the connect timeout (`until`, time_point::max()
// for none) counted from the start of the connect.
struct ConnectBudget {
  const Context& ctx;
  Millis timeout;
  SteadyClock::time_point until;
};

inline SteadyClock::time_point connect_deadline(Millis connect_timeout) {
  SteadyClock::time_point start = SteadyClock::now();
  if (connect_timeout.count() > 0 &&
      connect_timeout < std::chrono::duration_cast<Millis>(SteadyClock::time_point::max() - start))
    return start + connect_timeout;
  return SteadyClock::time_point::max();
}

// One slice of a wait on `cv`, or false when the context or the connect timeout ends it
// (`status` then says whether the context did).
bool wait_slice(const ConnectBudget& budget, std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                ContextStatus& status) {
  status = context_status(budget.ctx);
  if (status != ContextStatus::ok) return false;
  SteadyClock::time_point now = SteadyClock::now();
  if (now >= budget.until) return false;
  Millis slice = time_left(budget.ctx, kContextSlice);
  if (budget.until != SteadyClock::time_point::max())
    slice = std::min(slice, std::chrono::duration_cast<Millis>(budget.until - now) + Millis(1));
  cv.wait_for(lock, slice);
  return true;
}

// The wait for a lookup (or for a free lookup slot, `busy`) ended before its answer.
Result<AddrList> lookup_wait_ended(const ConnectBudget& budget, ContextStatus status, const std::string& host,
                                   const char* busy) {
  if (status != ContextStatus::ok) return stopped<AddrList>(status, {"resolving the host name ", host});
  return failure<AddrList>(Errc::timeout, {"resolving the host name ", host, " timed out after ",
                                           num(budget.timeout.count()), " ms", busy,
                                           ": check the endpoint URL and this machine's DNS settings"});
}

Result<AddrList> lookup_failed(const std::string& host, int rc, int sys_error) {
#if MI_DETAIL_WINDOWS
  (void)sys_error;
  std::string reason = describe_error(rc != 0 ? rc : WSAHOST_NOT_FOUND);
#else
  std::string reason = rc != 0 ? ascii_lowercase(::gai_strerror(rc)) : std::string("no address");
#if defined(EAI_SYSTEM)
  if (rc == EAI_SYSTEM) reason = describe_error(sys_error);
#endif
#endif
  return failure<AddrList>(Errc::network, {"could not resolve the host name ", host, " (", reason,
                                           "): check the endpoint URL and this machine's DNS settings"});
}

// Looks a host name up on a helper thread, once one of the kMaxHostLookups slots is free,
// and waits for the answer in context slices.
Result<AddrList> lookup_host_name(const ConnectBudget& budget, const std::string& host, const std::string& port,
                                  const addrinfo& hints, Resolver resolve) {
  auto lookup = std::make_shared<HostLookup>();
  lookup->host = host;
  lookup->port = port;
  lookup->hints = hints;
  lookup->hints.ai_flags &= ~AI_NUMERICHOST;
  lookup->resolve = resolve;
  ContextStatus status = ContextStatus::ok;
  {
    HostLookupSlots& slots = host_lookup_slots();
    std::unique_lock<std::mutex> lock(slots.mutex);
    while (slots.busy >= kMaxHostLookups)
      if (!wait_slice(budget, lock, slots.freed, status))
        return lookup_wait_ended(budget, status, host, " (all lookup threads were busy)");
    ++slots.busy;
  }
  if (!start_host_lookup(lookup)) {  // no thread to spare: look up inline
    lookup->run();
    release_host_lookup_slot();
  }
  std::unique_lock<std::mutex> lock(lookup->mutex);
  while (!lookup->done)
    if (!wait_slice(budget, lock, lookup->finished, status)) return lookup_wait_ended(budget, status, host, "");
  if (lookup->rc != 0 || !lookup->list) return lookup_failed(host, lookup->rc, lookup->sys_error);
  return std::move(lookup->list);
}

// The addresses of url.host: an IP literal converted at once, without any DNS look-up; a
// host name looked up on a helper thread.
Result<AddrList> resolve_host(const ConnectBudget& budget, const Url& url, Resolver resolve) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICHOST;
#if defined(AI_NUMERICSERV)
  hints.ai_flags |= AI_NUMERICSERV;
#endif
  const std::string port = num(url.port);
  addrinfo* numeric = nullptr;
  int rc = resolve(url.host.c_str(), port.c_str(), &hints, &numeric);
  if (rc != 0) return lookup_host_name(budget, url.host, port, hints, resolve);  // not an IP literal
  if (numeric == nullptr) return lookup_failed(url.host, 0, 0);
  return AddrList(numeric);
}

// One address tried: `sock` connected, or kNoSocket and `err` saying why this address
// failed (the next one may still work).
struct Attempt {
  socket_handle sock = kNoSocket;
  int err = 0;
};

// Connects to one address within the budget; an error (context, connect timeout) ends
// the whole connect.
Result<Attempt> connect_one(const ConnectBudget& budget, const addrinfo& ai, const std::string& where) {
  int err = 0;
  SocketGuard sock(open_socket(ai.ai_family, ai.ai_socktype, ai.ai_protocol, err));
  if (sock.get() == kNoSocket) return Attempt{kNoSocket, err};
#if MI_DETAIL_WINDOWS
  int r = ::connect(sock.get(), ai.ai_addr, static_cast<int>(ai.ai_addrlen));
  bool pending = r != 0 && WSAGetLastError() == WSAEWOULDBLOCK;
#else
  int r = ::connect(sock.get(), ai.ai_addr, ai.ai_addrlen);
  // EINTR: the connection goes on asynchronously, exactly as with EINPROGRESS.
  bool pending = r != 0 && (errno == EINPROGRESS || errno == EINTR);
#endif
  if (r != 0 && !pending) return Attempt{kNoSocket, last_error()};
  if (pending) {
    ContextStatus status = ContextStatus::ok;
    Wait w = wait_socket(sock.get(), true, true, budget.ctx, budget.until, status, err);
    if (w == Wait::stopped) return stopped<Attempt>(status, {"connecting to ", where});
    if (w == Wait::deadline)
      return failure<Attempt>(Errc::timeout, {"connecting to ", where, " timed out after ", num(budget.timeout.count()),
                                              " ms: check that the endpoint address is right and reachable from "
                                              "this machine (a firewall may be dropping the packets)"});
    if (w == Wait::failed) return Attempt{kNoSocket, err};
    int so_error = 0;
    socklen_t len = static_cast<socklen_t>(sizeof so_error);
    if (::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&so_error), &len) != 0)
      so_error = last_error();
    if (so_error != 0) return Attempt{kNoSocket, so_error};
  }
  return Attempt{sock.release(), 0};
}

// Resolves url.host and connects to each address in turn, all within connect_timeout and
// the context. Returns the socket.
Result<socket_handle> connect_to(const Context& ctx, const Url& url, const std::string& where, Millis connect_timeout,
                                 Resolver resolve) {
  int err = 0;
  if (!network_ready(err))
    return failure<socket_handle>(Errc::network, {"could not start WinSock (", describe_error(err), ")"});
  const ConnectBudget budget{ctx, connect_timeout, connect_deadline(connect_timeout)};
  Result<AddrList> addresses = resolve_host(budget, url, resolve);
  if (!addresses) return addresses.error();
  ContextStatus status = context_status(ctx);
  if (status != ContextStatus::ok) return stopped<socket_handle>(status, {"connecting to ", where});

  int connect_err = 0;
  for (const addrinfo* ai = addresses->get(); ai != nullptr; ai = ai->ai_next) {
    Result<Attempt> attempt = connect_one(budget, *ai, where);
    if (!attempt) return attempt.error();
    if (attempt->sock != kNoSocket) return attempt->sock;
    connect_err = attempt->err;
  }
#if MI_DETAIL_WINDOWS
  bool refused = connect_err == WSAECONNREFUSED;
#else
  bool refused = connect_err == ECONNREFUSED;
#endif
  return failure<socket_handle>(Errc::network,
                                {"could not connect to ", where, " (", describe_error(connect_err), "): ",
                                 refused ? "is the managed identity endpoint running?"
                                         : "check that the endpoint address is right and reachable "
                                           "from this machine"});
}

// Sends all of `data`, waiting (in context slices) whenever the socket is full.
Result<bool> send_all(const Context& ctx, socket_handle s, std::string_view data, const std::string& where) {
  size_t sent = 0;
  while (sent < data.size()) {
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return stopped<bool>(status, {"sending the request to ", where});
    size_t chunk = data.size() - sent;
#if MI_DETAIL_WINDOWS
    if (chunk > static_cast<size_t>(INT_MAX)) chunk = static_cast<size_t>(INT_MAX);
    int n = ::send(s, data.data() + sent, static_cast<int>(chunk), 0);
#else
    ssize_t n = ::send(s, data.data() + sent, chunk, kSendFlags);
#endif
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    int err = n == 0 ? 0 : last_error();
    if (n < 0 && is_interrupted(err)) continue;
    if (n < 0 && would_block(err)) {
      Wait w = wait_socket(s, true, false, ctx, SteadyClock::time_point::max(), status, err);
      if (w == Wait::stopped) return stopped<bool>(status, {"sending the request to ", where});
      if (w == Wait::ready) continue;
    }
    return failure<bool>(Errc::network, {"could not send the request to ", where, " (",
                                         n == 0 ? std::string("connection closed") : describe_error(err),
                                         "): the endpoint dropped the connection; retrying may help"});
  }
  return true;
}

// Reads until the parser has one complete response, the peer closes, or the context stops.
MI_DETAIL_NOINLINE Result<HttpResponse> receive_response(const Context& ctx, socket_handle s, const std::string& where) {
  ResponseParser parser;
  char buffer[16 * 1024];
  for (;;) {
    // Checked on every read too, so a peer that keeps the socket busy cannot outlast the context.
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return stopped<HttpResponse>(status, {"waiting for the response from ", where});
#if MI_DETAIL_WINDOWS
    int n = ::recv(s, buffer, static_cast<int>(sizeof buffer), 0);
#else
    ssize_t n = ::recv(s, buffer, sizeof buffer, 0);
#endif
    ResponseParser::Status st = ResponseParser::Status::need_more;
    if (n > 0) {
      st = parser.feed(buffer, static_cast<size_t>(n));
    } else if (n == 0) {
      st = parser.finish();
    } else {
      int err = last_error();
      if (is_interrupted(err)) continue;
      if (!would_block(err))
        return failure<HttpResponse>(Errc::network,
                                     {"reading the response from ", where, " failed (", describe_error(err),
                                      "): the endpoint dropped the connection; retrying may help"});
      Wait w = wait_socket(s, false, false, ctx, SteadyClock::time_point::max(), status, err);
      if (w == Wait::stopped) return stopped<HttpResponse>(status, {"waiting for the response from ", where});
      if (w == Wait::failed)
        return failure<HttpResponse>(Errc::network,
                                     {"waiting for the response from ", where, " failed (", describe_error(err), ")"});
      continue;
    }
    if (st == ResponseParser::Status::done) return std::move(parser.response());
    if (st == ResponseParser::Status::error) {
      Error e = parser.error();
      ErrorAccess::set_message(e, cat({e.message(), " (endpoint ", where, ")"}));
      return e;
    }
  }
}

}  // namespace sock_impl

class SocketTransport final : public HttpClient {
 public:
  // connect_timeout bounds connecting (all addresses together); zero or less: only the
  // context does. `resolve` looks host names up (tests pass one that blocks on demand).
  explicit SocketTransport(Millis connect_timeout = Millis(5000), Resolver resolve = &system_resolver)
      : connect_timeout_(connect_timeout), resolve_(resolve) {}
  Result<HttpResponse> Do(const Context& ctx, const HttpRequest& request) override;

 private:
  Millis connect_timeout_;
  Resolver resolve_;
};

Result<HttpResponse> SocketTransport::Do(const Context& ctx, const HttpRequest& request) {
  Result<WireRequest> wire = serialize_request(request);  // the one parse of request.url
  if (!wire) return wire.error();
  const Url& url = wire->url;
  if (url.scheme != "http")
    return failure<HttpResponse>(Errc::tls, {"HTTPS needs MI_USE_CURL: this build has no TLS transport (define "
                                             "MI_USE_CURL where MI_IMPLEMENTATION is defined, with the libcurl and "
                                             "OpenSSL headers installed)"});
  const std::string where = url.authority();
  ContextStatus status = context_status(ctx);
  if (status != ContextStatus::ok) return stopped<HttpResponse>(status, {"connecting to ", where});

  Result<socket_handle> connected = sock_impl::connect_to(ctx, url, where, connect_timeout_, resolve_);
  if (!connected) return connected.error();
  sock_impl::SocketGuard sock(connected.value());
  Result<bool> sent = sock_impl::send_all(ctx, sock.get(), wire->bytes, where);
  if (!sent) return sent.error();
  return sock_impl::receive_response(ctx, sock.get(), where);
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/curl.hpp ----
// HTTPS through libcurl (only with MI_USE_CURL): Service Fabric's pinned endpoint and
// workload identity's chain-validated one; and the IDENTITY_SERVER_THUMBPRINT helpers every
// build needs (docs/protocol.md §4, §12).
//
// Pinning: with a thumbprint, libcurl's own chain and host-name checks are off
// and an OpenSSL certificate-verification callback installed through
// CURLOPT_SSL_CTX_FUNCTION compares the SHA-1 of the server's leaf certificate
// (over its DER encoding) with the pin, in constant time, during the handshake:
// on a mismatch the handshake fails and no HTTP request byte is written. A
// CURLOPT_PREREQFUNCTION check refuses to send the request if, for any reason,
// the pin was not confirmed (fail closed). Only libcurl built on OpenSSL can do
// this; any other TLS backend fails closed with a tls error.
//
// Chain validation (CurlTrust): libcurl's own chain and host-name checks against the
// system's trust store plus extra anchors (mi::WithCAFile); or, for the AKS token proxy,
// against its CA alone, with a chosen TLS server name (the URL names it, CURLOPT_CONNECT_TO
// reaches the proxy's address). Only such transfers may go through the HTTPS_PROXY the
// environment names.
//
// Trust store: left to itself, libcurl parses the system's CA bundle for every connection
// (its own cache of the parsed store is off when it also has a default CA directory, as
// Debian's has, and lives in a multi handle): tens of milliseconds, ten times a handshake.
// So each transport builds one OpenSSL store (CurlTrustStore) at its first request, from
// the files libcurl would read (CURLINFO_CAINFO, CURLINFO_CAPATH) plus mi::WithCAFile,
// tells libcurl to load nothing, and puts that store on every connection's SSL_CTX;
// libcurl's chain and host-name checks are unchanged. Without what this needs (libcurl
// 7.84, its OpenSSL backend, a default bundle or directory), libcurl loads the system's
// anchors itself as before.
//
// Loading: every libcurl and OpenSSL function is called through a table (CurlApi),
// filled once at the first HTTPS request: from libcurl loaded with dlopen (the
// default, so a program pays nothing for libcurl until Service Fabric needs it), or
// with the functions' own addresses (MI_CURL_LINKED, and on Windows). A libcurl that
// cannot be loaded or used fails the request with a tls error before anything is sent.

#if MI_DETAIL_CURL
#if defined(__has_include)
#if !__has_include(<openssl/ssl.h>)
#error "MI_USE_CURL needs the OpenSSL headers at build time (e.g. libssl-dev): Service Fabric certificate pinning uses libcurl's OpenSSL backend"
#endif
#endif
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#if !defined(_WIN32)
#include <pthread.h>
#include <signal.h>
#endif
#endif

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

#if MI_DETAIL_CURL

// How a transfer without a pin checks the server (docs/protocol.md §12). Empty: the system's
// trust store, no proxy.
struct CurlTrust {
  std::string extra_ca_file;  // mi::WithCAFile: PEM anchors added to the system's store
  std::string only_ca_file;   // the token proxy's CA, trusted alone: a PEM file ...
  std::string only_ca_pem;    // ... or PEM text
  std::string sni_name;       // sent as the TLS server name and matched by the certificate
  bool use_proxy = false;     // HTTPS_PROXY / NO_PROXY from the environment apply
  // The system's anchors: libcurl's defaults unless `system_anchors_given`, when these two
  // (either may be empty) stand in for them. Tests set them, since they cannot write the
  // system's store.
  bool system_anchors_given = false;
  std::string system_ca_file;  // a PEM bundle, loaded whole
  std::string system_ca_dir;   // a directory of <subject hash>.N files, read as chains need them
};

// Compares without an early exit, so the time taken does not depend on where the
// inputs differ (the lengths are not secret).
bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff = static_cast<unsigned char>(diff | (static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i])));
  return diff == 0;
}

// HttpRequest::pinned_sha1 -> 20 raw bytes: exactly 40 hex digits (either case), nothing
// else, since it was normalised when it was put there.
Result<std::string> pin_from_hex(std::string_view hex) {
  std::string out(20, '\0');
  bool ok = hex.size() == 40;
  for (size_t i = 0; ok && i < 20; ++i) {
    int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
    ok = high >= 0 && low >= 0;
    out[i] = static_cast<char>(high * 16 + low);
  }
  if (ok) return out;
  return failure<std::string>(Errc::invalid_argument, {"the request's certificate pin (HttpRequest::pinned_sha1) "
                                                       "must be 40 hexadecimal digits"});
}

// "3.0" for 0x30000130 (OPENSSL_VERSION_NUMBER / OpenSSL_version_num() layout).
std::string openssl_series(unsigned long version_num) {
  return cat({num(static_cast<long long>((version_num >> 28) & 0xfUL)), ".",
              num(static_cast<long long>((version_num >> 20) & 0xffUL))});
}

// Same major version (before 3.0: same major.minor), the span over which OpenSSL keeps its ABI.
bool openssl_same_series(unsigned long major, unsigned long minor, unsigned long version_num) noexcept {
  unsigned long other_major = (version_num >> 28) & 0xfUL;
  unsigned long other_minor = (version_num >> 20) & 0xffUL;
  return major == other_major && (major >= 3 || minor == other_minor);
}

// Checks that libcurl's active TLS backend (curl_version_info()->ssl_version, e.g.
// "OpenSSL/3.0.19"; in a multi-backend build the inactive ones are in parentheses)
// is OpenSSL and of the same major (before 3.0: major.minor) version as the OpenSSL
// headers this code was compiled with (`header_version_num`, OPENSSL_VERSION_NUMBER),
// so the SSL_CTX that libcurl hands over is one this code may touch. The error (tls)
// says what was found.
Result<bool> curl_tls_backend_supports_pinning(std::string_view ssl_version, unsigned long header_version_num) {
  std::string_view active = trim(ssl_version);
  active = active.substr(0, active.find(' '));
  if (active.empty() || active.front() == '(')
    return failure<bool>(Errc::tls, {"the libcurl TLS backend is none; Service Fabric certificate pinning needs "
                                     "libcurl built with OpenSSL"});
  const std::string_view prefix = "OpenSSL/";
  if (!starts_with(active, prefix))
    return failure<bool>(Errc::tls, {"the libcurl TLS backend is ", active,
                                     "; Service Fabric certificate pinning needs libcurl built with OpenSSL"});
  // "OpenSSL/3.0.19" -> 3 and 0.
  std::string_view numbers = active.substr(prefix.size());
  unsigned long major = 0, minor = 0;
  size_t i = 0;
  bool have_major = false;
  while (i < numbers.size() && numbers[i] >= '0' && numbers[i] <= '9' && major < 1000) {
    major = major * 10 + static_cast<unsigned long>(numbers[i++] - '0');
    have_major = true;
  }
  if (i < numbers.size() && numbers[i] == '.') {
    ++i;
    while (i < numbers.size() && numbers[i] >= '0' && numbers[i] <= '9' && minor < 1000)
      minor = minor * 10 + static_cast<unsigned long>(numbers[i++] - '0');
  }
  if (!have_major || !openssl_same_series(major, minor, header_version_num))
    return failure<bool>(Errc::tls, {"libcurl uses ", active, " but this program was compiled with the OpenSSL ",
                                     openssl_series(header_version_num),
                                     " headers; build libcurl and managed_identity.hpp against the same OpenSSL"});
  return true;
}

// The OpenSSL library libcurl runs with (its OpenSSL_version_num()) against the headers.
Result<bool> openssl_library_matches_headers(unsigned long library_version_num, unsigned long header_version_num) {
  if (openssl_same_series((library_version_num >> 28) & 0xfUL, (library_version_num >> 20) & 0xffUL,
                          header_version_num))
    return true;
  return failure<bool>(Errc::tls, {"libcurl runs with OpenSSL ", openssl_series(library_version_num),
                                   " but this program was compiled with the OpenSSL ",
                                   openssl_series(header_version_num),
                                   " headers; build libcurl and managed_identity.hpp against the same OpenSSL"});
}

// libcurl 7.80.0 (0x075000) is the first with CURLOPT_PREREQFUNCTION, which refuses to
// send a request over a connection whose pin was not confirmed; curl_multi_poll is 7.66.0.
constexpr unsigned int kMinCurlVersion = 0x075000;

// `version_num` is curl_version_info()->version_num (0xXXYYZZ).
Result<bool> curl_version_supported(unsigned int version_num) {
  if (version_num >= kMinCurlVersion) return true;
  return failure<bool>(Errc::tls, {"libcurl ", num((version_num >> 16) & 0xffU), ".", num((version_num >> 8) & 0xffU),
                                   ".", num(version_num & 0xffU),
                                   " is too old: Service Fabric needs 7.80.0 or later (CURLOPT_PREREQFUNCTION)"});
}

namespace curl_impl {

// Every libcurl and OpenSSL function the transport calls. The table's members have the
// functions' own names and the types their headers declare.
#define MI_DETAIL_CURL_FUNCTIONS(X)                                                                       \
  X(curl_version_info) X(curl_global_init) X(curl_easy_init) X(curl_easy_cleanup) X(curl_easy_setopt)    \
  X(curl_easy_getinfo) X(curl_easy_strerror) X(curl_multi_init) X(curl_multi_cleanup)                    \
  X(curl_multi_add_handle) X(curl_multi_remove_handle) X(curl_multi_perform) X(curl_multi_info_read)     \
  X(curl_multi_poll) X(curl_multi_strerror) X(curl_slist_append) X(curl_slist_free_all)
#define MI_DETAIL_OPENSSL_FUNCTIONS(X)                                                                    \
  X(OpenSSL_version_num) X(X509_STORE_CTX_get0_cert) X(X509_digest) X(EVP_sha1)                          \
  X(X509_STORE_CTX_set_error) X(SSL_CTX_set_verify) X(SSL_CTX_set_cert_verify_callback)                \
  X(SSL_CTX_load_verify_locations) X(X509_STORE_new) X(X509_STORE_free) X(X509_STORE_up_ref)             \
  X(X509_STORE_set_flags) X(X509_STORE_load_locations) X(SSL_CTX_set_cert_store) X(ERR_clear_error)

struct CurlApi {
#define MI_DETAIL_CURL_MEMBER(name) decltype(&::name) name = nullptr;
  MI_DETAIL_CURL_FUNCTIONS(MI_DETAIL_CURL_MEMBER)
  MI_DETAIL_OPENSSL_FUNCTIONS(MI_DETAIL_CURL_MEMBER)
#undef MI_DETAIL_CURL_MEMBER
  std::string problem;          // non-empty: no HTTPS at all (the tls error's message)
  std::string pinning_problem;  // non-empty: HTTPS, but no certificate pinning
  CURLcode init = CURLE_OK;     // curl_global_init's result
  unsigned int version_num = 0;
};

#if MI_DETAIL_CURL_LINKED
const char* const kCurlRemedy = "link libcurl 7.80 or later built with OpenSSL";

// Where the functions come from: the program itself (MI_CURL_LINKED, and on Windows).
struct CurlLibrary {
  std::string name;     // "" : nothing was loaded
  std::string from;     // what messages start with
  std::string missing;  // always empty: the linker found every function

  void bind_curl(CurlApi& api) const {
#define MI_DETAIL_CURL_LINK(function) api.function = &::function;
    MI_DETAIL_CURL_FUNCTIONS(MI_DETAIL_CURL_LINK)
  }
  void bind_openssl(CurlApi& api) const { MI_DETAIL_OPENSSL_FUNCTIONS(MI_DETAIL_CURL_LINK) }
#undef MI_DETAIL_CURL_LINK
};

Result<CurlLibrary> open_curl_library() { return CurlLibrary{}; }
#else
const char* const kCurlRemedy =
    "install libcurl 7.80 or later built with OpenSSL (Debian, Ubuntu: libcurl4), or build with MI_CURL_LINKED";

// The loader's own words (they name a file and a symbol, never a secret), made one printable line.
std::string dl_error_text() {
  const char* text = dlerror();
  std::string out;
  for (const char* p = text != nullptr ? text : "unknown error"; *p != '\0' && out.size() < 300; ++p)
    out.push_back(static_cast<unsigned char>(*p) < 0x20 || *p == 0x7f ? ' ' : *p);
  return out;
}

// libcurl loaded with dlopen. dlsym on its handle searches libcurl and its own
// dependencies, not the whole process: the OpenSSL functions found this way are those of
// the very OpenSSL libcurl uses, whatever other OpenSSL the program may hold.
struct CurlLibrary {
  void* handle = nullptr;  // never dlclose'd: callbacks and handles outlive any request
  std::string name;        // the file loaded
  std::string from;        // what messages start with: "<name>: "
  std::string missing;     // the first function not found, with the loader's words

  void* lookup(const char* function) {
    dlerror();
    void* address = dlsym(handle, function);
    if (address == nullptr && missing.empty()) missing = cat({function, ": ", dl_error_text()});
    return address;
  }
  void bind_curl(CurlApi& api) {
#define MI_DETAIL_CURL_RESOLVE(function) api.function = reinterpret_cast<decltype(api.function)>(lookup(#function));
    MI_DETAIL_CURL_FUNCTIONS(MI_DETAIL_CURL_RESOLVE)
  }
  void bind_openssl(CurlApi& api) { MI_DETAIL_OPENSSL_FUNCTIONS(MI_DETAIL_CURL_RESOLVE) }
#undef MI_DETAIL_CURL_RESOLVE
};

// Fixed names only: a library chosen by the environment would be code injection.
Result<CurlLibrary> open_curl_library() {
#if defined(MI_CURL_LIBRARY)
  static const char* const names[] = {"" MI_CURL_LIBRARY};  // "" makes anything but a string literal an error
#elif defined(__APPLE__)
  static const char* const names[] = {"libcurl.4.dylib"};
#else
  static const char* const names[] = {"libcurl.so.4", "libcurl.so"};
#endif
  std::string errors;
  for (const char* name : names) {
    CurlLibrary library;
    library.handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (library.handle != nullptr) {
      library.name = name;
      library.from = cat({name, ": "});
      return library;
    }
    errors += cat({errors.empty() ? "" : "; ", dl_error_text()});
  }
  return failure<CurlLibrary>(Errc::tls, {"libcurl could not be loaded (", errors, ")"});
}
#endif
#undef MI_DETAIL_CURL_FUNCTIONS
#undef MI_DETAIL_OPENSSL_FUNCTIONS

// Certificate pinning needs libcurl's OpenSSL backend, and OpenSSL's functions from
// libcurl's own OpenSSL, of the series the headers declare; else api.pinning_problem says why.
void check_pinning(CurlApi& api, CurlLibrary& library, const curl_version_info_data& info) {
  auto no_pinning = [&api, &library](std::string_view what) {
    api.pinning_problem = cat({library.from, what, "; ", kCurlRemedy});
  };
  Result<bool> backend =
      curl_tls_backend_supports_pinning(info.ssl_version != nullptr ? info.ssl_version : "", OPENSSL_VERSION_NUMBER);
  if (!backend) return no_pinning(backend.error().message());
  library.bind_openssl(api);
  if (!library.missing.empty())
    return no_pinning(
        cat({"libcurl uses OpenSSL, but an OpenSSL function is missing from its libraries (", library.missing, ")"}));
  Result<bool> same_openssl = openssl_library_matches_headers(api.OpenSSL_version_num(), OPENSSL_VERSION_NUMBER);
  if (!same_openssl) no_pinning(same_openssl.error().message());
}

// The function table, or api.problem saying why there is no HTTPS at all.
CurlApi load_curl_api() {
  CurlApi api;
  auto fail = [&api](std::string_view what) {
    api.problem = cat({"HTTPS is not available: ", what, "; ", kCurlRemedy});
    return api;
  };
  Result<CurlLibrary> library = open_curl_library();
  if (!library) return fail(library.error().message());
  library->bind_curl(api);
  if (api.curl_version_info == nullptr) return fail(cat({library->name, " is not libcurl (", library->missing, ")"}));
  const curl_version_info_data* info = api.curl_version_info(CURLVERSION_NOW);
  if (info == nullptr) return fail(cat({library->from, "libcurl gave no version information"}));
  Result<bool> supported = curl_version_supported(info->version_num);
  if (!supported) return fail(cat({library->from, supported.error().message()}));
  // Only a too-old libcurl should lack a function.
  if (!library->missing.empty())
    return fail(cat({library->from, "a libcurl function is missing (", library->missing, ")"}));
  api.version_num = info->version_num;
  api.init = api.curl_global_init(CURL_GLOBAL_DEFAULT);
  check_pinning(api, *library, *info);
  return api;
}

// Loaded once, at the first HTTPS request, by whichever thread gets there first; never
// destroyed, since threads may still make requests while the process exits.
const CurlApi& curl_api() {
  static const CurlApi& api = *new CurlApi(load_curl_api());
  return api;
}

struct CurlStoreDeleter {
  decltype(&::X509_STORE_free) free = nullptr;
  void operator()(X509_STORE* store) const noexcept { free(store); }
};
// One reference to an OpenSSL store.
using CurlStoreRef = std::unique_ptr<X509_STORE, CurlStoreDeleter>;

// How long a transport uses the store it built before building it again from the files
// (the next request after that does it). libcurl keeps its own cached store 24 hours
// (CURLOPT_CA_CACHE_TIMEOUT's default), so an updated system bundle or mi::WithCAFile file
// is taken up as soon as libcurl itself would with its cache.
constexpr std::chrono::hours kTrustStoreLifetime(24);

// The files libcurl would load the system's anchors from: its defaults, as an easy handle
// it has not been told otherwise reports them, or the stand-ins the trust gives. False
// when they are not known (libcurl before 7.84, or none compiled in): libcurl must load
// whatever it would itself.
bool system_anchor_files(const CurlApi& api, const CurlTrust& trust, CURL* easy, std::string& file,
                         std::string& dir) {
  if (trust.system_anchors_given) {
    file = trust.system_ca_file;
    dir = trust.system_ca_dir;
    return true;
  }
#if LIBCURL_VERSION_NUM >= 0x075400
  if (easy == nullptr || api.version_num < 0x075400) return false;
  char* cainfo = nullptr;
  char* capath = nullptr;
  if ((api.curl_easy_getinfo)(easy, CURLINFO_CAINFO, &cainfo) != CURLE_OK ||
      (api.curl_easy_getinfo)(easy, CURLINFO_CAPATH, &capath) != CURLE_OK)
    return false;
  file = cainfo != nullptr ? cainfo : "";
  dir = capath != nullptr ? capath : "";
  return !file.empty() || !dir.empty();
#else
  (void)api;
  (void)easy;
  return false;
#endif
}

// A new store as libcurl would fill one for CURLOPT_CAINFO and CURLOPT_CAPATH (the bundle
// loaded whole, the directory searched by subject hash when a chain needs it, the same
// flags), plus mi::WithCAFile's anchors. A file that cannot be loaded is a tls error that
// names it: nothing is sent.
Result<CurlStoreRef> build_trust_store(const CurlApi& api, const std::string& system_file,
                                       const std::string& system_dir, const std::string& extra_file) {
  CurlStoreRef store(api.X509_STORE_new(), CurlStoreDeleter{api.X509_STORE_free});
  if (!store) return failure<CurlStoreRef>(Errc::network, {"OpenSSL could not create a certificate store (out of memory?)"});
  auto load = [&api, &store](const std::string& file, const std::string& dir) {
    if (api.X509_STORE_load_locations(store.get(), file.empty() ? nullptr : file.c_str(),
                                      dir.empty() ? nullptr : dir.c_str()) == 1)
      return true;
    api.ERR_clear_error();  // OpenSSL's reasons are not this thread's caller's business
    return false;
  };
  if (!system_file.empty() && !load(system_file, std::string()))
    return failure<CurlStoreRef>(Errc::tls, {"the system's CA bundle '", system_file,
                                             "' (libcurl's default) could not be loaded as PEM certificates, so the "
                                             "request was not sent"});
  if (!system_dir.empty() && !load(std::string(), system_dir))
    return failure<CurlStoreRef>(Errc::tls, {"the system's CA directory '", system_dir,
                                             "' (libcurl's default) could not be used, so the request was not sent"});
  if (!extra_file.empty() && !load(extra_file, std::string()))
    return failure<CurlStoreRef>(Errc::tls, {"mi::WithCAFile: '", extra_file,
                                             "' could not be loaded as PEM certificates, so the request was not sent"});
  // libcurl's: issuers from the store before those the server sent, and a certificate in
  // the store is an anchor even when it is not self-signed.
  api.X509_STORE_set_flags(store.get(), X509_V_FLAG_TRUSTED_FIRST | X509_V_FLAG_PARTIAL_CHAIN);
  return store;
}

// The store of one transport: built by its first chain-validated request, then shared by
// every connection (a store is made to be shared between SSL_CTXs and threads: OpenSSL
// locks what a lookup changes; libcurl shares its own cached one the same way), and built
// again after kTrustStoreLifetime. Requests that arrive while it is built wait for it.
class CurlTrustStore {
 public:
  CurlTrustStore() = default;
  CurlTrustStore(const CurlTrustStore&) = delete;
  CurlTrustStore& operator=(const CurlTrustStore&) = delete;

  // A reference for one transfer; an empty one when libcurl must load the system's
  // anchors itself (system_anchor_files). Needs the OpenSSL functions (no pinning_problem).
  Result<CurlStoreRef> get(const CurlApi& api, const CurlTrust& trust, CURL* easy,
                           std::chrono::steady_clock::time_point now) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!store_ || now - built_ >= kTrustStoreLifetime) {
      std::string file, dir;
      if (!system_anchor_files(api, trust, easy, file, dir)) return CurlStoreRef(nullptr, CurlStoreDeleter{});
      Result<CurlStoreRef> built = build_trust_store(api, file, dir, trust.extra_ca_file);
      if (!built) return built;  // tried again by the next request
      store_ = std::move(*built);
      built_ = now;
    }
    if (api.X509_STORE_up_ref(store_.get()) != 1)
      return failure<CurlStoreRef>(Errc::network, {"OpenSSL could not share the certificate store"});
    return CurlStoreRef(store_.get(), CurlStoreDeleter{api.X509_STORE_free});
  }

 private:
  std::mutex mutex_;
  CurlStoreRef store_{nullptr, CurlStoreDeleter{}};
  std::chrono::steady_clock::time_point built_;
};

// State of one request, shared with libcurl's callbacks (all run on the calling thread).
struct CurlCall {
  const CurlApi* api = nullptr;
  const Context* ctx = nullptr;
  std::string_view pin;         // 20 bytes, or empty for "no pin"
  const CurlTrust* trust = nullptr;  // without a pin: how the chain is checked
  X509_STORE* store = nullptr;       // the transport's store (CurlTrustStore), held by CurlTransport::Do
  bool anchors_unreadable = false;   // the extra CA file could not be loaded
  bool pin_installed = false;   // the OpenSSL callback was put on the connection's SSL_CTX
  bool pin_matched = false;     // the leaf certificate matched
  bool pin_mismatch = false;    // a leaf certificate did not match
  bool pin_unreadable = false;  // no leaf certificate or no digest
  bool pin_unchecked = false;   // the request was about to go out without a match: refused
  ContextStatus stopped = ContextStatus::ok;
  HttpResponse response;
  bool interim = false;         // inside a 1xx head (skipped)
  bool body_started = false;    // header lines after this are trailers (ignored)
  size_t header_bytes = 0;
  bool headers_too_large = false;
  bool body_too_large = false;

  static int on_verify(X509_STORE_CTX* store, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    const CurlApi& api = *call->api;
    X509* leaf = api.X509_STORE_CTX_get0_cert(store);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (leaf == nullptr || api.X509_digest(leaf, api.EVP_sha1(), md, &len) != 1 || len != 20) {
      call->pin_unreadable = true;
      call->pin_matched = false;
      api.X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
      return 0;
    }
    bool match = constant_time_equal(std::string_view(reinterpret_cast<const char*>(md), len), call->pin);
    call->pin_matched = match;
    if (!match) {
      call->pin_mismatch = true;
      api.X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
      return 0;
    }
    return 1;
  }

  static CURLcode on_ssl_ctx(CURL*, void* ssl_ctx, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    SSL_CTX* tls = static_cast<SSL_CTX*>(ssl_ctx);
    if (tls == nullptr) return CURLE_SSL_CONNECT_ERROR;
    // VERIFY_PEER makes a failed verification abort the handshake; the callback
    // replaces chain building altogether, so only the pin decides.
    call->api->SSL_CTX_set_verify(tls, SSL_VERIFY_PEER, nullptr);
    call->api->SSL_CTX_set_cert_verify_callback(tls, &CurlCall::on_verify, arg);
    call->pin_installed = true;
    return CURLE_OK;
  }

  // Puts the transport's store in place of the empty one libcurl made (it fills its store
  // before it calls this). The SSL_CTX takes a reference of its own.
  static CURLcode on_ssl_ctx_store(CURL*, void* ssl_ctx, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    SSL_CTX* tls = static_cast<SSL_CTX*>(ssl_ctx);
    if (tls == nullptr || call->store == nullptr || call->api->X509_STORE_up_ref(call->store) != 1)
      return CURLE_SSL_CONNECT_ERROR;
    call->api->SSL_CTX_set_cert_store(tls, call->store);
    return CURLE_OK;
  }

  // Without the transport's store: adds mi::WithCAFile's anchors to the store libcurl
  // filled from the system's (libcurl sets the store up before it calls this), so both are
  // trusted.
  static CURLcode on_ssl_ctx_anchors(CURL*, void* ssl_ctx, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    SSL_CTX* tls = static_cast<SSL_CTX*>(ssl_ctx);
    if (tls == nullptr) return CURLE_SSL_CONNECT_ERROR;
    if (call->api->SSL_CTX_load_verify_locations(tls, call->trust->extra_ca_file.c_str(), nullptr) != 1) {
      call->anchors_unreadable = true;
      return CURLE_SSL_CACERT_BADFILE;
    }
    return CURLE_OK;
  }

  static int on_prereq(void* arg, char*, char*, int, int) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    if (!call->pin.empty() && !(call->pin_installed && call->pin_matched)) {
      call->pin_unchecked = true;
      return CURL_PREREQFUNC_ABORT;
    }
    ContextStatus status = context_status(*call->ctx);
    if (status != ContextStatus::ok) {
      call->stopped = status;
      return CURL_PREREQFUNC_ABORT;
    }
    return CURL_PREREQFUNC_OK;
  }

  static int on_progress(void* arg, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    ContextStatus status = context_status(*call->ctx);
    if (status == ContextStatus::ok) return 0;
    call->stopped = status;
    return 1;
  }

  void header_line(std::string_view line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    if (starts_with(line, "HTTP/")) {  // a new status line: a new head begins
      size_t sp = line.find(' ');
      int status = 0;
      if (sp != std::string_view::npos && line.size() >= sp + 4) {
        for (size_t i = sp + 1; i < sp + 4; ++i) {
          char c = line[i];
          if (c < '0' || c > '9') { status = 0; break; }
          status = status * 10 + (c - '0');
        }
      }
      response.headers.clear();
      interim = status >= 100 && status < 200;
      response.status = interim ? 0 : status;
      return;
    }
    if (line.empty() || interim || body_started) return;
    if (line.front() == ' ' || line.front() == '\t') {  // obsolete line folding
      if (!response.headers.empty()) {
        std::string& value = response.headers.back().second;
        std::string_view more = trim(line);
        if (!more.empty()) {
          if (!value.empty()) value.push_back(' ');
          value.append(more.data(), more.size());
        }
      }
      return;
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return;
    response.headers.emplace_back(std::string(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
  }

  static size_t on_header(char* data, size_t size, size_t count, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    size_t n = size * count;
    call->header_bytes += n;
    if (call->header_bytes > static_cast<size_t>(MI_MAX_HEADER_BYTES)) {
      call->headers_too_large = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
#if MI_DETAIL_EXCEPTIONS
    try {
      call->header_line(std::string_view(data, n));
    } catch (...) {
      return 0;
    }
#else
    call->header_line(std::string_view(data, n));
#endif
    return n;
  }

  static size_t on_body(char* data, size_t size, size_t count, void* arg) {
    CurlCall* call = static_cast<CurlCall*>(arg);
    size_t n = size * count;
    call->body_started = true;
    if (n > static_cast<size_t>(MI_MAX_RESPONSE_BYTES) - call->response.body.size()) {
      call->body_too_large = true;
      return 0;
    }
#if MI_DETAIL_EXCEPTIONS
    try {
      call->response.body.append(data, n);
    } catch (...) {
      return 0;
    }
#else
    call->response.body.append(data, n);
#endif
    return n;
  }
};

struct CurlEasyDeleter {
  decltype(&::curl_easy_cleanup) cleanup = nullptr;
  void operator()(CURL* easy) const noexcept { cleanup(easy); }
};
struct CurlMultiDeleter {
  decltype(&::curl_multi_cleanup) cleanup = nullptr;
  void operator()(CURLM* multi) const noexcept { cleanup(multi); }
};
struct CurlSlistDeleter {
  decltype(&::curl_slist_free_all) free_all = nullptr;
  void operator()(curl_slist* list) const noexcept { free_all(list); }
};
// Removes the easy handle from the multi handle before either is cleaned up.
struct CurlAttachment {
  decltype(&::curl_multi_remove_handle) remove = nullptr;
  CURLM* multi = nullptr;
  CURL* easy = nullptr;
  ~CurlAttachment() {
    if (multi != nullptr && easy != nullptr) remove(multi, easy);
  }
};

// With CURLOPT_NOSIGNAL libcurl leaves SIGPIPE alone, and a write to a connection the
// peer closed can still raise it in corner cases (and in older libcurl, whose OpenSSL
// backend wrote with plain write()). Block it in this thread only for the transfer and
// swallow one that the transfer raised, as libpq does; the process-wide disposition is
// never changed.
class SigpipeGuard {
 public:
#if MI_DETAIL_WINDOWS
  SigpipeGuard() {}  // no SIGPIPE on Windows
#else
  SigpipeGuard() {
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    active_ = pthread_sigmask(SIG_BLOCK, &pipe_set, &old_) == 0;
    if (!active_) return;
    sigset_t pending;
    sigemptyset(&pending);
    was_pending_ = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() {
    if (!active_) return;
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        sigset_t pipe_set;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        int signal_number = 0;
        sigwait(&pipe_set, &signal_number);  // pending, so it returns at once
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
#endif
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

#if !MI_DETAIL_WINDOWS
 private:
  sigset_t old_;
  bool active_ = false;
  bool was_pending_ = false;
#endif
};

// curl's own message for errors whose text can only name the peer, never response bytes.
std::string curl_detail(const CurlApi& api, CURLcode code, const char* errbuf) {
  std::string out = api.curl_easy_strerror(code);
  bool safe_buffer = code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_CONNECT ||
                     code == CURLE_OPERATION_TIMEDOUT || code == CURLE_SSL_CONNECT_ERROR ||
                     code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CERTPROBLEM ||
                     code == CURLE_SSL_CIPHER || code == CURLE_SSL_CACERT_BADFILE;
  if (safe_buffer && errbuf != nullptr && errbuf[0] != '\0') {
    std::string text;
    for (const char* p = errbuf; *p != '\0' && text.size() < 240; ++p)
      text.push_back(static_cast<unsigned char>(*p) < 0x20 || *p == 0x7f ? ' ' : *p);
    std::string_view trimmed = trim(text);
    if (!trimmed.empty() && trimmed != out) out = cat({out, ": ", trimmed});
  }
  return out;
}

// A failed transfer that the pin or the header callback stopped: their reason, which
// libcurl's code hides. Returns true when neither did.
Result<bool> callback_failure(const CurlCall& call) {
  if (call.pin_mismatch)
    return failure<bool>(Errc::tls,
                         {"the Service Fabric endpoint's TLS certificate does not match IDENTITY_SERVER_THUMBPRINT"});
  if (call.pin_unreadable)
    return failure<bool>(Errc::tls, {"the Service Fabric endpoint presented no usable TLS certificate to compare with "
                                     "IDENTITY_SERVER_THUMBPRINT"});
  if (call.pin_unchecked)
    return failure<bool>(Errc::tls, {"the TLS connection to the Service Fabric endpoint was not verified against "
                                     "IDENTITY_SERVER_THUMBPRINT, so the request was not sent"});
  if (call.anchors_unreadable)
    return failure<bool>(Errc::tls, {"mi::WithCAFile: '", call.trust->extra_ca_file,
                                     "' could not be loaded as PEM certificates, so the request was not sent"});
  if (call.headers_too_large)
    return failure<bool>(Errc::invalid_response, {"the HTTPS response head is larger than MI_MAX_HEADER_BYTES (",
                                                  num(MI_MAX_HEADER_BYTES), " bytes)"});
  return true;
}

// The error class of a libcurl code; `detail` is libcurl's words, in parentheses.
// (Switched on as an int: libcurl adds codes in most releases, and every code not named
// here is the generic failure at the end.)
Result<HttpResponse> curl_code_failure(CURLcode code, std::string_view detail) {
  switch (static_cast<int>(code)) {
    case CURLE_OPERATION_TIMEDOUT:
      return failure<HttpResponse>(Errc::timeout, {"the HTTPS request timed out", detail,
                                                   "; check that the endpoint is reachable or allow more time "
                                                   "(mi::WithTimeouts)"});
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return failure<HttpResponse>(Errc::network, {"the HTTPS request to the endpoint failed", detail});
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
      return failure<HttpResponse>(Errc::tls, {"the TLS handshake with the HTTPS endpoint failed", detail});
    case CURLE_URL_MALFORMAT:
      return failure<HttpResponse>(Errc::invalid_argument, {"the HTTPS endpoint URL was rejected", detail});
    // The URL was checked to be https:// before the transfer, so libcurl reports this for
    // an answer that is not HTTP at all (a garbage status line, an HTTP/0.9 body).
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WRITE_ERROR:
      return failure<HttpResponse>(Errc::invalid_response,
                                   {"the HTTPS endpoint sent a response that is not valid HTTP", detail});
    default:
      return failure<HttpResponse>(Errc::network, {"the HTTPS request failed", detail});
  }
}

// Maps a failed transfer to the request's error: the callbacks' reasons first, then the
// context, then libcurl's code.
Result<HttpResponse> curl_failure(CURLcode code, const CurlCall& call, const Context& ctx, const char* errbuf) {
  Result<bool> from_callback = callback_failure(call);
  if (!from_callback) return from_callback.error();
  if (call.body_too_large || code == CURLE_FILESIZE_EXCEEDED)
    return failure<HttpResponse>(Errc::invalid_response,
                                 {"the HTTPS response body is larger than MI_MAX_RESPONSE_BYTES (",
                                  num(MI_MAX_RESPONSE_BYTES), " bytes)"});
  if (call.stopped != ContextStatus::ok) return stopped<HttpResponse>(call.stopped, {"waiting for the HTTPS endpoint"});
  ContextStatus status = context_status(ctx);
  if ((code == CURLE_ABORTED_BY_CALLBACK || code == CURLE_OPERATION_TIMEDOUT) && status != ContextStatus::ok)
    return stopped<HttpResponse>(status, {"waiting for the HTTPS endpoint"});
  return curl_code_failure(code, cat({" (libcurl: ", curl_detail(*call.api, code, errbuf), ")"}));
}

long curl_millis(Millis value) noexcept {
  const int64_t cap = 24LL * 24 * 3600 * 1000;  // fits a 32-bit long
  int64_t ms = static_cast<int64_t>(value.count());
  if (ms < 1) ms = 1;
  if (ms > cap) ms = cap;
  return static_cast<long>(ms);
}

// The pin a request is sent with: the transport's (20 bytes, or empty), the request's own
// pinned_sha1 (40 hex digits), or both when they agree. A malformed or conflicting pin
// stops the request here, before anything is sent.
Result<std::string> request_pin(const std::string& transport_pin, const HttpRequest& request) {
  if (!transport_pin.empty() && transport_pin.size() != 20)
    return failure<std::string>(Errc::invalid_argument,
                                {"the certificate pin must be the 20 bytes of a SHA-1 thumbprint"});
  if (request.pinned_sha1.empty()) return transport_pin;
  Result<std::string> from_request = pin_from_hex(request.pinned_sha1);
  if (!from_request) return from_request;
  if (!transport_pin.empty() && !constant_time_equal(transport_pin, *from_request))
    return failure<std::string>(Errc::tls, {"the request's certificate pin differs from the one this transport was "
                                            "created with, so the request was not sent"});
  return from_request;
}

// What libcurl would send as is, or refuse less clearly: an https:// URL without control
// characters, a token for a method, token header names, values without control characters.
Result<bool> check_request(const HttpRequest& request) {
  if (!starts_with(ascii_lowercase(request.url.substr(0, 8)), "https://") || has_control_char(request.url))
    return failure<bool>(Errc::invalid_argument,
                         {"the libcurl transport only sends https:// requests with a well-formed URL"});
  if (!http_impl::is_token(request.method))
    return failure<bool>(Errc::invalid_argument, {"the HTTP method is not a valid token"});
  for (const auto& header : request.headers) {
    if (!http_impl::is_token(header.first))
      return failure<bool>(Errc::invalid_argument, {"a request header name is not a valid HTTP token"});
    if (has_control_char(header.second))
      return failure<bool>(Errc::invalid_argument,
                           {"the value of request header ", header.first, " contains a control character"});
  }
  return true;
}

using CurlHeaders = std::unique_ptr<curl_slist, CurlSlistDeleter>;

// The request's headers as libcurl's list: "Name;" is libcurl's way to send an empty
// value, and "Expect:" (unless the request has its own) stops 100-continue on a body.
Result<CurlHeaders> curl_headers(const CurlApi& api, const HttpRequest& request) {
  CurlHeaders headers(nullptr, CurlSlistDeleter{api.curl_slist_free_all});
  bool has_expect = false;
  auto add = [&headers, &api](const std::string& line) {
    curl_slist* next = api.curl_slist_append(headers.get(), line.c_str());
    if (next == nullptr) return false;
    headers.release();
    headers.reset(next);
    return true;
  };
  for (const auto& header : request.headers) {
    std::string_view value = trim(header.second);
    if (!add(value.empty() ? cat({header.first, ";"}) : cat({header.first, ": ", value})))
      return failure<CurlHeaders>(Errc::network, {"libcurl could not store a request header (out of memory?)"});
    if (iequals(header.first, "Expect")) has_expect = true;
  }
  if (!request.body.empty() && !has_expect && !add("Expect:"))
    return failure<CurlHeaders>(Errc::network, {"libcurl could not store a request header (out of memory?)"});
  return headers;
}

// Sets options on one easy handle, keeping the first failure.
struct CurlOptions {
  const CurlApi& api;
  CURL* easy;
  CURLcode rc = CURLE_OK;

  template <class Value>
  void set(CURLoption option, Value value) {
    CURLcode r = (api.curl_easy_setopt)(easy, option, value);
    if (rc == CURLE_OK) rc = r;
  }
};

// https only, no redirects, no proxy (unless the trust allows the environment's), HTTP/1.1
// over TLS 1.2 or later, a fresh connection and TLS session for every request, the size
// limit, and the callbacks.
void set_connection_options(CurlOptions& o, CurlCall& call) {
  // The headers may be newer than the libcurl that runs: the option follows the latter.
#if LIBCURL_VERSION_NUM >= 0x075500
  if (o.api.version_num >= 0x075500) {
    o.set(CURLOPT_PROTOCOLS_STR, "https");
    o.set(CURLOPT_REDIR_PROTOCOLS_STR, "https");
  } else
#endif
  {
    // Deprecated in 7.85.0 for the _STR forms, and the only way before.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    o.set(CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTPS));
    o.set(CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTPS));
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  }
  o.set(CURLOPT_FOLLOWLOCATION, 0L);
  if (call.trust == nullptr || !call.trust->use_proxy) {
    o.set(CURLOPT_PROXY, "");
    o.set(CURLOPT_NOPROXY, "*");
  }
  o.set(CURLOPT_NOSIGNAL, 1L);
  o.set(CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  o.set(CURLOPT_FORBID_REUSE, 1L);
  o.set(CURLOPT_FRESH_CONNECT, 1L);
  o.set(CURLOPT_SSL_SESSIONID_CACHE, 0L);
  o.set(CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  o.set(CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(MI_MAX_RESPONSE_BYTES));
  void* data = static_cast<void*>(&call);
  o.set(CURLOPT_HEADERFUNCTION, &CurlCall::on_header);
  o.set(CURLOPT_HEADERDATA, data);
  o.set(CURLOPT_WRITEFUNCTION, &CurlCall::on_body);
  o.set(CURLOPT_WRITEDATA, data);
  o.set(CURLOPT_NOPROGRESS, 0L);
  o.set(CURLOPT_XFERINFOFUNCTION, &CurlCall::on_progress);
  o.set(CURLOPT_XFERINFODATA, data);
  o.set(CURLOPT_PREREQFUNCTION, &CurlCall::on_prereq);
  o.set(CURLOPT_PREREQDATA, data);
}

// URL, headers, method and body.
void set_request_options(CurlOptions& o, const HttpRequest& request, curl_slist* headers) {
  o.set(CURLOPT_URL, request.url.c_str());
  o.set(CURLOPT_HTTPHEADER, headers);
  if (iequals(request.method, "GET") && request.body.empty()) {
    o.set(CURLOPT_HTTPGET, 1L);
  } else if (iequals(request.method, "HEAD") && request.body.empty()) {
    o.set(CURLOPT_NOBODY, 1L);
  } else {
    if (iequals(request.method, "POST") || !request.body.empty()) {
      o.set(CURLOPT_POST, 1L);
      o.set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
      o.set(CURLOPT_POSTFIELDS, request.body.c_str());
    }
    if (!iequals(request.method, "POST")) o.set(CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
}

// Without a pin, which anchors libcurl's own check trusts: the token proxy's CA alone (the
// system's directory turned off too), or the system's plus mi::WithCAFile's: the
// transport's store, else libcurl's loading plus on_ssl_ctx_anchors.
void set_trust_options(CurlOptions& o, CurlCall& call) {
  const CurlTrust& trust = *call.trust;
  if (!trust.only_ca_file.empty() || !trust.only_ca_pem.empty()) {
    if (!trust.only_ca_file.empty()) {
      o.set(CURLOPT_CAINFO, trust.only_ca_file.c_str());
    } else {
      curl_blob blob{const_cast<char*>(trust.only_ca_pem.data()), trust.only_ca_pem.size(), CURL_BLOB_COPY};
      o.set(CURLOPT_CAINFO_BLOB, &blob);
    }
    o.set(CURLOPT_CAPATH, static_cast<const char*>(nullptr));
  } else if (call.store != nullptr) {
    // The transport's store has the system's anchors and WithCAFile's: libcurl loads
    // nothing (CAINFO and CAPATH unset), on_ssl_ctx_store installs it.
    o.set(CURLOPT_CAINFO, static_cast<const char*>(nullptr));
    o.set(CURLOPT_CAPATH, static_cast<const char*>(nullptr));
    o.set(CURLOPT_SSL_CTX_FUNCTION, &CurlCall::on_ssl_ctx_store);
    o.set(CURLOPT_SSL_CTX_DATA, static_cast<void*>(&call));
  } else if (!trust.extra_ca_file.empty()) {
#if LIBCURL_VERSION_NUM >= 0x075700
    // A cached store would be shared beyond this transfer: the anchors go into a fresh one.
    if (o.api.version_num >= 0x075700) o.set(CURLOPT_CA_CACHE_TIMEOUT, 0L);
#endif
    o.set(CURLOPT_SSL_CTX_FUNCTION, &CurlCall::on_ssl_ctx_anchors);
    o.set(CURLOPT_SSL_CTX_DATA, static_cast<void*>(&call));
  }
}

// Time limits from the context and the connect timeout; the certificate check: libcurl's
// own without a pin (with the trust's anchors), only the pin (on_ssl_ctx) with one.
void set_check_options(CurlOptions& o, const Context& ctx, Millis connect_timeout, CurlCall& call) {
  Millis left = time_left(ctx, Millis::max());
  Millis connect = connect_timeout > Millis(0) && connect_timeout < left ? connect_timeout : left;
  o.set(CURLOPT_CONNECTTIMEOUT_MS, curl_millis(connect));
  if (left != Millis::max()) o.set(CURLOPT_TIMEOUT_MS, curl_millis(left));
  if (call.pin.empty()) {
    o.set(CURLOPT_SSL_VERIFYPEER, 1L);
    o.set(CURLOPT_SSL_VERIFYHOST, 2L);
    if (call.trust != nullptr) set_trust_options(o, call);
  } else {
    o.set(CURLOPT_SSL_VERIFYPEER, 0L);
    o.set(CURLOPT_SSL_VERIFYHOST, 0L);
    o.set(CURLOPT_SSL_CTX_FUNCTION, &CurlCall::on_ssl_ctx);
    o.set(CURLOPT_SSL_CTX_DATA, static_cast<void*>(&call));
  }
}

// Every option of one request; a libcurl that refuses one fails the request.
Result<bool> configure(const CurlApi& api, CURL* easy, const HttpRequest& request, curl_slist* headers,
                       curl_slist* connect_to, CurlCall& call, char* errbuf, Millis connect_timeout) {
  CurlOptions o{api, easy};
  o.set(CURLOPT_ERRORBUFFER, errbuf);
  set_connection_options(o, call);
  set_request_options(o, request, headers);
  if (connect_to != nullptr) o.set(CURLOPT_CONNECT_TO, connect_to);
  set_check_options(o, *call.ctx, connect_timeout, call);
  if (o.rc == CURLE_OK) return true;
  if (!call.pin.empty() && (o.rc == CURLE_NOT_BUILT_IN || o.rc == CURLE_UNKNOWN_OPTION))
    return failure<bool>(Errc::tls, {"this libcurl cannot install the certificate check Service Fabric needs; "
                                     "use libcurl built with OpenSSL"});
  if (call.trust != nullptr && (o.rc == CURLE_NOT_BUILT_IN || o.rc == CURLE_UNKNOWN_OPTION))
    return failure<bool>(Errc::tls, {"this libcurl cannot set the trust anchors this endpoint needs (",
                                     api.curl_easy_strerror(o.rc), "); use libcurl built with OpenSSL"});
  return failure<bool>(Errc::network, {"libcurl rejected an option: ", api.curl_easy_strerror(o.rc)});
}

// Drives the transfer in short slices so a Cancel() or the deadline is seen promptly,
// whatever libcurl is blocked on (connect, handshake, response). Returns the transfer's
// code; an error when libcurl fails or the context stops first.
Result<CURLcode> drive(const CurlApi& api, CURLM* multi, CURL* easy, CurlCall& call) {
  for (;;) {
    int running = 0;
    CURLMcode mc = api.curl_multi_perform(multi, &running);
    if (mc != CURLM_OK) return failure<CURLcode>(Errc::network, {"libcurl failed: ", api.curl_multi_strerror(mc)});
    int queued = 0;
    bool done = false;
    CURLcode result = CURLE_OK;
    while (CURLMsg* msg = api.curl_multi_info_read(multi, &queued)) {
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
        result = msg->data.result;
        done = true;
      }
    }
    if (done) return result;
    if (running == 0) return failure<CURLcode>(Errc::network, {"libcurl stopped the request without a result"});
    ContextStatus status = context_status(*call.ctx);
    if (status != ContextStatus::ok) {
      call.stopped = status;
      return stopped<CURLcode>(status, {"waiting for the HTTPS endpoint"});
    }
    int wait_ms = static_cast<int>(time_left(*call.ctx, kContextSlice).count());
    if (wait_ms < 1) wait_ms = 1;
    mc = api.curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr);
    if (mc != CURLM_OK) return failure<CURLcode>(Errc::network, {"libcurl failed: ", api.curl_multi_strerror(mc)});
  }
}

// The response of a transfer that completed: confirmed by the pin when there is one, with
// the status libcurl read.
Result<HttpResponse> finish(const CurlApi& api, CURL* easy, CurlCall& call) {
  if (!call.pin.empty() && !(call.pin_installed && call.pin_matched))
    return failure<HttpResponse>(Errc::tls, {"the TLS connection to the Service Fabric endpoint was not verified "
                                             "against IDENTITY_SERVER_THUMBPRINT"});
  long code = 0;
  (api.curl_easy_getinfo)(easy, CURLINFO_RESPONSE_CODE, &code);
  if (code >= 100 && code <= 999) call.response.status = static_cast<int>(code);
  if (call.response.status < 100 || call.response.status > 999)
    return failure<HttpResponse>(Errc::invalid_response, {"the HTTPS endpoint's response has no valid status line"});
  return std::move(call.response);
}

}  // namespace curl_impl

class CurlTransport final : public HttpClient {
 public:
  // pinned_sha1: 20 bytes (the normalised IDENTITY_SERVER_THUMBPRINT), or empty
  // for "no pin". A request's own pinned_sha1 (40 hex digits) is checked as well:
  // with neither, libcurl's normal verification applies; with both, they must agree.
  // `trust` says how a request without a pin is checked (CurlTrust).
  // libcurl is not touched (nor loaded) before the first request.
  CurlTransport(std::string pinned_sha1, Millis connect_timeout, CurlTrust trust = CurlTrust())
      : pin_(std::move(pinned_sha1)), connect_timeout_(connect_timeout), trust_(std::move(trust)) {}
  Result<HttpResponse> Do(const Context& ctx, const HttpRequest& request) override;
  bool PinsServerCertificate() const noexcept override { return true; }

 private:
  std::string pin_;
  Millis connect_timeout_;
  CurlTrust trust_;
  curl_impl::CurlTrustStore trust_store_;  // for chain-validated requests outside the token proxy
};

namespace curl_impl {

// With a TLS server name of its own (the AKS token proxy), the request's URL names it, so
// that libcurl sends it and checks the certificate against it, while CURLOPT_CONNECT_TO
// ("name:port:address:port") reaches the address the URL had. The Host header keeps that
// address, as the proxy expects.
Result<bool> route_to_server_name(const CurlApi& api, const std::string& sni_name, HttpRequest& request,
                                  CurlHeaders& connect_to) {
  Result<Url> url = parse_url(request.url);
  if (!url) return url.error();
  const bool ipv6 = url->host.find(':') != std::string::npos;
  const std::string line =
      cat({sni_name, ":", num(url->port), ":", ipv6 ? "[" : "", url->host, ipv6 ? "]" : "", ":", num(url->port)});
  add_pair(request.headers, "Host", url->host_header());
  url->host = sni_name;
  request.url = url->str();
  connect_to.reset(api.curl_slist_append(nullptr, line.c_str()));
  if (!connect_to) return failure<bool>(Errc::network, {"libcurl could not store the connection route (out of memory?)"});
  return true;
}

}  // namespace curl_impl

Result<HttpResponse> CurlTransport::Do(const Context& ctx, const HttpRequest& request) {
  Result<std::string> pin = curl_impl::request_pin(pin_, request);
  if (!pin) return pin.error();
  const curl_impl::CurlApi& api = curl_impl::curl_api();
  if (!api.problem.empty()) return failure<HttpResponse>(Errc::tls, {api.problem});
  if (api.init != CURLE_OK)
    return failure<HttpResponse>(Errc::network, {"libcurl could not be initialised (curl_global_init: ",
                                                 api.curl_easy_strerror(api.init), ")"});
  if (!pin->empty() && !api.pinning_problem.empty()) return failure<HttpResponse>(Errc::tls, {api.pinning_problem});
  // Extra anchors go into libcurl's OpenSSL store, so they need what pinning needs.
  if (pin->empty() && !trust_.extra_ca_file.empty() && !api.pinning_problem.empty())
    return failure<HttpResponse>(Errc::tls, {"mi::WithCAFile needs libcurl's OpenSSL backend: ", api.pinning_problem});
  Result<bool> valid = curl_impl::check_request(request);
  if (!valid) return valid.error();
  ContextStatus status = context_status(ctx);
  if (status != ContextStatus::ok) return stopped<HttpResponse>(status, {"starting the HTTPS request"});

  curl_impl::SigpipeGuard sigpipe_guard;  // declared first, destroyed last: after every handle is cleaned up
  curl_impl::CurlCall call;
  call.api = &api;
  call.ctx = &ctx;
  call.pin = *pin;
  call.trust = pin->empty() ? &trust_ : nullptr;
  // Declared before the handles, so they outlive the transfer that points at them.
  curl_impl::CurlStoreRef store(nullptr, curl_impl::CurlStoreDeleter{});
  HttpRequest routed;
  const HttpRequest* sent = &request;
  curl_impl::CurlHeaders connect_to(nullptr, curl_impl::CurlSlistDeleter{api.curl_slist_free_all});
  if (call.trust != nullptr && !trust_.sni_name.empty()) {
    routed = request;
    Result<bool> route = curl_impl::route_to_server_name(api, trust_.sni_name, routed, connect_to);
    if (!route) return route.error();
    sent = &routed;
  }
  std::unique_ptr<CURL, curl_impl::CurlEasyDeleter> easy(api.curl_easy_init(),
                                                         curl_impl::CurlEasyDeleter{api.curl_easy_cleanup});
  std::unique_ptr<CURLM, curl_impl::CurlMultiDeleter> multi(api.curl_multi_init(),
                                                            curl_impl::CurlMultiDeleter{api.curl_multi_cleanup});
  if (!easy || !multi)
    return failure<HttpResponse>(Errc::network, {"libcurl could not create a request handle (out of memory?)"});
  if (call.trust != nullptr && trust_.only_ca_file.empty() && trust_.only_ca_pem.empty() &&
      api.pinning_problem.empty()) {
    Result<curl_impl::CurlStoreRef> shared = trust_store_.get(api, trust_, easy.get(), std::chrono::steady_clock::now());
    if (!shared) return shared.error();
    store = std::move(*shared);
    call.store = store.get();
  }
  Result<curl_impl::CurlHeaders> headers = curl_impl::curl_headers(api, *sent);
  if (!headers) return headers.error();
  char errbuf[CURL_ERROR_SIZE];
  errbuf[0] = '\0';
  Result<bool> configured = curl_impl::configure(api, easy.get(), *sent, headers->get(), connect_to.get(), call,
                                                 errbuf, connect_timeout_);
  if (!configured) return configured.error();

  curl_impl::CurlAttachment attachment;
  attachment.remove = api.curl_multi_remove_handle;
  if (api.curl_multi_add_handle(multi.get(), easy.get()) != CURLM_OK)
    return failure<HttpResponse>(Errc::network, {"libcurl could not start the request"});
  attachment.multi = multi.get();
  attachment.easy = easy.get();
  Result<CURLcode> result = curl_impl::drive(api, multi.get(), easy.get(), call);
  if (!result) return result.error();
  if (*result != CURLE_OK) return curl_impl::curl_failure(*result, call, ctx, errbuf);
  return curl_impl::finish(api, easy.get(), call);
}

#endif  // MI_DETAIL_CURL

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/response.hpp ----
// Token and error bodies (docs/protocol.md §5). Field types vary between sources: numbers
// arrive as JSON numbers or numeric strings, expires_on as epoch seconds or as
// one of several date forms. Error messages never quote the body or the token.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// A token as the endpoint issued it: what the cache keeps (entries and per-thread copies)
// and what AuthResult's token fields are filled from (set_token).
struct Token {
  std::string access_token;
  std::string token_type;  // "Bearer" when absent or empty
  SysClock::time_point expires_on;
  SysClock::time_point refresh_on;  // SysClock::time_point() (epoch) when none
};

// AuthResult's token fields, from a Token copied or moved: the one place the two meet.
template <class T>
void set_token(AuthResult& out, T&& token) {
  out.access_token = std::forward<T>(token).access_token;
  out.token_type = std::forward<T>(token).token_type;
  out.expires_on = token.expires_on;
  out.refresh_on = token.refresh_on;
}

// What the endpoint echoes about the request, each "" if absent or not a string. Only
// Azure Arc's identity fields are checked (arc_confirms_identity); none is cached.
struct TokenEcho {
  std::string resource;
  std::string client_id, object_id, msi_res_id, mi_res_id;
};

struct TokenResponse {
  Token token;
  TokenEcho echo;
};

struct ErrorBody {
  std::string code, description, correlation_id;
  bool json = false;  // the body was a JSON document (of any shape)
};

// The latest instant (in seconds since the epoch) accepted anywhere: 9999-12-31T23:59:59Z,
// or less where SysClock cannot represent that (libstdc++'s nanoseconds end in 2262).
constexpr int64_t kMaxEpochSeconds = kClockMaxSeconds - 1 < 253402300799 ? kClockMaxSeconds - 1 : 253402300799;

// A non-negative decimal in JSON number form (leading zeros tolerated, as numeric strings
// carry them), fraction and exponent allowed, truncated toward zero to whole seconds.
// False when malformed, negative, or above kMaxEpochSeconds.
bool parse_seconds_text(std::string_view s, int64_t& out) noexcept {
  size_t i = 0, n = s.size();
  auto digit = [&](size_t k) noexcept { return k < n && s[k] >= '0' && s[k] <= '9'; };
  size_t int_begin = i;
  while (digit(i)) ++i;
  size_t int_end = i;
  if (int_end == int_begin) return false;
  size_t frac_begin = i, frac_end = i;
  if (i < n && s[i] == '.') {
    frac_begin = ++i;
    while (digit(i)) ++i;
    frac_end = i;
    if (frac_end == frac_begin) return false;
  }
  int64_t exponent = 0;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool negative = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (!digit(i)) return false;
    while (digit(i)) {
      if (exponent < 100000) exponent = exponent * 10 + (s[i] - '0');
      ++i;
    }
    if (negative) exponent = -exponent;
  }
  if (i != n) return false;
  // The digits int||frac with the decimal point after `point` of them.
  const int64_t int_len = static_cast<int64_t>(int_end - int_begin);
  const int64_t frac_len = static_cast<int64_t>(frac_end - frac_begin);
  const int64_t point = int_len + exponent;
  int64_t value = 0;
  for (int64_t k = 0; k < point; ++k) {
    int d = 0;
    if (k < int_len) d = s[int_begin + static_cast<size_t>(k)] - '0';
    else if (k < int_len + frac_len) d = s[frac_begin + static_cast<size_t>(k - int_len)] - '0';
    else if (value == 0) break;  // only zeros remain to be appended to zero
    value = value * 10 + d;
    if (value > kMaxEpochSeconds) return false;
  }
  out = value;
  return true;
}

// Whether `text` can go into an HTTP header as one token: no control character (C0, DEL,
// or C1 as UTF-8) and no space. A CR LF in a token would let the endpoint add headers to
// whatever request the caller puts it in.
bool header_safe(std::string_view text) noexcept {
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c <= 0x20 || c == 0x7f) return false;
    if (c == 0xC2 && i + 1 < text.size()) {
      unsigned char next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9F) return false;
    }
  }
  return true;
}

// Seconds from a JSON number or a numeric string.
bool json_seconds(const JsonValue* v, int64_t& out) noexcept {
  if (v == nullptr || !(v->is_number() || v->is_string())) return false;
  return parse_seconds_text(v->text, out);
}

namespace date_parse {

struct Cursor {
  std::string_view s;
  size_t i = 0;
  bool done() const noexcept { return i == s.size(); }
  bool peek(char c) const noexcept { return i < s.size() && s[i] == c; }
  bool eat(char c) noexcept {
    if (!peek(c)) return false;
    ++i;
    return true;
  }
  bool is_digit() const noexcept { return i < s.size() && s[i] >= '0' && s[i] <= '9'; }
  // Exactly n digits.
  bool digits(int n, int& v) noexcept {
    v = 0;
    for (int k = 0; k < n; ++k) {
      if (!is_digit()) return false;
      v = v * 10 + (s[i++] - '0');
    }
    return true;
  }
  // One or two digits.
  bool digits12(int& v) noexcept {
    if (!digits(1, v)) return false;
    if (is_digit()) v = v * 10 + (s[i++] - '0');
    return true;
  }
};

inline bool leap_year(int y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

inline int days_in_month(int y, int m) noexcept {
  static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap_year(y) ? 29 : days[m - 1];
}

// A UTC offset: ('+'|'-') hh [':'] mm, in seconds east of UTC.
bool offset(Cursor& c, int64_t& seconds) noexcept {
  int sign;
  if (c.eat('+')) sign = 1;
  else if (c.eat('-')) sign = -1;
  else return false;
  int hh, mm;
  if (!c.digits(2, hh)) return false;
  c.eat(':');
  if (!c.digits(2, mm)) return false;
  if (hh > 23 || mm > 59) return false;
  seconds = sign * (static_cast<int64_t>(hh) * 3600 + static_cast<int64_t>(mm) * 60);
  return true;
}

bool combine(int y, int mo, int d, int h, int mi, int sec, int64_t offset_seconds, int64_t& out) noexcept {
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return false;
  if (h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59) return false;
  int64_t t = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 +
              static_cast<int64_t>(h) * 3600 + static_cast<int64_t>(mi) * 60 + sec - offset_seconds;
  if (t < 0 || t > kMaxEpochSeconds) return false;
  out = t;
  return true;
}

// yyyy-MM-dd('T'|' ')HH:mm:ss[.fraction][Z | [' ']±hh[:]mm]; no zone means UTC.
bool iso(std::string_view s, int64_t& out) noexcept {
  Cursor c{s};
  int y, mo, d, h, mi, sec;
  if (!c.digits(4, y) || !c.eat('-') || !c.digits(2, mo) || !c.eat('-') || !c.digits(2, d)) return false;
  if (!(c.eat('T') || c.eat('t') || c.eat(' '))) return false;
  if (!c.digits(2, h) || !c.eat(':') || !c.digits(2, mi) || !c.eat(':') || !c.digits(2, sec)) return false;
  if (c.eat('.')) {
    if (!c.is_digit()) return false;
    while (c.is_digit()) ++c.i;  // truncated
  }
  int64_t zone = 0;
  if (!c.done()) {
    if (!(c.eat('Z') || c.eat('z'))) {
      c.eat(' ');
      if (!offset(c, zone)) return false;
    }
  }
  return c.done() && combine(y, mo, d, h, mi, sec, zone, out);
}

// M/d/yyyy h:mm:ss[ AM| PM][ ±hh:mm] (.NET's general date/time pattern, en-US).
bool us(std::string_view s, int64_t& out) noexcept {
  Cursor c{s};
  int mo, d, y, h, mi, sec;
  if (!c.digits12(mo) || !c.eat('/') || !c.digits12(d) || !c.eat('/') || !c.digits(4, y)) return false;
  if (!c.eat(' ')) return false;
  if (!c.digits12(h) || !c.eat(':') || !c.digits(2, mi) || !c.eat(':') || !c.digits(2, sec)) return false;
  if (c.s.size() - c.i >= 3 && c.s[c.i] == ' ') {
    std::string_view marker = c.s.substr(c.i + 1, 2);
    bool am = iequals(marker, "AM"), pm = iequals(marker, "PM");
    if (am || pm) {
      c.i += 3;
      if (h < 1 || h > 12) return false;
      if (am) h = h == 12 ? 0 : h;
      else h = h == 12 ? 12 : h + 12;
    }
  }
  int64_t zone = 0;
  if (!c.done()) {
    if (!c.eat(' ') || !offset(c, zone)) return false;
  }
  return c.done() && combine(y, mo, d, h, mi, sec, zone, out);
}

}  // namespace date_parse

// One expires_on value given as a string (numeric strings included) -> time point;
// false if unparseable. Forms: epoch seconds; ISO 8601 / RFC 3339 with or without a
// fraction and a zone; M/d/yyyy h:mm:ss with optional AM/PM and offset; yyyy-MM-dd HH:mm:ss.
bool parse_expires_on(std::string_view text, SysClock::time_point& out) {
  int64_t seconds = 0;
  return (parse_seconds_text(text, seconds) || date_parse::iso(text, seconds) || date_parse::us(text, seconds)) &&
         from_unix_seconds(seconds, out);
}

// The members of a token response that are read; nothing else of the body is built.
bool token_member(int depth, std::string_view name) noexcept {
  static const char* const names[] = {"access_token", "token_type", "resource",   "expires_on", "expires_in",
                                      "refresh_in",   "client_id",  "object_id", "msi_res_id", "mi_res_id"};
  if (depth != 0) return false;
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

MI_DETAIL_NOINLINE Result<TokenResponse> parse_token_response(std::string_view body, SysClock::time_point now) {
  if (trim(body).empty())
    return make_error(Errc::invalid_response, "the token response is empty (a success status with no body)");
  JsonValue root;
  if (JsonStatus status = parse_json(body, &token_member, root); !status)
    return make_error(Errc::invalid_response, cat({"the token response is not valid JSON (at byte ",
                                                   num(static_cast<long long>(status.offset)), "): ", status.error}));
  if (!root.is_object()) return make_error(Errc::invalid_response, "the token response is not a JSON object");

  TokenResponse response;
  Token& out = response.token;
  const JsonValue* token = root.find("access_token");
  if (token == nullptr) return make_error(Errc::invalid_response, "the token response has no access_token");
  if (!token->is_string())
    return make_error(Errc::invalid_response, "the token response's access_token is not a string");
  if (token->text.empty()) return make_error(Errc::invalid_response, "the token response has an empty access_token");
  if (!header_safe(token->text))
    return make_error(Errc::invalid_response,
                      "the token response's access_token contains a control character or a space, so it cannot go "
                      "into an Authorization header");

  auto string_field = [&root](std::string_view key) -> std::string {
    const JsonValue* v = root.find(key);
    return v != nullptr && v->is_string() ? v->text : std::string();
  };

  // Expiry: expires_on when present and parseable, else now + expires_in.
  bool have_expiry = false;
  if (const JsonValue* on = root.find("expires_on")) {
    int64_t seconds = 0;
    if (on->is_number() && parse_seconds_text(on->text, seconds) && from_unix_seconds(seconds, out.expires_on)) {
      have_expiry = true;
    } else if (on->is_string() && parse_expires_on(on->text, out.expires_on)) {
      have_expiry = true;
    }
  }
  if (!have_expiry) {
    int64_t seconds = 0;
    if (json_seconds(root.find("expires_in"), seconds) && seconds <= kMaxEpochSeconds - to_unix_seconds(now)) {
      out.expires_on = now + std::chrono::seconds(seconds);
      have_expiry = true;
    }
  }
  if (!have_expiry)
    return make_error(Errc::invalid_response, "the token response has neither a usable expires_on nor expires_in");

  // Refresh: the server's refresh_in when it falls inside the lifetime, else half a long lifetime.
  const SysClock::duration lifetime = out.expires_on - now;
  int64_t refresh_in = 0;
  if (json_seconds(root.find("refresh_in"), refresh_in) && refresh_in > 0 &&
      std::chrono::seconds(refresh_in) < lifetime) {
    out.refresh_on = now + std::chrono::seconds(refresh_in);
  } else if (lifetime > std::chrono::hours(2)) {
    out.refresh_on = now + lifetime / 2;
  }

  out.access_token = token->text;
  out.token_type = string_field("token_type");
  if (out.token_type.empty()) out.token_type = "Bearer";
  if (!header_safe(out.token_type))
    return make_error(Errc::invalid_response,
                      "the token response's token_type contains a control character or a space, so it cannot go "
                      "into an Authorization header");
  TokenEcho& echo = response.echo;
  echo.resource = string_field("resource");
  echo.client_id = string_field("client_id");
  echo.object_id = string_field("object_id");
  echo.msi_res_id = string_field("msi_res_id");
  echo.mi_res_id = string_field("mi_res_id");
  return response;
}

// Best effort on any body: flat {"error", "error_description", "correlation_id"}, nested
// {"error": {"code", "message", "correlationId"}}, or App Service's {"message", "correlationId"}.
// Anything else (not JSON, HTML, empty, not an object) gives empty fields.
MI_DETAIL_COLD ErrorBody parse_error_body(std::string_view body) {
  ErrorBody out;
  JsonValue root;
  // Only the members read below are built: the root's, and those of a nested "error" object.
  JsonKeep keep = [](int depth, std::string_view name) noexcept {
    if (depth == 0)
      return name == "error" || name == "error_description" || name == "message" || name == "correlation_id" ||
             name == "correlationId";
    return depth == 1 && (name == "code" || name == "message" || name == "correlationId");
  };
  if (!parse_json(body, keep, root)) return out;
  out.json = true;
  if (!root.is_object()) return out;
  auto text = [](const JsonValue* v) -> std::string { return v != nullptr && v->is_string() ? v->text : std::string(); };
  auto code = [](const JsonValue* v) -> std::string {
    return v != nullptr && (v->is_string() || v->is_number()) ? v->text : std::string();
  };
  const JsonValue* error = root.find("error");
  if (error != nullptr && error->is_object()) {
    out.code = code(error->find("code"));
    out.description = text(error->find("message"));
    out.correlation_id = text(error->find("correlationId"));
  } else {
    out.code = text(error);
    out.description = text(root.find("error_description"));
  }
  if (out.description.empty()) out.description = text(root.find("message"));
  if (out.correlation_id.empty()) out.correlation_id = text(root.find("correlation_id"));
  if (out.correlation_id.empty()) out.correlation_id = text(root.find("correlationId"));
  return out;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/sources.hpp ----
// The seven sources. Each is described once, by its entry in kSources below: how it is
// detected (docs/protocol.md §1), its request (§2), its retry class (§8), its transport's
// TLS mode (§4) and the hints its errors carry. Where a source's protocol truly differs
// from the table, its entry names one function, defined in the source's section further
// down: Azure ML's always-sent clientid, Service Fabric's revocation hash and
// capabilities (and its pinned endpoint, fixed at New), the Azure Arc challenge (§3),
// workload identity's inputs fixed at New and its client-credentials form (§12).
// Adding a source is one entry, plus such a function where its protocol needs one.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr const char* kUserAgent = "managed-identity-cpp/" MI_VERSION_STRING;
constexpr const char* kImdsEndpoint = "http://169.254.169.254/metadata/identity/oauth2/token";
constexpr const char* kImdsPath = "/metadata/identity/oauth2/token";
constexpr const char* kArcDefaultEndpoint = "http://127.0.0.1:40342/metadata/identity/oauth2/token";
constexpr size_t kArcMaxKeyBytes = 4096;
constexpr const char* kEntraAuthority = "https://login.microsoftonline.com/";
constexpr size_t kMaxFederatedTokenBytes = 64 * 1024;

// ---- what a source is ------------------------------------------------------------------

// How the transport secures the connection (docs/protocol.md §4, §12).
enum class TlsMode {
  plain,            // http:// through the built-in socket transport
  pinned,           // https:// whose leaf certificate must match a thumbprint fixed at New
  chain_validated,  // https:// whose chain and host name are checked against the trust store
};

// A retry class (docs/protocol.md §8, §12). Every class retries transport errors, 408 and 429.
struct RetryClass {
  bool every_5xx = false;      // 500-599; otherwise 500, 502, 503 and 504 only
  bool exponential = false;    // waits 1 s, 2 s, 4 s, ...; otherwise 1 s each
  bool imds_updating = false;  // 410 ("IMDS is being updated"): up to 7 retries, 10 s apart
  bool not_found = true;       // 404: a managed identity still being assigned (never so for Entra ID)
};
constexpr RetryClass kImdsRetries{true, true, true, true};
constexpr RetryClass kStandardRetries{};
constexpr RetryClass kEntraRetries{false, true, false, false};

struct Header {
  const char* name = nullptr;
  const char* value = nullptr;
};

// Up to N names or headers in a table entry; unused slots stay null.
template <class T, size_t N>
struct Slots {
  T at[N]{};
  const T* begin() const { return at; }
  const T* end() const { return at + N; }
};
template <class T>
using Three = Slots<T, 3>;

}  // namespace
struct WorkloadSetup;  // below, outside the unnamed namespace: ClientState holds one
namespace {  // internal linkage: nothing below is visible outside this translation unit

// What one acquisition adds to the request the table describes.
struct RequestExtras {
  std::string_view request_id;                             // for the source's request_id_header
  std::string_view claims;                                 // non-empty: a claims request (§7)
  const std::string* cached_token = nullptr;               // the token cached for the key, if any
  const std::vector<std::string>* capabilities = nullptr;  // the client's, not a copy
  const WorkloadSetup* workload = nullptr;                 // workload identity: its inputs fixed at New
};

struct BuiltRequest {
  HttpRequest request;
  std::vector<std::string> secrets;  // values that must never appear in a message or log
};

}  // namespace

// A pinned source's endpoint and the thumbprint its certificate must match, fixed at New.
struct PinnedEndpoint {
  Url url;
  std::string pinned_sha1;  // 40 upper-case hex digits (HttpRequest::pinned_sha1)
  std::string sha1_bytes;   // the same 20 bytes raw, for the built-in transport
};

// Workload identity's inputs, read and checked at New (docs/protocol.md §12). The token
// file's contents are not among them: kubelet rotates the file, so it is read per request.
struct WorkloadSetup {
  std::string client_id;   // the user-assigned client ID, else AZURE_CLIENT_ID
  std::string token_file;  // AZURE_FEDERATED_TOKEN_FILE
  Url url;                 // {authority}{tenant}/oauth2/v2.0/token, through the token proxy if any
  // The AKS token proxy (identity binding): its TLS trusts only its own CA, given as a
  // file or as PEM text, and the certificate must name sni_name when that is set.
  bool token_proxy = false;
  std::string proxy_ca_file, proxy_ca_pem, sni_name;
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// The functions entries name; each is defined in its source's section below.
bool arc_agent_installed();
void azure_ml_parameters(const ID& id, const RequestExtras& extras, StringPairs& params);
void service_fabric_parameters(const ID& id, const RequestExtras& extras, StringPairs& params);
Result<bool> arc_answer_challenge(const HttpResponse& leg1, BuiltRequest& built);
Result<bool> arc_confirm_identity(const ID& id, const TokenEcho& echo);
struct SourceSpec;
Result<WorkloadSetup> workload_setup(const SourceSpec& spec, const ID& id);
Result<bool> workload_request(std::string_view resource, const RequestExtras& extras, BuiltRequest& out);
const char* entra_hint(const ErrorBody& body);

struct SourceSpec {
  Source source = Source::DefaultToIMDS;
  const char* label = nullptr;  // the source's name in messages

  // Detection (§1): every variable named here is set and not empty, or detect_also() says
  // so. An entry with neither matches always (the fallback, so it comes last).
  Three<const char*> detect_variables;
  bool (*detect_also)() = nullptr;

  // The request (§2).
  const char* method = "GET";
  const char* endpoint_variable = nullptr;  // where the endpoint URL comes from, named in errors
  const char* endpoint_default = nullptr;   // used when that variable is empty
  const char* endpoint_base_path = nullptr;  // set: the variable is a base URL this path is appended to
  const char* scheme = "http";              // the only scheme the endpoint may have
  const char* api_version = nullptr;        // null: none sent
  bool form_body = false;                   // the parameters go in a form body, not the query
  // The parameter carrying a user-assigned ID, per kind; null: the kind is refused, for
  // the reason in id_refusal (at New, unsupported_identity).
  const char* client_id_parameter = nullptr;
  const char* object_id_parameter = nullptr;
  const char* resource_id_parameter = nullptr;
  const char* id_refusal = nullptr;
  const char* secret_variable = nullptr;  // read at every request, sent in secret_header
  const char* secret_header = nullptr;
  Slots<Header, 4> headers;                 // fixed headers, after User-Agent and the secret
  const char* request_id_header = nullptr;  // a new UUID per acquisition, also the errors' correlation id
  void (*add_parameters)(const ID&, const RequestExtras&, StringPairs&) = nullptr;
  // Set: the source's inputs are read and checked at New (their failure fails New), and the
  // request's URL and parameters come from own_request instead of the fields above (which
  // then only describe the source, its headers and its refusals).
  Result<WorkloadSetup> (*setup)(const SourceSpec&, const ID&) = nullptr;
  Result<bool> (*own_request)(std::string_view resource, const RequestExtras&, BuiltRequest&) = nullptr;

  // Transport and retries (§4, §8).
  TlsMode tls = TlsMode::plain;
  const char* pin_variable = nullptr;  // TlsMode::pinned: the thumbprint
  RetryClass retry = kStandardRetries;

  // After the first answer: true to send the request again (Azure Arc's second leg), false
  // when that answer is final. After a token: an error if it is not the one asked for.
  Result<bool> (*answer_challenge)(const HttpResponse&, BuiltRequest&) = nullptr;
  Result<bool> (*confirm_token)(const ID&, const TokenEcho&) = nullptr;

  // Hints in http_status messages; null: the generic hint.
  const char* hint_400 = nullptr;
  const char* hint_401_403 = nullptr;
  const char* hint_not_json = nullptr;  // a 403, 502, 503 or 504 whose body is not JSON
  const char* (*hint_for_body)(const ErrorBody&) = nullptr;  // ahead of the above, when it has one
};

// AKS workload identity: a projected service-account token, exchanged with Microsoft Entra
// ID for an access token (docs/protocol.md §12). First, so that a pod that asked for it
// never silently gets the node's identity instead.
constexpr SourceSpec workload_identity_spec() {
  SourceSpec s;
  s.source = Source::WorkloadIdentity;
  s.label = "Microsoft Entra ID";
  s.detect_variables = {{"AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID"}};
  s.method = "POST";
  s.endpoint_variable = "AZURE_AUTHORITY_HOST";
  s.endpoint_default = kEntraAuthority;
  s.scheme = "https";
  s.form_body = true;
  s.client_id_parameter = "client_id";
  s.id_refusal = "workload identity names the application by its client ID; use mi::UserAssignedClientID(), or "
                 "mi::SystemAssigned() for AZURE_CLIENT_ID";
  s.headers = {{{"Accept", "application/json"},
                {"x-client-SKU", "managed-identity-cpp"},
                {"x-client-Ver", MI_VERSION_STRING},
                {"return-client-request-id", "true"}}};
  s.request_id_header = "client-request-id";
  s.setup = workload_setup;
  s.own_request = workload_request;
  s.tls = TlsMode::chain_validated;
  s.retry = kEntraRetries;
  s.hint_400 = "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the application's federated identity credential";
  s.hint_401_403 = "Microsoft Entra ID refused the service-account token; check the application's federated "
                   "identity credential (issuer and subject) and AZURE_FEDERATED_TOKEN_FILE";
  s.hint_for_body = entra_hint;
  return s;
}

// Service Fabric: IDENTITY_ENDPOINT and IDENTITY_HEADER, with a certificate thumbprint.
constexpr SourceSpec service_fabric_spec() {
  SourceSpec s;
  s.source = Source::ServiceFabric;
  s.label = "Service Fabric";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT"}};
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.scheme = "https";
  s.api_version = "2019-07-01-preview";
  s.id_refusal = "Service Fabric does not accept a user-assigned identity in the request: the identity is set by "
                 "the cluster's resource configuration (https://aka.ms/servicefabricmi); use mi::SystemAssigned()";
  s.secret_variable = "IDENTITY_HEADER";
  s.secret_header = "Secret";
  s.headers = {{{"Accept", "application/json"}}};
  s.add_parameters = service_fabric_parameters;
  s.tls = TlsMode::pinned;
  s.pin_variable = "IDENTITY_SERVER_THUMBPRINT";
  s.hint_401_403 = "the endpoint refused IDENTITY_HEADER; restart the app so it gets a fresh one";
  return s;
}

// App Service and Functions: IDENTITY_ENDPOINT and IDENTITY_HEADER.
constexpr SourceSpec app_service_spec() {
  SourceSpec s;
  s.source = Source::AppService;
  s.label = "App Service";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}};
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.api_version = "2019-08-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "mi_res_id";  // not msi_res_id
  s.secret_variable = "IDENTITY_HEADER";
  s.secret_header = "X-IDENTITY-HEADER";
  s.hint_401_403 = "the endpoint refused IDENTITY_HEADER; restart the app so it gets a fresh one";
  return s;
}

// Azure ML compute: MSI_ENDPOINT and MSI_SECRET.
constexpr SourceSpec azure_ml_spec() {
  SourceSpec s;
  s.source = Source::AzureML;
  s.label = "Azure ML";
  s.detect_variables = {{"MSI_ENDPOINT", "MSI_SECRET"}};
  s.endpoint_variable = "MSI_ENDPOINT";
  s.api_version = "2017-09-01";
  s.client_id_parameter = "clientid";
  s.id_refusal = "Azure ML accepts a user-assigned identity by client ID only; use mi::UserAssignedClientID()";
  s.secret_variable = "MSI_SECRET";
  s.secret_header = "secret";
  s.add_parameters = azure_ml_parameters;
  s.hint_401_403 = "the endpoint refused MSI_SECRET; check the compute's identity setup";
  return s;
}

// Cloud Shell: MSI_ENDPOINT alone. The endpoint URL is sent as configured.
constexpr SourceSpec cloud_shell_spec() {
  SourceSpec s;
  s.source = Source::CloudShell;
  s.label = "Cloud Shell";
  s.detect_variables = {{"MSI_ENDPOINT"}};
  s.method = "POST";
  s.endpoint_variable = "MSI_ENDPOINT";
  s.form_body = true;
  s.id_refusal = "Cloud Shell supports only its system-assigned identity; use mi::SystemAssigned()";
  s.headers = {{{"Metadata", "true"}}};
  return s;
}

// Azure Arc: IDENTITY_ENDPOINT and IMDS_ENDPOINT, or the agent's himds installed.
constexpr SourceSpec azure_arc_spec() {
  SourceSpec s;
  s.source = Source::AzureArc;
  s.label = "Azure Arc";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IMDS_ENDPOINT"}};
  s.detect_also = arc_agent_installed;
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.endpoint_default = kArcDefaultEndpoint;
  s.api_version = "2020-06-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "msi_res_id";
  s.headers = {{{"Metadata", "true"}}};
  s.answer_challenge = arc_answer_challenge;
  s.confirm_token = arc_confirm_identity;
  return s;
}

// IMDS: Azure VMs, scale sets, AKS nodes; the fallback when nothing else is detected.
constexpr SourceSpec imds_spec() {
  SourceSpec s;
  s.source = Source::DefaultToIMDS;
  s.label = "IMDS";
  s.endpoint_variable = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
  s.endpoint_default = kImdsEndpoint;
  s.endpoint_base_path = kImdsPath;
  s.api_version = "2018-02-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "msi_res_id";
  s.headers = {{{"Metadata", "true"}, {"x-client-SKU", "managed-identity-cpp"}, {"x-client-Ver", MI_VERSION_STRING}}};
  s.request_id_header = "x-ms-client-request-id";
  s.retry = kImdsRetries;
  s.hint_400 = "check that the identity is assigned to this VM (for a user-assigned identity, that its ID is right) "
               "and that the resource is a valid application ID URI";
  s.hint_not_json = "something other than IMDS may have answered (a proxy, or a container runtime such as Docker "
                    "Desktop); managed identity works only on the Azure resource itself";
  return s;
}

// In detection order (docs/protocol.md §1): the first entry that matches is the source.
constexpr SourceSpec kSources[] = {workload_identity_spec(), service_fabric_spec(), app_service_spec(),
                                   azure_ml_spec(),          cloud_shell_spec(),    azure_arc_spec(),
                                   imds_spec()};
constexpr size_t kSourceCount = sizeof kSources / sizeof kSources[0];
static_assert(kSources[kSourceCount - 1].source == Source::DefaultToIMDS, "IMDS is the fallback, tried last");

const SourceSpec& source_spec(Source source) {
  for (const SourceSpec& spec : kSources)
    if (spec.source == source) return spec;
  return kSources[kSourceCount - 1];  // not a Source value: treated as the fallback
}

inline const char* source_label(Source source) { return source_spec(source).label; }

// ---- detection (docs/protocol.md §1) ------------------------------------------------------

bool detected(const SourceSpec& spec) {
  bool all_set = true;
  for (const char* name : spec.detect_variables)
    if (name != nullptr && env(name).empty()) all_set = false;
  const bool has_variables = spec.detect_variables.at[0] != nullptr;
  if (has_variables && all_set) return true;
  if (spec.detect_also != nullptr) return spec.detect_also();
  return !has_variables;
}

Source detect_source() {
  for (const SourceSpec& spec : kSources)
    if (detected(spec)) return spec.source;
  return Source::DefaultToIMDS;
}

// ---- identities (docs/protocol.md §2) -----------------------------------------------------

const char* id_kind_label(IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return "system-assigned identity";
    case IDKind::ClientID: return "user-assigned client ID";
    case IDKind::ObjectID: return "user-assigned object ID";
    case IDKind::ResourceID: return "user-assigned resource ID";
  }
  return "identity";
}

// The query parameter that carries a user-assigned ID, or nullptr (system-assigned, or refused).
const char* id_parameter(const SourceSpec& spec, IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return nullptr;
    case IDKind::ClientID: return spec.client_id_parameter;
    case IDKind::ObjectID: return spec.object_id_parameter;
    case IDKind::ResourceID: return spec.resource_id_parameter;
  }
  return nullptr;
}

// The source's support for the ID kind first, then an empty value.
Result<bool> check_identity(const SourceSpec& spec, const ID& id) {
  if (id.kind() == IDKind::SystemAssigned) return true;
  if (id_parameter(spec, id.kind()) == nullptr)
    return ErrorAccess::make(Errc::unsupported_identity,
                             cat({"a ", id_kind_label(id.kind()), " cannot be used here: ", spec.id_refusal}),
                             spec.source);
  if (id.value().empty())
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({"the ", id_kind_label(id.kind()), " is empty; pass the identity's ID, or use mi::SystemAssigned()"}),
        spec.source);
  return true;
}

// ---- endpoints and secrets from the environment (docs/protocol.md §2) ------------------------

// Parses an endpoint URL taken from variable `name`: malformed, wrong scheme or a control
// character is invalid_argument. The message names the variable, not the value.
Result<Url> endpoint_from(const std::string& value, const char* name, const char* scheme, Source source) {
  std::string why;
  if (has_control_char(value)) {
    why = "it contains a control character";
  } else {
    Result<Url> parsed = parse_url(value);
    if (!parsed) {
      why = parsed.error().message();
    } else if (parsed->scheme != scheme) {
      why = cat({"its scheme must be ", scheme, "://"});
    } else {
      return parsed;
    }
  }
  return ErrorAccess::make(Errc::invalid_argument,
                           cat({name, " is not a valid ", scheme, " URL (", why, "); check the ",
                                source_label(source), " environment"}),
                           source);
}

// Reads a secret variable; a control character is invalid_argument (the value is never shown).
Result<std::string> secret_from(const char* name, Source source) {
  std::string value = env(name);
  if (has_control_char(value))
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({name, " contains a control character; check the ", source_label(source), " environment"}), source);
  return value;
}

// The endpoint URL as configured: the variable, else the default. A base URL (IMDS's
// AZURE_POD_IDENTITY_AUTHORITY_HOST) loses one trailing '/', gets the token path, and
// http:// when it has no scheme.
std::string configured_endpoint(const SourceSpec& spec) {
  std::string value = env(spec.endpoint_variable);
  if (value.empty()) return spec.endpoint_default != nullptr ? spec.endpoint_default : "";
  if (spec.endpoint_base_path == nullptr) return value;
  if (value.back() == '/') value.pop_back();
  return cat({value.find("://") == std::string::npos ? "http://" : "", value, spec.endpoint_base_path});
}

// ---- request building (docs/protocol.md §2) -------------------------------------------------

// The endpoint: a pinned source's as fixed at New, every other read now.
Result<Url> request_url(const SourceSpec& spec, const PinnedEndpoint* pinned) {
  if (spec.tls == TlsMode::pinned && pinned != nullptr) return pinned->url;
  return endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
}

StringPairs request_parameters(const SourceSpec& spec, const ID& id, std::string_view resource,
                               const RequestExtras& extras) {
  StringPairs params;
  if (spec.api_version != nullptr) add_pair(params, "api-version", spec.api_version);
  add_pair(params, "resource", resource);
  if (const char* name = id_parameter(spec, id.kind())) add_pair(params, name, id.value());
  if (spec.add_parameters != nullptr) spec.add_parameters(id, extras, params);
  return params;
}

// application/x-www-form-urlencoded, every name and value percent-encoded.
std::string form_encode(const StringPairs& params) {
  std::string out;
  for (const auto& p : params) {
    if (!out.empty()) out.push_back('&');
    out += cat({percent_encode(p.first), "=", percent_encode(p.second)});
  }
  return out;
}

// User-Agent, the secret (read now), the entry's fixed headers, the request id, and the
// content type of a form body, in that order.
Result<bool> add_headers(const SourceSpec& spec, const RequestExtras& extras, BuiltRequest& out) {
  StringPairs& headers = out.request.headers;
  add_pair(headers, "User-Agent", kUserAgent);
  if (spec.secret_variable != nullptr) {
    Result<std::string> secret = secret_from(spec.secret_variable, spec.source);
    if (!secret) return secret.error();
    add_pair(headers, spec.secret_header, *secret);
    if (!secret->empty()) out.secrets.push_back(std::move(*secret));
  }
  for (const Header& header : spec.headers)
    if (header.name != nullptr) add_pair(headers, header.name, header.value);
  if (spec.request_id_header != nullptr) add_pair(headers, spec.request_id_header, extras.request_id);
  if (spec.form_body) add_pair(headers, "Content-Type", "application/x-www-form-urlencoded");
  return true;
}

// The one request of an acquisition (Azure Arc: leg 1). `pinned` is the endpoint and pin a
// pinned source fixed at New.
MI_DETAIL_NOINLINE Result<BuiltRequest> build_request(const SourceSpec& spec, const ID& id, std::string_view resource,
                                   const RequestExtras& extras, const PinnedEndpoint* pinned) {
  BuiltRequest out;
  out.request.method = spec.method;
  if (spec.own_request != nullptr) {
    Result<bool> own = spec.own_request(resource, extras, out);
    if (!own) return own.error();
    Result<bool> headers = add_headers(spec, extras, out);
    if (!headers) return headers.error();
    return out;
  }
  Result<Url> url = request_url(spec, pinned);
  if (!url) return url.error();
  StringPairs params = request_parameters(spec, id, resource, extras);
  if (spec.form_body) {
    out.request.body = form_encode(params);  // the URL is sent as configured
  } else {
    url->query = merge_query(url->query, params);
  }
  out.request.url = url->str();
  // The transport checks the pin before the secret goes out.
  if (spec.tls == TlsMode::pinned && pinned != nullptr) out.request.pinned_sha1 = pinned->pinned_sha1;
  Result<bool> headers = add_headers(spec, extras, out);
  if (!headers) return headers.error();
  return out;
}

// ---- Azure ML ----------------------------------------------------------------------------

// clientid is always sent: the user-assigned client ID (added from the table), else
// DEFAULT_IDENTITY_CLIENT_ID, else empty, as Go does.
void azure_ml_parameters(const ID& id, const RequestExtras&, StringPairs& params) {
  if (id.kind() == IDKind::SystemAssigned) add_pair(params, "clientid", env("DEFAULT_IDENTITY_CLIENT_ID"));
}

// ---- Service Fabric (docs/protocol.md §4, §7) ---------------------------------------------------

// With claims, the hash of the cached token the endpoint should not hand out again; the
// client capabilities on every request.
void service_fabric_parameters(const ID&, const RequestExtras& extras, StringPairs& params) {
  if (!extras.claims.empty() && extras.cached_token != nullptr)
    add_pair(params, "token_sha256_to_refresh", sha256_hex(*extras.cached_token));
  if (extras.capabilities != nullptr && !extras.capabilities->empty()) {
    std::string joined;
    for (const std::string& c : *extras.capabilities) {
      if (!joined.empty()) joined += ',';
      joined += c;
    }
    add_pair(params, "xms_cc", joined);
  }
}

// Invisible code points a thumbprint picks up when copied from a certificate viewer
// (Windows' dialog prepends U+200E): the direction marks U+200E and U+200F, the
// byte-order mark U+FEFF and the no-break space U+00A0, in UTF-8. Returns how many
// bytes to skip at `at`, 0 for none.
size_t invisible_mark_length(std::string_view text, size_t at) noexcept {
  static constexpr std::string_view kMarks[] = {"\xE2\x80\x8E", "\xE2\x80\x8F", "\xEF\xBB\xBF", "\xC2\xA0"};
  for (std::string_view mark : kMarks)
    if (text.compare(at, mark.size(), mark) == 0) return mark.size();
  return 0;
}

// IDENTITY_SERVER_THUMBPRINT: drop ':', white space and invisible marks, then exactly
// 40 hex digits (either case) -> 20 raw bytes. `sha1_bytes` is only written on success.
bool parse_thumbprint(std::string_view text, std::string& sha1_bytes) {
  std::string digits;
  digits.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ':' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f') continue;
    if (size_t skip = invisible_mark_length(text, i)) {
      i += skip - 1;
      continue;
    }
    if (hex_value(c) < 0) return false;
    if (digits.size() == 40) return false;
    digits.push_back(c);
  }
  if (digits.size() != 40) return false;
  std::string out(20, '\0');
  for (size_t i = 0; i < 20; ++i)
    out[i] = static_cast<char>(hex_value(digits[2 * i]) * 16 + hex_value(digits[2 * i + 1]));
  sha1_bytes = std::move(out);
  return true;
}

// 20 raw bytes of a SHA-1 -> the 40 upper-case hex digits HttpRequest::pinned_sha1 carries.
std::string pin_hex(std::string_view sha1_bytes) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(2 * sha1_bytes.size());
  for (char ch : sha1_bytes) {
    unsigned char c = static_cast<unsigned char>(ch);
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

// A pinned source's endpoint and pin, fixed at New: an https URL, and a SHA-1 thumbprint.
MI_DETAIL_NOINLINE Result<PinnedEndpoint> pinned_endpoint(const SourceSpec& spec) {
  Result<Url> url = endpoint_from(env(spec.endpoint_variable), spec.endpoint_variable, spec.scheme, spec.source);
  if (!url) return url.error();
  PinnedEndpoint out;
  if (!parse_thumbprint(env(spec.pin_variable), out.sha1_bytes))
    return ErrorAccess::make(Errc::invalid_argument,
                             cat({spec.pin_variable,
                                  " must be a SHA-1 certificate thumbprint (40 hexadecimal digits, ':' and spaces "
                                  "allowed)"}),
                             spec.source);
  out.url = std::move(*url);
  out.pinned_sha1 = pin_hex(out.sha1_bytes);
  return out;
}

// ---- Workload identity (docs/protocol.md §12) -------------------------------------------------

// A tenant goes into the token URL's path, so only a GUID or a domain name may: dot-separated
// labels of 1 to 63 letters, digits or hyphens, none empty (a GUID is one such label).
bool valid_domain_name(std::string_view name) noexcept {
  if (name.empty()) return false;
  size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!allowed || ++label > 63) return false;
  }
  return label > 0;
}

MI_DETAIL_COLD Error workload_error(std::initializer_list<std::string_view> message) {
  return ErrorAccess::make(Errc::invalid_argument, cat(message), Source::WorkloadIdentity);
}

// AZURE_KUBERNETES_TOKEN_PROXY and its TLS settings (identity binding): the request goes to
// the proxy's scheme, host and port, the proxy's path in front of the authority's.
MI_DETAIL_COLD Result<bool> workload_token_proxy(const std::string& proxy, WorkloadSetup& out) {
  if (has_control_char(proxy) || proxy.find('#') != std::string::npos)
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY must be an https URL without a query or fragment"});
  Result<Url> url = endpoint_from(proxy, "AZURE_KUBERNETES_TOKEN_PROXY", "https", Source::WorkloadIdentity);
  if (!url) return url.error();
  if (!url->query.empty() || proxy.find('?') != std::string::npos)
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY must be an https URL without a query or fragment"});
  std::string prefix = url->path;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  out.url.scheme = url->scheme;
  out.url.host = url->host;
  out.url.port = url->port;
  out.url.path = cat({prefix, out.url.path});
  out.proxy_ca_file = env("AZURE_KUBERNETES_CA_FILE");
  out.proxy_ca_pem = env("AZURE_KUBERNETES_CA_DATA");
  if (out.proxy_ca_file.empty() == out.proxy_ca_pem.empty())
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY is set, so exactly one of AZURE_KUBERNETES_CA_FILE and "
                           "AZURE_KUBERNETES_CA_DATA must be set (the token proxy's CA)"});
  out.sni_name = env("AZURE_KUBERNETES_SNI_NAME");
  if (!out.sni_name.empty() && !valid_domain_name(out.sni_name))
    return workload_error({"AZURE_KUBERNETES_SNI_NAME must be a host name (letters, digits, '-' and '.')"});
  out.token_proxy = true;
  return true;
}

// The inputs fixed at New: the client, the tenant, the token endpoint and its TLS trust.
MI_DETAIL_COLD Result<WorkloadSetup> workload_setup(const SourceSpec& spec, const ID& id) {
  WorkloadSetup out;
  out.client_id = id.kind() == IDKind::ClientID ? id.value() : env("AZURE_CLIENT_ID");
  if (out.client_id.empty())
    return workload_error({"workload identity needs the application's client ID: set AZURE_CLIENT_ID (the workload "
                           "identity webhook sets it from the service account's azure.workload.identity/client-id "
                           "annotation) or pass mi::UserAssignedClientID()"});
  const std::string tenant = env("AZURE_TENANT_ID");
  if (!valid_domain_name(tenant))
    return workload_error({"AZURE_TENANT_ID must be a tenant ID (a GUID) or a domain name"});
  Result<Url> authority = endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
  if (!authority) return authority.error();
  out.url = std::move(*authority);
  if (out.url.path.back() != '/') out.url.path.push_back('/');
  out.url.path = cat({out.url.path, tenant, "/oauth2/v2.0/token"});
  out.token_file = env("AZURE_FEDERATED_TOKEN_FILE");
  const std::string proxy = env("AZURE_KUBERNETES_TOKEN_PROXY");
  if (!proxy.empty()) {
    Result<bool> proxied = workload_token_proxy(proxy, out);
    if (!proxied) return proxied.error();
  }
  return out;
}

MI_DETAIL_COLD Error token_file_error(const std::string& path, std::string_view rule) {
  return workload_error({"AZURE_FEDERATED_TOKEN_FILE ('", path.size() > 200 ? path.substr(0, 200) : path, "') ",
                         rule, "; nothing was sent"});
}

#if MI_DETAIL_WINDOWS
// Opens the file (links followed), checks the open handle (a regular file within the limit)
// and reads it.
Result<std::string> read_token_file(const std::string& path) {
  HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                            nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) {
    DWORD code = GetLastError();
    if (code == ERROR_FILE_NOT_FOUND || code == ERROR_PATH_NOT_FOUND) return token_file_error(path, "does not exist");
    return token_file_error(path, cat({"could not be opened (error ", num(static_cast<long long>(code)), ")"}));
  }
  BY_HANDLE_FILE_INFORMATION info;
  bool regular = GetFileType(file) == FILE_TYPE_DISK && GetFileInformationByHandle(file, &info) &&
                 (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) == 0;
  if (!regular) {
    CloseHandle(file);
    return token_file_error(path, "is not a regular file");
  }
  uint64_t size = (static_cast<uint64_t>(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  if (size > kMaxFederatedTokenBytes) {
    CloseHandle(file);
    return token_file_error(path, "is larger than 64 KiB");
  }
  std::string text(static_cast<size_t>(size), '\0');
  DWORD got = 0;
  bool ok = size == 0 || (ReadFile(file, &text[0], static_cast<DWORD>(size), &got, nullptr) && got == size);
  CloseHandle(file);
  if (!ok) {
    std::fill(text.begin(), text.end(), '\0');
    return token_file_error(path, "could not be read");
  }
  return text;
}
#else
// Opens the file without blocking (a FIFO must not hang the caller), following links (kubelet
// rotates the token by swapping one), checks the open descriptor (a regular file within the
// limit) and reads it.
Result<std::string> read_token_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return token_file_error(path, "does not exist");
    return token_file_error(path, cat({"could not be opened (", std::strerror(err), ")"}));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return token_file_error(path, "is not a regular file");
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kMaxFederatedTokenBytes) {
    ::close(fd);
    return token_file_error(path, "is larger than 64 KiB");
  }
  // Read at most one byte past the limit, in case the file grew after fstat.
  std::string text(kMaxFederatedTokenBytes + 1, '\0');
  size_t total = 0;
  bool ok = true;
  while (total < text.size()) {
    ssize_t n = ::read(fd, &text[total], text.size() - total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  ::close(fd);
  if (!ok || total > kMaxFederatedTokenBytes) {
    std::fill(text.begin(), text.end(), '\0');
    return token_file_error(path, ok ? "is larger than 64 KiB" : "could not be read");
  }
  text.resize(total);
  return text;
}
#endif

// The client assertion: the file's text without surrounding white space, non-empty and
// without a control character (it is a JWT; anything else is not what kubelet wrote).
Result<std::string> read_assertion(const std::string& path) {
  Result<std::string> text = read_token_file(path);
  if (!text) return text;
  std::string_view assertion = trim(*text);
  const char* problem = assertion.empty() ? "is empty" : nullptr;
  for (char ch : assertion)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) problem = "holds a control character";
  std::string out = problem == nullptr ? std::string(assertion) : std::string();
  std::fill(text->begin(), text->end(), '\0');
  if (problem != nullptr) return token_file_error(path, problem);
  return out;
}

// The claims form field (docs/protocol.md §7, §12): the caller's claims object with the
// client capabilities as access_token.xms_cc.values; "" when there is neither.
MI_DETAIL_COLD Result<std::string> workload_claims(std::string_view claims, const std::vector<std::string>* caps) {
  const bool have_caps = caps != nullptr && !caps->empty();
  if (claims.empty() && !have_caps) return std::string();
  JsonValue root;
  root.type = JsonValue::Type::Object;
  if (!claims.empty() && (!parse_json(claims, nullptr, root) || !root.is_object()))
    return ErrorAccess::make(Errc::invalid_argument, "mi::WithClaims: the claims must be a JSON object",
                             Source::WorkloadIdentity);
  if (!have_caps) return std::string(claims);
  // The named member, made an object if it is not one; later members of the same name are
  // dropped so that the text sent has one meaning.
  auto member = [](JsonValue& object, const char* name) -> JsonValue& {
    JsonValue* found = nullptr;
    auto& members = object.members;
    for (size_t i = 0; i < members.size();) {
      if (members[i].first != name) {
        ++i;
      } else if (found == nullptr) {
        found = &members[i++].second;
      } else {
        members.erase(members.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    if (found == nullptr) {
      members.emplace_back(name, JsonValue());
      found = &members.back().second;
    }
    return *found;
  };
  auto reset = [](JsonValue& value, JsonValue::Type type) {
    value = JsonValue();
    value.type = type;
  };
  JsonValue& access_token = member(root, "access_token");
  if (!access_token.is_object()) reset(access_token, JsonValue::Type::Object);
  JsonValue& xms_cc = member(access_token, "xms_cc");
  if (!xms_cc.is_object()) reset(xms_cc, JsonValue::Type::Object);
  JsonValue& values = member(xms_cc, "values");
  reset(values, JsonValue::Type::Array);
  for (const std::string& cap : *caps) {
    JsonValue item;
    item.type = JsonValue::Type::String;
    item.text = cap;
    values.items.push_back(std::move(item));
  }
  std::string out;
  write_json(root, out);
  return out;
}

// The client-credentials form with the token file as the client assertion, read now: kubelet
// rotates the file. The assertion is a secret from here on.
Result<bool> workload_request(std::string_view resource, const RequestExtras& extras, BuiltRequest& out) {
  if (extras.workload == nullptr)
    return ErrorAccess::make(Errc::invalid_argument, "workload identity's inputs were not set up by mi::New",
                             Source::WorkloadIdentity);
  const WorkloadSetup& setup = *extras.workload;
  Result<std::string> claims = workload_claims(extras.claims, extras.capabilities);
  if (!claims) return claims.error();
  Result<std::string> assertion = read_assertion(setup.token_file);
  if (!assertion) return assertion.error();
  StringPairs form;
  add_pair(form, "grant_type", "client_credentials");
  add_pair(form, "client_id", setup.client_id);
  add_pair(form, "scope", cat({resource, "/.default"}));
  add_pair(form, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
  add_pair(form, "client_assertion", *assertion);
  if (!claims->empty()) add_pair(form, "claims", *claims);
  out.request.url = setup.url.str();
  out.request.body = form_encode(form);
  for (auto& field : form)
    if (field.first == "client_assertion") std::fill(field.second.begin(), field.second.end(), '\0');
  out.secrets.push_back(std::move(*assertion));
  return true;
}

// What to fix for the AADSTS codes a misconfigured pod meets; Entra's description starts
// with the code ("AADSTS70021: No matching federated identity record found ...").
MI_DETAIL_COLD const char* entra_hint(const ErrorBody& body) {
  std::string_view text = trim(body.description);
  const std::string_view prefix = "AADSTS";
  if (!starts_with(text, prefix)) return nullptr;
  text.remove_prefix(prefix.size());
  std::string_view code = text.substr(0, text.find_first_not_of("0123456789"));
  if (code == "70021")
    return "no federated identity credential of the application matches the service-account token: check the "
           "credential's issuer (the cluster's OIDC issuer URL) and subject "
           "(system:serviceaccount:<namespace>:<service account>)";
  if (code == "700016")
    return "the client ID is not an application in this tenant: check AZURE_CLIENT_ID (or the ID given to "
           "mi::UserAssignedClientID), the service account's azure.workload.identity/client-id annotation, and "
           "AZURE_TENANT_ID";
  if (code == "700024")
    return "the service-account token in AZURE_FEDERATED_TOKEN_FILE has expired: check that kubelet still rotates "
           "the projected token (the pod's token volume) and the node's clock";
  if (code == "90002")
    return "no such tenant: check AZURE_TENANT_ID, and that AZURE_AUTHORITY_HOST is the authority of the tenant's "
           "cloud";
  return nullptr;
}

// ---- Azure Arc (docs/protocol.md §1 step 4, §3) --------------------------------------------------

bool file_exists(const std::string& path) {
  if (path.empty()) return false;
#if MI_DETAIL_WINDOWS
  DWORD attributes = GetFileAttributesA(path.c_str());
  return attributes != INVALID_FILE_ATTRIBUTES;
#else
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
#endif
}

// Where the Arc agent's himds executable would be.
std::vector<std::string> arc_himds_paths() {
#if defined(MI_AZURE_ARC_HIMDS_PATH)
  return {MI_AZURE_ARC_HIMDS_PATH};
#elif MI_DETAIL_WINDOWS
  std::vector<std::string> out;
  // The agent installs under Program Files; Go looks under ProgramData: accept both.
  std::string program_files = env("ProgramFiles"), program_data = env("ProgramData");
  if (!program_files.empty()) out.push_back(cat({program_files, "\\AzureConnectedMachineAgent\\himds.exe"}));
  if (!program_data.empty()) out.push_back(cat({program_data, "\\AzureConnectedMachineAgent\\himds.exe"}));
  return out;
#elif defined(__linux__)
  return {"/opt/azcmagent/bin/himds"};
#else
  return {};
#endif
}

bool arc_agent_installed() {
  for (const std::string& path : arc_himds_paths())
    if (file_exists(path)) return true;
  return false;
}

// The directory the key file must be in; platform_not_supported where there is no Arc agent.
Result<std::string> arc_token_dir() {
#if defined(MI_AZURE_ARC_TOKEN_DIR)
  return std::string(MI_AZURE_ARC_TOKEN_DIR);
#elif MI_DETAIL_WINDOWS
  std::string program_data = env("ProgramData");
  if (program_data.empty()) program_data = "C:\\ProgramData";
  return cat({program_data, "\\AzureConnectedMachineAgent\\Tokens"});
#elif defined(__linux__)
  return std::string("/var/opt/azcmagent/tokens");
#else
  return ErrorAccess::make(Errc::platform_not_supported,
                           "Azure Arc managed identity is supported on Linux and Windows only", Source::AzureArc);
#endif
}

// The parts are joined into the message.
Error arc_error(std::initializer_list<std::string_view> message) {
  return ErrorAccess::make(Errc::arc_challenge, cat({"Azure Arc challenge failed: ", cat(message)}),
                           Source::AzureArc);
}
inline Error arc_error(std::string_view message) { return arc_error({message}); }

// The key file path from leg 1's WWW-Authenticate header ("Basic realm=<path>", the realm
// optionally quoted, parameters after a comma ignored).
Result<std::string> arc_realm_path(const HttpResponse& leg1) {
  const std::string* header = nullptr;
  for (const auto& h : leg1.headers)
    if (iequals(h.first, "WWW-Authenticate")) {
      header = &h.second;
      break;
    }
  if (header == nullptr || trim(*header).empty())
    return arc_error("the agent's 401 response has no WWW-Authenticate header; is IDENTITY_ENDPOINT the Arc agent?");
  std::string_view value = trim(*header);
  const std::string_view basic = "Basic";
  std::string_view rest;
  if (value.size() > basic.size() && iequals(value.substr(0, basic.size()), basic) &&
      (value[basic.size()] == ' ' || value[basic.size()] == '\t')) {
    rest = trim(value.substr(basic.size()));
  }
  const std::string_view realm = "realm=";
  if (rest.size() < realm.size() || !iequals(rest.substr(0, realm.size()), realm))
    return arc_error("the WWW-Authenticate header has no 'Basic realm=' naming the key file");
  rest.remove_prefix(realm.size());
  std::string path;
  if (!rest.empty() && rest.front() == '"') {
    size_t close = rest.find('"', 1);
    if (close == std::string_view::npos) return arc_error("the WWW-Authenticate realm has an unterminated quote");
    path.assign(rest.substr(1, close - 1));
  } else {
    path.assign(trim(rest.substr(0, rest.find(','))));
  }
  if (path.empty()) return arc_error("the WWW-Authenticate header's realm is empty; it should name the key file");
  if (has_control_char(path))
    return arc_error("the key file path in the WWW-Authenticate realm contains a control character");
  return path;
}

#if MI_DETAIL_WINDOWS
// Opens the key file without following a reparse point, checks the open handle (a regular
// file within the size limit) and reads it. `shown` is the path as messages quote it.
Result<std::string> arc_read_key_file(const std::string& path, const std::string& shown) {
  HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                            FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (file == INVALID_HANDLE_VALUE) {
    DWORD code = GetLastError();
    // A directory cannot be opened this way (access denied): say what it is, not to run as admin.
    DWORD attributes = code == ERROR_ACCESS_DENIED ? GetFileAttributesA(path.c_str()) : INVALID_FILE_ATTRIBUTES;
    if (attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) != 0)
      return arc_error({"the key file '", shown, "' is not a regular file"});
    if (code == ERROR_FILE_NOT_FOUND || code == ERROR_PATH_NOT_FOUND)
      return arc_error({"the key file '", shown, "' does not exist"});
    return arc_error({"the key file '", shown, "' could not be opened (error ", num(static_cast<long long>(code)),
                      "); run as an administrator or a member of the 'Hybrid agent extension applications' group"});
  }
  BY_HANDLE_FILE_INFORMATION info;
  bool regular = GetFileType(file) == FILE_TYPE_DISK && GetFileInformationByHandle(file, &info) &&
                 (info.dwFileAttributes & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT)) == 0;
  if (!regular) {
    CloseHandle(file);
    return arc_error({"the key file '", shown, "' is not a regular file"});
  }
  uint64_t size = (static_cast<uint64_t>(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  if (size > kArcMaxKeyBytes) {
    CloseHandle(file);
    return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  }
  std::string key(static_cast<size_t>(size), '\0');
  DWORD got = 0;
  bool ok = size == 0 || (ReadFile(file, &key[0], static_cast<DWORD>(size), &got, nullptr) && got == size);
  CloseHandle(file);
  if (!ok) {
    std::fill(key.begin(), key.end(), '\0');
    return arc_error({"the key file '", shown, "' could not be read"});
  }
  return key;
}
#else
// Opens the key file without following a link or blocking (a FIFO must not hang the
// caller), checks the open descriptor (a regular file within the size limit) and reads
// it. `shown` is the path as messages quote it.
Result<std::string> arc_read_key_file(const std::string& path, const std::string& shown) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return arc_error({"the key file '", shown, "' does not exist"});
    if (err == ELOOP) return arc_error({"the key file '", shown, "' is a symbolic link, which is not followed"});
    return arc_error({"the key file '", shown, "' could not be opened (", std::strerror(err),
                      "); the process must run as root or in the himds group"});
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return arc_error({"the key file '", shown, "' is not a regular file"});
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kArcMaxKeyBytes) {
    ::close(fd);
    return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  }
  // Read at most one byte past the limit, in case the file grew after fstat.
  char buffer[kArcMaxKeyBytes + 1];
  size_t total = 0;
  bool ok = true;
  while (total < sizeof buffer) {
    ssize_t n = ::read(fd, buffer + total, sizeof buffer - total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  ::close(fd);
  std::string key = ok && total <= kArcMaxKeyBytes ? std::string(buffer, total) : std::string();
  std::memset(buffer, 0, sizeof buffer);
  if (!ok) return arc_error({"the key file '", shown, "' could not be read"});
  if (total > kArcMaxKeyBytes) return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  return key;
}
#endif

// Checks the realm path against the token directory, then reads the key file (docs/protocol.md
// §3 step 2). Never puts the contents in a message.
Result<std::string> arc_read_key(const std::string& path) {
  Result<std::string> dir = arc_token_dir();
  if (!dir) return dir.error();
  // The realm comes from the endpoint: quote at most 200 bytes of it in messages.
  const std::string shown = path.size() > 200 ? cat({std::string_view(path).substr(0, 200), "..."}) : path;
  if (has_control_char(path)) return arc_error("the key file path in the realm contains a control character");
  if (path.find("..") != std::string::npos) return arc_error({"the key file path '", shown, "' contains '..'"});
#if MI_DETAIL_WINDOWS
  size_t sep = path.find_last_of("\\/");
#else
  size_t sep = path.rfind('/');
#endif
  std::string name = sep == std::string::npos ? path : path.substr(sep + 1);
  if (name.size() <= 4 || !ends_with(name, ".key"))
    return arc_error({"the key file '", shown, "' does not have the .key extension"});
  if (sep == std::string::npos || path.substr(0, sep) != *dir)
    return arc_error({"the key file '", shown, "' is not in the agent's token directory ", *dir});
  Result<std::string> key = arc_read_key_file(path, shown);
  if (!key) return key;
  // The contents go into a header value as they are: an empty key would send a bare
  // "Basic ", and a control byte (a trailing newline from an editor, say) or a non-ASCII
  // one cannot be sent at all. Neither is a key the agent wrote.
  const char* problem = key->empty() ? "' is empty" : nullptr;
  for (char ch : *key)
    if (ch < 0x20 || ch > 0x7e) problem = "' holds a byte outside printable ASCII (a trailing newline, for instance)";
  if (problem != nullptr) {
    std::fill(key->begin(), key->end(), '\0');
    return arc_error({"the key file '", shown, problem});
  }
  return key;
}

// Leg 1's answer must be the 401 challenge: its key file's contents go into leg 2's
// Authorization header. A success means the agent did not challenge; any other status is
// final (an ordinary http_status error).
MI_DETAIL_NOINLINE Result<bool> arc_answer_challenge(const HttpResponse& leg1, BuiltRequest& built) {
  if (leg1.status == 200 || leg1.status == 202)
    return arc_error({"the agent answered the first request with HTTP ", num(leg1.status),
                      " instead of the 401 challenge; check that IDENTITY_ENDPOINT is the Arc agent"});
  if (leg1.status != 401) return false;
  Result<std::string> path = arc_realm_path(leg1);
  if (!path) return path.error();
  Result<std::string> key = arc_read_key(*path);
  if (!key) return key.error();
  add_pair(built.request.headers, "Authorization", cat({"Basic ", *key}));
  built.secrets.push_back(std::move(*key));
  return true;
}

// docs/protocol.md §3 step 4: a user-assigned request must be echoed back, or the agent ignored it.
bool arc_echoes_identity(const ID& id, const TokenEcho& echo) {
  switch (id.kind()) {
    case IDKind::SystemAssigned: return true;
    case IDKind::ClientID: return !echo.client_id.empty() && iequals(echo.client_id, id.value());
    case IDKind::ObjectID: return !echo.object_id.empty() && iequals(echo.object_id, id.value());
    case IDKind::ResourceID:
      return (!echo.msi_res_id.empty() && iequals(echo.msi_res_id, id.value())) ||
             (!echo.mi_res_id.empty() && iequals(echo.mi_res_id, id.value()));
  }
  return false;
}

Result<bool> arc_confirm_identity(const ID& id, const TokenEcho& echo) {
  if (arc_echoes_identity(id, echo)) return true;
  return arc_error({"the agent did not confirm the requested ", id_kind_label(id.kind()),
                    " in its token response; the agent is likely too old for user-assigned identities and "
                    "returned the system-assigned one (update the Azure Connected Machine agent)"});
}

}  // namespace
}  // namespace detail

Source GetSource() { return detail::detect_source(); }

}  // namespace v1
}  // namespace mi

// ---- src/cache.hpp ----
// The process-wide token cache (docs/protocol.md §6): one per process, shared by every
// client, keyed by source, ID kind, ID value and resource (both compared
// case-insensitively). It also coordinates the two ways callers share work:
// one proactive refresh per entry, and one request per concurrent miss
// ("flights"). A hit is served from a small per-thread copy of the entry,
// valid while the generation counter has not moved, so it takes no lock and
// writes no shared memory: it scales with threads, and it allocates only the
// strings the caller gets back. After a failed proactive refresh, the entry
// cools down before its next one, so an endpoint outage costs one attempt per
// cool-down rather than one per hit.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr std::chrono::minutes kExpiryMargin{5};  // a token is usable only while it lives longer
constexpr std::chrono::seconds kRefreshCoolDown{30};      // after a first failed proactive refresh,
constexpr std::chrono::seconds kMaxRefreshCoolDown{300};  // doubling on each further one up to this

// What a token is cached under: source, ID kind, ID value and resource (after the
// /.default trim), the two strings compared case-insensitively. Entries, per-thread copies
// and flights own a CacheKey; look-ups borrow the caller's strings in a CacheKeyView, so
// that a hit allocates nothing.
struct CacheKeyView {
  Source source;
  IDKind kind;
  std::string_view id;
  std::string_view resource;
};

struct CacheKey {
  Source source = Source::DefaultToIMDS;
  IDKind kind = IDKind::SystemAssigned;
  std::string id;
  std::string resource;

  static CacheKey from(const CacheKeyView& key) {
    return CacheKey{key.source, key.kind, std::string(key.id), std::string(key.resource)};
  }
  operator CacheKeyView() const noexcept { return CacheKeyView{source, kind, id, resource}; }
};

inline bool same_key(const CacheKeyView& a, const CacheKeyView& b) noexcept {
  return a.source == b.source && a.kind == b.kind && iequals(a.id, b.id) && iequals(a.resource, b.resource);
}

// FNV-1a over the key with ASCII case folded, so look-ups need no lowered copy.
inline uint64_t key_hash(const CacheKeyView& key) noexcept {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](unsigned char c) {
    h ^= c;
    h *= 1099511628211ull;
  };
  mix(static_cast<unsigned char>(key.source));
  mix(static_cast<unsigned char>(key.kind));
  for (char c : key.id) mix(static_cast<unsigned char>(ascii_lower(c)));
  mix(0);
  for (char c : key.resource) mix(static_cast<unsigned char>(ascii_lower(c)));
  return h;
}

// One request in flight for a key; concurrent misses wait on it (docs/protocol.md §6, coalescing).
struct Flight {
  explicit Flight(CacheKey k) : key(std::move(k)) {}
  const CacheKey key;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  bool leader_stopped = false;  // the leader's own context ended: waiters must try themselves
  std::unique_ptr<Result<AuthResult>> outcome;
};

class TokenCache {
 public:
  // Never destroyed, so threads still running at exit never touch a dead cache.
  static TokenCache& instance() {
    static TokenCache* cache = new TokenCache();
    return *cache;
  }

  // Moves the generation, so that no thread's copy of a cache that lived at this address
  // before matches this one.
  TokenCache() noexcept { generation_.fetch_add(1, std::memory_order_release); }
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;

  enum class Hit { miss, fresh, refresh };

  // A usable token (expiring more than 5 minutes after `now`) is copied into `out`
  // (access_token, token_type, expires_on, refresh_on). `refresh` means it is past
  // its refresh time (and any cool-down) and this caller won the right to refresh it;
  // it must call end_refresh(key, ...) afterwards.
  Hit find(const CacheKeyView& key, SysClock::time_point now, AuthResult& out) {
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if constexpr (kLocalCopiesEnabled) {
      LocalCopies& copies = local_copies();
      for (size_t i = 0; i < copies.used; ++i) {
        const LocalCopy& local = copies.slots[i];
        if (local.generation != generation || local.cache != this || !same_key(local.key, key)) continue;
        if (local.token.expires_on <= now + kExpiryMargin) return Hit::miss;
        if (due_for_refresh(local.token, local.cool_down_until, now)) break;  // claim under the lock
        set_token(out, local.token);
        return Hit::fresh;
      }
    }
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return Hit::miss;
    if constexpr (kLocalCopiesEnabled) remember(generation, *entry);
    if (entry->token.expires_on <= now + kExpiryMargin) return Hit::miss;
    set_token(out, entry->token);
    if (due_for_refresh(entry->token, entry->cool_down_until, now)) {
      bool expected = false;
      if (entry->refreshing.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return Hit::refresh;
    }
    return Hit::fresh;
  }

  // Any cached token for the key, usable or not (Service Fabric's revocation hash).
  bool peek(const CacheKeyView& key, Token& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return false;
    out = entry->token;
    return true;
  }

  // Ends the refresh find() handed out. After a failure (at `now`) the entry cools down
  // before its next proactive refresh: 30 s, doubling on each further failure up to 5 min,
  // and never past the time the token stops being usable (misses ignore the cool-down).
  // Returns the cool-down started (zero if none).
  std::chrono::seconds end_refresh(const CacheKeyView& key, bool failed, SysClock::time_point now) noexcept {
    if (!failed) {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      if (Entry* entry = lookup(key)) entry->refreshing.store(false, std::memory_order_release);
      return std::chrono::seconds(0);
    }
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return std::chrono::seconds(0);
    std::chrono::seconds cool_down(0);
    // A token stored meanwhile (not due for refresh) has already ended any cool-down.
    if (entry->token.refresh_on != SysClock::time_point() && now >= entry->token.refresh_on) {
      if (entry->refresh_failures < 16) ++entry->refresh_failures;
      cool_down = kRefreshCoolDown * (int64_t{1} << std::min(entry->refresh_failures - 1, 4));
      if (cool_down > kMaxRefreshCoolDown) cool_down = kMaxRefreshCoolDown;
      entry->cool_down_until = std::min(now + cool_down, entry->token.expires_on - kExpiryMargin);
      generation_.fetch_add(1, std::memory_order_release);  // per-thread copies carry the cool-down
    }
    entry->refreshing.store(false, std::memory_order_release);
    return cool_down;
  }

  // Stores the token if it lives more than 5 minutes past `now`; returns whether it did.
  bool store(const CacheKeyView& key, const Token& token, SysClock::time_point now) {
    if (token.expires_on <= now + kExpiryMargin) return false;
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) {
      entries_.push_back(std::unique_ptr<Entry>(new Entry(CacheKey::from(key))));
      entry = entries_.back().get();
    }
    entry->token = token;
    entry->refresh_failures = 0;  // a new token ends any cool-down
    entry->cool_down_until = SysClock::time_point();
    generation_.fetch_add(1, std::memory_order_release);
    return true;
  }

  // Joins the flight for `key` or, when there is none and no usable token was
  // stored meanwhile, starts one (leader = true). With a usable token, returns
  // nullptr and fills `out`.
  std::shared_ptr<Flight> join_or_lead(const CacheKeyView& key, SysClock::time_point now, bool& leader,
                                       AuthResult& out) {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    // Leaders store before they land, so this re-check closes the miss/land race.
    if (find_usable(key, now, out)) return nullptr;
    for (const std::shared_ptr<Flight>& flight : flights_)
      if (same_key(flight->key, key)) {
        leader = false;
        return flight;
      }
    flights_.push_back(std::make_shared<Flight>(CacheKey::from(key)));
    leader = true;
    return flights_.back();
  }

  // The leader publishes its outcome (after storing a success) and removes the flight.
  void land(const std::shared_ptr<Flight>& flight, const Result<AuthResult>& outcome, bool leader_stopped) {
    std::unique_ptr<Result<AuthResult>> copy(new Result<AuthResult>(outcome));
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->outcome = std::move(copy);
    flight->leader_stopped = leader_stopped;
    flight->done = true;
    flight->done_cv.notify_all();
  }

  // The leader left without an outcome (user code threw): removes the flight, and its
  // waiters try themselves. Allocates nothing, so it is safe while unwinding.
  void abandon(const std::shared_ptr<Flight>& flight) noexcept {
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->leader_stopped = true;
    flight->done = true;
    flight->done_cv.notify_all();
  }

 private:
  struct Entry {
    explicit Entry(CacheKey k) : key(std::move(k)), hash(key_hash(key)) {}
    const CacheKey key;
    const uint64_t hash;
    Token token;
    std::atomic<bool> refreshing{false};
    int refresh_failures = 0;              // proactive refreshes failed in a row
    SysClock::time_point cool_down_until;  // no proactive refresh before this
  };
  // A thread's copy of an entry of `cache`, valid only while generation_ has not moved.
  struct LocalCopy {
    uint64_t generation = 0;
    const TokenCache* cache = nullptr;
    SysClock::time_point cool_down_until;
    CacheKey key;
    Token token;
  };
  static constexpr size_t kLocalCopies = 8;
  // MinGW's GCC emulates TLS and frees a thread_local's storage before its destructor runs
  // at thread exit (GCC bug 80816, mingw-w64 bug 527): a thread that used the cache would
  // crash or corrupt the heap as it ends. There, no per-thread copies: hits take the lock.
#if defined(__MINGW32__) && !defined(__clang__)
  static constexpr bool kLocalCopiesEnabled = false;
#else
  static constexpr bool kLocalCopiesEnabled = true;
#endif

  // A thread's copies, replaced oldest first once all kLocalCopies are in use.
  struct LocalCopies {
    LocalCopy slots[kLocalCopies];
    size_t used = 0;    // slots[0, used) hold copies
    size_t oldest = 0;  // the slot to replace next when all are in use
  };

  // The copies hold strings that must be freed when their thread ends, so this is the one
  // variable with a destructor at (thread) exit, on purpose.
  static LocalCopies& local_copies() {
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wexit-time-destructors"
#endif
    static thread_local LocalCopies copies;
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
    return copies;
  }

  // Keeps a per-thread copy of `entry` stamped with the generation read before the
  // lookup: if a store raced with us, the stamp is already stale and the copy unused.
  void remember(uint64_t generation, const Entry& entry) const {
    LocalCopies& copies = local_copies();
    LocalCopy* slot = nullptr;
    for (size_t i = 0; i < copies.used; ++i) {
      LocalCopy& c = copies.slots[i];
      if (c.cache == this && same_key(c.key, entry.key)) slot = &c;
    }
    if (slot == nullptr) {
      if (copies.used < kLocalCopies) {
        slot = &copies.slots[copies.used++];
      } else {
        slot = &copies.slots[copies.oldest];
        copies.oldest = (copies.oldest + 1) % kLocalCopies;
      }
      slot->cache = this;
      slot->key = entry.key;
    }
    slot->generation = generation;
    slot->token = entry.token;
    slot->cool_down_until = entry.cool_down_until;
  }

  static bool due_for_refresh(const Token& token, SysClock::time_point cool_down_until,
                              SysClock::time_point now) noexcept {
    return token.refresh_on != SysClock::time_point() && now >= token.refresh_on && now >= cool_down_until;
  }

  Entry* lookup(const CacheKeyView& key) const noexcept {
    const uint64_t h = key_hash(key);
    for (const std::unique_ptr<Entry>& e : entries_)
      if (e->hash == h && same_key(e->key, key)) return e.get();
    return nullptr;
  }

  // Removes a flight from the list; the caller's reference keeps it alive.
  void unlink(const std::shared_ptr<Flight>& flight) noexcept {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    for (auto f = flights_.begin(); f != flights_.end(); ++f)
      if (*f == flight) {
        flights_.erase(f);
        return;
      }
  }

  bool find_usable(const CacheKeyView& key, SysClock::time_point now, AuthResult& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr || entry->token.expires_on <= now + kExpiryMargin) return false;
    set_token(out, entry->token);
    return true;
  }

  mutable std::shared_mutex mutex_;
  std::vector<std::unique_ptr<Entry>> entries_;  // under mutex_ (behind pointers: an Entry holds an atomic)
  // Moves on every store, cool-down and new cache. One counter for the process, so that a
  // cache built where another was destroyed never matches that one's copies.
  static inline std::atomic<uint64_t> generation_{1};
  std::mutex flights_mutex_;
  std::vector<std::shared_ptr<Flight>> flights_;  // under flights_mutex_
};

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi

// ---- src/client.hpp ----
// The client: options, the retry loop (docs/protocol.md §8), turning responses into tokens
// or errors (§5), the Azure Arc legs (§3), and AcquireToken's use of the cache
// (§6): hit, proactive refresh, coalesced miss, claims bypass.

namespace mi {
inline namespace v1 {
namespace detail {
struct ClientConfig {
  std::shared_ptr<HttpClient> http;  // null: the built-in transport for the source
  bool retry = true;
  int max_retries = -1;              // -1: the source's default
  std::vector<std::string> capabilities;
  std::function<void(LogLevel, std::string_view)> logger;
  Millis connect_timeout{5000};
  Millis attempt_timeout{30000};
  std::function<SysClock::time_point()> clock;
  std::function<void(Millis)> sleep;
  std::string ca_file;               // WithCAFile: extra trust anchors for chain-validated HTTPS
};

struct AcquireConfig {
  std::string claims;
};

using LogLines = std::vector<std::pair<LogLevel, std::string>>;

struct ClientState {
  Source source = Source::DefaultToIMDS;
  ID id;
  ClientConfig config;
  std::shared_ptr<HttpClient> transport;  // null only for an https source built without libcurl
  std::unique_ptr<const PinnedEndpoint> pinned;  // TlsMode::pinned: the endpoint and pin as read at New
  std::unique_ptr<const WorkloadSetup> workload;  // workload identity: its inputs as read at New
  // The ID value the cache keys on: id.value(), except for workload identity, where the
  // identity is the client ID and tenant read at New (a system-assigned ID has no value of
  // its own), so clients made under different variables never share a token.
  std::string cache_id;

  static Client make_client(std::shared_ptr<ClientState> state) { return Client(std::move(state)); }

  SysClock::time_point now() const { return config.clock ? config.clock() : SysClock::now(); }
  // For the cache-hit check only, where a few milliseconds do not matter.
  SysClock::time_point hit_now() const { return config.clock ? config.clock() : coarse_now(); }

  // Emits one line now. A logger that throws is ignored: a failing log sink must not fail
  // the call, nor unwind through the cache.
  void log(LogLevel level, std::string_view message) const noexcept {
    if (!config.logger) return;
#if MI_DETAIL_EXCEPTIONS
    try {
      config.logger(level, message);
    } catch (...) {
    }
#else
    config.logger(level, message);
#endif
  }
  // Holds a line back until emit(): used while this thread leads a request others may wait
  // for, or holds a refresh, so that a logger may itself call AcquireToken for the same key.
  void defer(LogLines& lines, LogLevel level, std::string message) const {
    if (config.logger) lines.emplace_back(level, std::move(message));
  }
  void emit(const LogLines& lines) const noexcept {
    for (const auto& line : lines) log(line.first, line.second);
  }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// ---- retry policy (docs/protocol.md §8) -----------------------------------------------------------

// The source's retry class (SourceSpec::retry) decides the next three.
bool retryable_status(Source source, int status) {
  const RetryClass& rc = source_spec(source).retry;
  if (status == 404) return rc.not_found;
  if (status == 408 || status == 429) return true;
  if (status == 410) return rc.imds_updating;
  if (rc.every_5xx) return status >= 500 && status <= 599;
  return status == 500 || status == 502 || status == 503 || status == 504;
}

// The one rule for what may succeed later: Error::retryable() and the retry loop both use it.
bool retryable_outcome(Source source, Errc code, int status) noexcept {
  if (code == Errc::network || code == Errc::timeout) return true;
  return code == Errc::http_status && retryable_status(source, status);
}

// How many retries may follow a failure with this status (0 = transport error).
int retry_limit(const ClientState& st, int status) {
  if (!st.config.retry) return 0;
  if (st.config.max_retries >= 0) return st.config.max_retries;
  if (status == 410 && source_spec(st.source).retry.imds_updating) return 7;  // IMDS is being updated
  return 3;
}

// The wait before retry number `retry` (0-based), before Retry-After and jitter.
Millis backoff(Source source, int retry, int status) {
  const RetryClass& rc = source_spec(source).retry;
  if (status == 410 && rc.imds_updating) return Millis(10000);
  if (!rc.exponential) return Millis(1000);
  return Millis(1000LL << std::min(retry, 6));  // 1 s, 2 s, 4 s, ...
}

constexpr Millis kMaxRetryWait{60000};

// Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as Retry-After allows.
MI_DETAIL_COLD bool parse_http_date(std::string_view text, SysClock::time_point& out) {
  text = trim(text);
  size_t comma = text.find(',');
  if (comma == std::string_view::npos) return false;
  std::string_view rest = trim(text.substr(comma + 1));
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  // "06 Nov 1994 08:49:37 GMT"
  if (rest.size() != 24 || rest[2] != ' ' || rest[6] != ' ' || rest[11] != ' ' || rest[14] != ':' ||
      rest[17] != ':' || rest.substr(20) != " GMT")
    return false;
  int64_t day = 0, year = 0, hour = 0, minute = 0, second = 0;
  if (!parse_int64(rest.substr(0, 2), day) || !parse_int64(rest.substr(7, 4), year) ||
      !parse_int64(rest.substr(12, 2), hour) || !parse_int64(rest.substr(15, 2), minute) ||
      !parse_int64(rest.substr(18, 2), second))
    return false;
  unsigned month = 0;
  for (unsigned i = 0; i < 12; ++i)
    if (rest.substr(3, 3) == months[i]) month = i + 1;
  if (month == 0 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return false;
  int64_t days = days_from_civil(year, month, static_cast<unsigned>(day));
  // A year the clock cannot hold (before 1678 or after 2262 with a nanosecond clock) is
  // not a date the server can mean: ignored, like any other unusable value.
  return from_unix_seconds(days * 86400 + hour * 3600 + minute * 60 + second, out);
}

// Retry-After as a wait from `now`: seconds or an HTTP-date; false when absent or unusable.
MI_DETAIL_COLD bool retry_after(const HttpResponse& response, SysClock::time_point now, Millis& wait) {
  for (const auto& h : response.headers) {
    if (!iequals(h.first, "Retry-After")) continue;
    std::string_view value = trim(h.second);
    int64_t seconds = 0;
    if (parse_int64(value, seconds)) {
      wait = seconds > kMaxRetryWait.count() / 1000 ? kMaxRetryWait : Millis(seconds * 1000);
      return true;
    }
    SysClock::time_point when;
    if (parse_http_date(value, when)) {
      // when - now could overflow (a date near one end of the clock, `now` near the
      // other): compared in whole seconds first, anything past the cap waits the cap.
      if (when <= now) wait = Millis(0);
      else if (to_unix_seconds(when) - to_unix_seconds(now) > kMaxRetryWait.count() / 1000) wait = kMaxRetryWait;
      else wait = std::chrono::duration_cast<Millis>(when - now);
      return true;
    }
    return false;
  }
  return false;
}

// ---- errors from responses ----------------------------------------------------------------

// Text from the endpoint with every control character -- C0, DEL, and C1 (U+0080..U+009F,
// C2 80..C2 9F in UTF-8) -- shown as one space, everything else as it is.
MI_DETAIL_COLD std::string fold_controls(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == 0xC2 && i + 1 < text.size()) {
      unsigned char next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9F) {
        out.push_back(' ');
        ++i;
        continue;
      }
    }
    out.push_back(c < 0x20 || c == 0x7f ? ' ' : static_cast<char>(c));
  }
  return out;
}

// Replaces every secret in `text` so no message can carry one. Endpoint text is folded
// (fold_controls) before it gets here, so each secret is also looked for as folded: an
// echo with control characters in place of some characters (its spaces, or controls the
// secret itself holds) folds to that form.
MI_DETAIL_COLD std::string redact(std::string text, const std::vector<std::string>& secrets) {
  const std::string_view mark = "[redacted]";
  auto replace_all = [&text, mark](std::string_view secret) {
    for (size_t pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos + mark.size()))
      text.replace(pos, secret.size(), mark);
  };
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    replace_all(secret);
    std::string folded = fold_controls(secret);
    if (folded != secret && !trim(folded).empty()) replace_all(folded);
  }
  return text;
}

// At most `limit` bytes (limit > 3): a longer text is cut on a UTF-8 character boundary,
// never inside a character, and ends in "...".
MI_DETAIL_COLD std::string body_excerpt(std::string text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t cut = limit - 3;
  // Back off over continuation bytes (10xxxxxx) to the start of the character cut into.
  for (int k = 0; k < 3 && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80; ++k) --cut;
  text.resize(cut);
  text += "...";
  return text;
}

// The source's own hints (SourceSpec::hint_*) come first, then the generic ones.
std::string status_hint(Source source, int status, bool json_body) {
  const SourceSpec& spec = source_spec(source);
  if (status >= 300 && status < 400)
    return "the endpoint answered with a redirect, which is never followed; a managed identity endpoint does not "
           "redirect, so a proxy may be intercepting the request";
  if (!json_body && (status == 403 || status == 502 || status == 503 || status == 504) &&
      spec.hint_not_json != nullptr)
    return spec.hint_not_json;
  switch (status) {
    case 400: return spec.hint_400 != nullptr ? spec.hint_400 : "check the resource and the identity's ID";
    case 401:
    case 403:
      if (spec.hint_401_403 != nullptr) return spec.hint_401_403;
      return "the endpoint refused the request; check that this process may use the resource's managed identity";
    case 404:
      return "the identity was not found or is still being assigned; check the identity's ID and that it is "
             "assigned to this resource, then try again";
    case 410: return "IMDS is being updated; try again in a minute";
    case 429: return "the endpoint is throttling requests; try again later (tokens are cached, so keep one client)";
    default: break;
  }
  if (status >= 500) return "the endpoint failed; try again later";
  return "check the resource and the identity";
}

// Text from the endpoint made safe for a message or an mi::Error field: control characters
// shown as spaces, then secrets replaced (so folding cannot rebuild one), then at most 512
// bytes (a hostile endpoint may send megabytes). Redacting before the cut means a secret
// that straddles the limit leaves no piece behind.
MI_DETAIL_COLD std::string endpoint_text(std::string_view text, const std::vector<std::string>& secrets) {
  return body_excerpt(std::string(trim(redact(fold_controls(text), secrets))), 512);
}

MI_DETAIL_COLD Error http_status_error(const ClientState& st, const HttpResponse& response, int attempts,
                                       const std::vector<std::string>& secrets) {
  ErrorBody details = parse_error_body(response.body);
  std::string code = endpoint_text(details.code, secrets);
  std::string description = endpoint_text(details.description, secrets);
  std::string message = cat({source_label(st.source), " answered HTTP ", num(response.status)});
  if (!code.empty() || !description.empty()) {
    message += cat({" (", code, !code.empty() && !description.empty() ? ": " : "", description, ")"});
  } else {
    // A body of any other shape (other JSON, HTML, text) is the only clue: show an excerpt.
    std::string excerpt = endpoint_text(response.body, secrets);
    if (!excerpt.empty()) message += cat({" (\"", excerpt, "\")"});
  }
  if (attempts > 1) message += cat({" after ", num(attempts), " attempts"});
  const SourceSpec& spec = source_spec(st.source);
  const char* body_hint = spec.hint_for_body != nullptr ? spec.hint_for_body(details) : nullptr;
  message += cat({"; ", body_hint != nullptr ? body_hint : status_hint(st.source, response.status, details.json)});
  Error e = ErrorAccess::make(Errc::http_status, redact(message, secrets), st.source);
  ErrorAccess::set_status(e, response.status);
  ErrorAccess::set_server_details(e, std::move(code), std::move(description),
                                  endpoint_text(details.correlation_id, secrets));
  return e;
}

// ---- sending with retries -----------------------------------------------------------------

MI_DETAIL_COLD std::string last_status_note(int status) {
  return status == 0 ? std::string() : cat({" (the last answer was HTTP ", num(status), ")"});
}

// The retry loop's rare paths, out of line: the context stopped, the transport failed for
// good, a retry is logged, the deadline would pass before the next retry.
MI_DETAIL_COLD Result<HttpResponse> retry_stopped(const ClientState& st, ContextStatus cs, int last_status) {
  Error e = context_error(cs, {"waiting for ", source_label(st.source), last_status_note(last_status)});
  ErrorAccess::set_source(e, st.source);
  return e;
}

MI_DETAIL_COLD Result<HttpResponse> transport_failure(const ClientState& st, const Error& error,
                                                      const std::vector<std::string>& secrets, int attempts) {
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  ErrorAccess::set_message(e, redact(e.message(), secrets));
  if (attempts > 1) ErrorAccess::set_message(e, cat({e.message(), " (after ", num(attempts), " attempts)"}));
  return e;
}

MI_DETAIL_COLD void log_retry(const ClientState& st, LogLines& logs, const Error* error,
                              const std::vector<std::string>& secrets, int status, Millis wait) {
  if (error != nullptr)
    st.defer(logs, LogLevel::Warning,
             cat({source_label(st.source), " request failed: ", redact(error->message(), secrets), "; retrying in ",
                  num(wait.count()), " ms"}));
  else
    st.defer(logs, LogLevel::Warning,
             cat({source_label(st.source), " answered HTTP ", num(status), "; retrying in ", num(wait.count()),
                  " ms"}));
}

#if MI_DETAIL_EXCEPTIONS
MI_DETAIL_COLD Result<HttpResponse> transport_threw(const char* what) {
  return failure<HttpResponse>(Errc::network, {"the HTTP client threw an exception",
                                               what != nullptr ? ": " : "",
                                               what != nullptr ? body_excerpt(what, 200) : std::string()});
}
#endif

// One attempt. An exception from a custom HttpClient must not unwind through the retry loop
// and the cache (a request in flight would never land): it is a network error, retried as one.
Result<HttpResponse> call_transport(const ClientState& st, const Context& ctx, const HttpRequest& request) {
#if MI_DETAIL_EXCEPTIONS
  try {
    return st.transport->Do(ctx, request);
  } catch (const std::exception& e) {
    return transport_threw(e.what());
  } catch (...) {
    return transport_threw(nullptr);
  }
#else
  return st.transport->Do(ctx, request);
#endif
}

MI_DETAIL_COLD Result<HttpResponse> retry_deadline(const ClientState& st, int last_status) {
  Error e = make_error(Errc::timeout, cat({"the context's deadline would pass before the next retry to ",
                                           source_label(st.source), last_status_note(last_status),
                                           "; give the call more time (mi::Context::WithTimeout)"}));
  ErrorAccess::set_source(e, st.source);
  ErrorAccess::set_status(e, last_status);
  return e;
}

// Sends `request` until it gets a final answer (docs/protocol.md §8): transport errors and the
// source's retryable statuses are retried with backoff, honouring Retry-After, within
// the context (unless `one_attempt`). Any status that is not retried is returned as a value.
Result<HttpResponse> send_with_retries(const ClientState& st, const Context& ctx, const HttpRequest& request,
                                       const std::vector<std::string>& secrets, bool one_attempt, int& attempts,
                                       LogLines& logs) {
  attempts = 0;
  int last_status = 0;
  for (int retries = 0;; ++retries) {
    ContextStatus cs = context_status(ctx);
    if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
    ++attempts;
    Context attempt_ctx = ctx.WithTimeout(st.config.attempt_timeout);
    Result<HttpResponse> result = call_transport(st, attempt_ctx, request);
    Millis wait(0);
    if (!result) {
      cs = context_status(ctx);
      if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
      const Error& error = result.error();
      if (one_attempt || !retryable_outcome(st.source, error.code(), error.status_code()) ||
          retries >= retry_limit(st, 0))
        return transport_failure(st, error, secrets, attempts);
      wait = backoff(st.source, retries, 0);
      log_retry(st, logs, &error, secrets, 0, wait);
    } else {
      last_status = result->status;
      if (one_attempt || !retryable_outcome(st.source, Errc::http_status, last_status) ||
          retries >= retry_limit(st, last_status))
        return result;
      wait = backoff(st.source, retries, last_status);
      Millis after(0);
      if (retry_after(*result, st.now(), after) && after > wait) wait = after;
      log_retry(st, logs, nullptr, secrets, last_status, wait);
    }
    // Up to +20 % jitter so that many clients do not retry in lockstep; never past 60 s.
    wait += Millis(static_cast<int64_t>(random_u64() % static_cast<uint64_t>(wait.count() / 5 + 1)));
    if (wait > kMaxRetryWait) wait = kMaxRetryWait;
    if (ctx.deadline() != SteadyClock::time_point::max() && SteadyClock::now() + wait >= ctx.deadline())
      return retry_deadline(st, last_status);
    if (st.config.sleep) {
      st.config.sleep(wait);
    } else {
      sleep_for(ctx, wait);
    }
  }
}

// ---- one acquisition against the endpoint ---------------------------------------------------

// An acquisition's failure: the source set, and the request id as correlation id if the
// endpoint gave none. `prefix` (if any) goes before the message.
MI_DETAIL_COLD Result<AuthResult> finish_error(const ClientState& st, const Error& error, const std::string& request_id,
                                               bool prefix_source = false) {
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  if (prefix_source) ErrorAccess::set_message(e, cat({source_label(st.source), ": ", e.message()}));
  if (e.correlation_id().empty() && !request_id.empty()) ErrorAccess::set_correlation_id(e, request_id);
  return e;
}

Error no_transport_error(const SourceSpec& spec) {
  return make_error(Errc::tls, cat({spec.label,
                                    "'s endpoint is HTTPS, and this program was built without HTTPS support: define "
                                    "MI_USE_CURL where MI_IMPLEMENTATION is defined, with the libcurl and OpenSSL "
                                    "headers installed (libcurl is loaded when first needed; CMake: -DMI_USE_CURL=ON)"}));
}

// Fetches a token from the endpoint (no cache read). `cached_token` is the token cached for
// this key, if any (Service Fabric's revocation hash with claims). Log lines go to `logs`.
Result<AuthResult> fetch_token(const ClientState& st, const Context& ctx, std::string_view resource,
                               const AcquireConfig& options, const std::string* cached_token, bool one_attempt,
                               LogLines& logs) {
  const SourceSpec& spec = source_spec(st.source);
  // Sent by the sources that take one; the same on this acquisition's retries.
  const std::string request_id = spec.request_id_header != nullptr ? uuid4() : std::string();
  Result<BuiltRequest> built = build_request(spec, st.id, resource,
                                             RequestExtras{request_id, options.claims, cached_token,
                                                           &st.config.capabilities, st.workload.get()},
                                             st.pinned.get());
  if (!built) return finish_error(st, built.error(), request_id);
  // An endpoint that echoes the token we hold (claims, refresh) must not get it into a message.
  if (cached_token != nullptr) built->secrets.push_back(*cached_token);
  if (!st.transport) return finish_error(st, no_transport_error(spec), request_id);

  int attempts = 0;
  Result<HttpResponse> response =
      send_with_retries(st, ctx, built->request, built->secrets, one_attempt, attempts, logs);
  if (response && spec.answer_challenge != nullptr) {
    // Azure Arc: leg 1 answered; a 401 challenge is answered by leg 2 (docs/protocol.md §3).
    Result<bool> again = spec.answer_challenge(*response, *built);
    if (!again) return finish_error(st, again.error(), request_id);
    if (*again) response = send_with_retries(st, ctx, built->request, built->secrets, one_attempt, attempts, logs);
  }
  if (!response) return finish_error(st, response.error(), request_id);
  if (response->status != 200 && response->status != 202)
    return finish_error(st, http_status_error(st, *response, attempts, built->secrets), request_id);

  SysClock::time_point now = st.now();
  Result<TokenResponse> parsed = parse_token_response(response->body, now);
  if (!parsed) return finish_error(st, parsed.error(), request_id, true);
  if (spec.confirm_token != nullptr) {
    Result<bool> confirmed = spec.confirm_token(st.id, parsed->echo);
    if (!confirmed) return finish_error(st, confirmed.error(), request_id);
  }
  AuthResult result;
  set_token(result, std::move(parsed->token));
  result.resource.assign(resource);
  result.token_source = TokenSource::IdentityProvider;
  st.defer(logs, LogLevel::Info,
           cat({"acquired a token for '", resource, "' from ", source_label(st.source), ", expiring in ",
                num(std::chrono::duration_cast<std::chrono::seconds>(result.expires_on - now).count()), " s"}));
  return result;
}

// Caches a fetched token; a result that is not cached only costs a log line.
void store_token(const ClientState& st, const CacheKeyView& key, const AuthResult& result, LogLines& logs) {
  Token token{result.access_token, result.token_type, result.expires_on, result.refresh_on};
  if (!TokenCache::instance().store(key, token, st.now()))
    st.defer(logs, LogLevel::Warning, "the token expires within 5 minutes, so it is not cached");
}

std::string_view trim_default_scope(std::string_view resource) {
  const std::string_view suffix = "/.default";
  if (ends_with(resource, suffix)) resource.remove_suffix(suffix.size());
  return resource;
}

// Lands the leader's flight on every path. If user code (a sleep or clock hook) throws, the
// flight is abandoned instead, and its waiters try themselves rather than wait for ever.
class FlightLanding {
 public:
  FlightLanding(TokenCache& cache, const std::shared_ptr<Flight>& flight) : cache_(cache), flight_(flight) {}
  FlightLanding(const FlightLanding&) = delete;
  FlightLanding& operator=(const FlightLanding&) = delete;
  ~FlightLanding() {
    if (!landed_) cache_.abandon(flight_);
  }
  void land(const Result<AuthResult>& outcome, bool leader_stopped) {
    cache_.land(flight_, outcome, leader_stopped);  // if it cannot (no memory), the destructor abandons
    landed_ = true;
  }

 private:
  TokenCache& cache_;
  const std::shared_ptr<Flight>& flight_;
  bool landed_ = false;
};

// Ends a proactive refresh on every path; if user code throws, as a failure (so the key
// cools down and is refreshed again later).
class RefreshClaim {
 public:
  RefreshClaim(TokenCache& cache, const CacheKeyView& key, SysClock::time_point now)
      : cache_(cache), key_(key), now_(now) {}
  RefreshClaim(const RefreshClaim&) = delete;
  RefreshClaim& operator=(const RefreshClaim&) = delete;
  ~RefreshClaim() {
    if (!ended_) cache_.end_refresh(key_, true, now_);
  }
  std::chrono::seconds end(bool failed, SysClock::time_point now) {
    ended_ = true;
    return cache_.end_refresh(key_, failed, now);
  }

 private:
  TokenCache& cache_;
  const CacheKeyView& key_;
  SysClock::time_point now_;
  bool ended_ = false;
};

// A hit past its refresh time whose caller won the refresh (docs/protocol.md §6). A valid token is in
// hand, so one attempt without retry waits; if it fails, the cached token is returned and
// the key cools down before its next proactive attempt.
MI_DETAIL_NOINLINE Result<AuthResult> refresh_token(const ClientState& st, const Context& ctx, const CacheKeyView& key,
                                 const AcquireConfig& options, AuthResult cached, SysClock::time_point now) {
  TokenCache& cache = TokenCache::instance();
  RefreshClaim claim(cache, key, now);
  LogLines logs;
  Result<AuthResult> result = fetch_token(st, ctx, key.resource, options, &cached.access_token, true, logs);
  if (result) store_token(st, key, *result, logs);
  std::chrono::seconds cool_down = claim.end(!result, result ? now : st.now());
  st.emit(logs);
  if (result) return result;
  st.log(LogLevel::Warning, cat({"proactive token refresh failed, using the cached token until it expires (next "
                                 "refresh attempt in ",
                                 num(cool_down.count()), " s): ", result.error().message()}));
  cached.resource.assign(key.resource);
  return Result<AuthResult>(std::move(cached));
}

Result<AuthResult> acquire(const ClientState& st, const Context& ctx, std::string_view requested,
                           const AcquireConfig& options) {
  std::string_view resource = trim_default_scope(requested);
  const CacheKeyView key{st.source, st.id.kind(), st.cache_id, resource};
  TokenCache& cache = TokenCache::instance();

  // Claims: always fetch (docs/protocol.md §7), never coalesce; the new token is cached.
  if (!options.claims.empty()) {
    Token cached;
    bool have = cache.peek(key, cached);
    LogLines logs;
    Result<AuthResult> result =
        fetch_token(st, ctx, resource, options, have ? &cached.access_token : nullptr, false, logs);
    if (result) store_token(st, key, *result, logs);
    st.emit(logs);
    return result;
  }

  AuthResult cached;
  cached.token_source = TokenSource::Cache;
  const SysClock::time_point now = st.hit_now();
  switch (cache.find(key, now, cached)) {
    case TokenCache::Hit::fresh:
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    case TokenCache::Hit::refresh:
      // This caller refreshes; the others keep getting the cached token meanwhile.
      return refresh_token(st, ctx, key, options, std::move(cached), now);
    case TokenCache::Hit::miss: break;
  }

  // A miss: one request per key; concurrent callers wait for it (docs/protocol.md §6).
  for (;;) {
    bool leader = false;
    std::shared_ptr<Flight> flight = cache.join_or_lead(key, st.now(), leader, cached);
    if (!flight) {
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    }
    if (leader) {
      // Lines are logged only once the flight has landed: a logger that calls AcquireToken
      // for this key would otherwise wait on its own thread's flight.
      FlightLanding landing(cache, flight);
      LogLines logs;
      Result<AuthResult> result = fetch_token(st, ctx, resource, options, nullptr, false, logs);
      if (result) store_token(st, key, *result, logs);
      landing.land(result, context_status(ctx) != ContextStatus::ok);
      st.emit(logs);
      return result;
    }
    std::unique_lock<std::mutex> lock(flight->mutex);
    while (!flight->done) {
      ContextStatus cs = context_status(ctx);
      if (cs != ContextStatus::ok) {
        Error e = context_error(cs, {"waiting for another caller's request to ", source_label(st.source)});
        ErrorAccess::set_source(e, st.source);
        return e;
      }
      flight->done_cv.wait_for(lock, time_left(ctx, kContextSlice));
    }
    if (flight->leader_stopped) continue;  // its context ended, not the endpoint: try ourselves
    Result<AuthResult> shared = *flight->outcome;
    if (shared) shared->resource.assign(resource);
    return shared;
  }
}

}  // namespace
}  // namespace detail

// ---- public functions ---------------------------------------------------------------------

namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// A pinned source (docs/protocol.md §4): the endpoint and the thumbprint are fixed now, and
// the Secret header may only go through a transport that checks the pin during the
// handshake (fail closed, as MSAL Go refuses an HTTP client it cannot pin).
Result<bool> choose_pinned_transport(const SourceSpec& spec, ClientState& st) {
  Result<PinnedEndpoint> pinned = pinned_endpoint(spec);
  if (!pinned) return pinned.error();
  if (st.config.http && !st.config.http->PinsServerCertificate())
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({"mi::WithHTTPClient: on ", spec.label, " the transport must check the endpoint's certificate against ",
             spec.pin_variable,
             " (HttpRequest::pinned_sha1) during the TLS handshake, and this one does not say so (its "
             "PinsServerCertificate() is false); implement the check and return true from PinsServerCertificate(), "
             "or leave out WithHTTPClient to use the built-in libcurl transport"}),
        spec.source);
  if (st.config.http) {
    st.transport = st.config.http;
  } else {
#if MI_DETAIL_CURL
    st.transport = std::make_shared<CurlTransport>(pinned->sha1_bytes, st.config.connect_timeout);
#endif
  }
  st.pinned.reset(new PinnedEndpoint(std::move(*pinned)));
  return true;
}

#if MI_DETAIL_CURL
// How the built-in transport checks a chain-validated endpoint (docs/protocol.md §12): the
// AKS token proxy against its own CA alone, with its TLS server name and never through an
// HTTP proxy (the proxy would have to reach the server name, which only the cluster knows);
// Entra ID against the system's trust store plus WithCAFile's anchors, through the
// environment's HTTPS_PROXY unless NO_PROXY exempts it, since Entra ID is on the internet.
CurlTrust chain_trust(const ClientState& st) {
  CurlTrust trust;
  const WorkloadSetup* workload = st.workload.get();
  if (workload != nullptr && workload->token_proxy) {
    trust.only_ca_file = workload->proxy_ca_file;
    trust.only_ca_pem = workload->proxy_ca_pem;
    trust.sni_name = workload->sni_name;
  } else {
    trust.extra_ca_file = st.config.ca_file;
    trust.use_proxy = true;
  }
  return trust;
}
#endif

// The transport the source's TLS mode asks for: the user's HttpClient if given (a pinned
// source checks it can pin), else the built-in one. Without libcurl an https source gets
// none, and its requests fail with tls (no_transport_error).
Result<bool> choose_transport(const SourceSpec& spec, ClientState& st) {
  switch (spec.tls) {
    case TlsMode::plain:
      st.transport = st.config.http ? st.config.http : std::make_shared<SocketTransport>(st.config.connect_timeout);
      return true;
    case TlsMode::pinned: return choose_pinned_transport(spec, st);
    case TlsMode::chain_validated:
      st.transport = st.config.http;
#if MI_DETAIL_CURL
      if (!st.transport)
        st.transport = std::make_shared<CurlTransport>(std::string(), st.config.connect_timeout, chain_trust(st));
#endif
      return true;
  }
  return true;
}

// How an option changes the configuration: `apply` takes its fields from the option's `patch`.
using ConfigApply = void (*)(ClientConfig& config, const ClientConfig& patch);

// Every ClientOption holds the same kind of callable (a patch and the plain function that
// applies it), so std::function's machinery is compiled once rather than once per option.
ClientOption patch_option(std::shared_ptr<ClientConfig> patch, ConfigApply apply) {
  return ClientOption([patch = std::move(patch), apply](ClientConfig& c) { apply(c, *patch); });
}

std::shared_ptr<ClientConfig> new_patch() { return std::make_shared<ClientConfig>(); }

}  // namespace
}  // namespace detail

MI_DETAIL_COLD ClientOption WithHTTPClient(std::shared_ptr<HttpClient> client) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->http = std::move(client);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.http = p.http; });
}
MI_DETAIL_COLD ClientOption WithRetryPolicyDisabled() {
  return detail::patch_option(detail::new_patch(),
                              [](detail::ClientConfig& c, const detail::ClientConfig&) { c.retry = false; });
}
MI_DETAIL_COLD ClientOption WithClientCapabilities(std::vector<std::string> capabilities) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->capabilities = std::move(capabilities);
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    for (const std::string& cap : p.capabilities) {
      std::string_view trimmed = detail::trim(cap);
      if (!trimmed.empty()) c.capabilities.push_back(std::string(trimmed));
    }
  });
}
MI_DETAIL_COLD ClientOption WithLogger(std::function<void(LogLevel, std::string_view)> logger) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->logger = std::move(logger);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.logger = p.logger; });
}
MI_DETAIL_COLD ClientOption WithCAFile(std::string pem_path) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->ca_file = std::move(pem_path);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.ca_file = p.ca_file; });
}
MI_DETAIL_COLD AcquireTokenOption WithClaims(std::string claims) {
  return AcquireTokenOption([claims = std::move(claims)](detail::AcquireConfig& c) { c.claims = claims; });
}
MI_DETAIL_COLD ClientOption WithMaxRetries(int retries) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->max_retries = retries;
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    c.max_retries = p.max_retries < 0 ? 0 : p.max_retries;
  });
}
MI_DETAIL_COLD ClientOption WithTimeouts(std::chrono::milliseconds connect, std::chrono::milliseconds attempt) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->connect_timeout = connect;
  patch->attempt_timeout = attempt;
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    if (p.connect_timeout.count() > 0) c.connect_timeout = p.connect_timeout;
    if (p.attempt_timeout.count() > 0) c.attempt_timeout = p.attempt_timeout;
  });
}
MI_DETAIL_COLD ClientOption WithClock(std::function<std::chrono::system_clock::time_point()> now) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->clock = std::move(now);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.clock = p.clock; });
}
MI_DETAIL_COLD ClientOption WithSleep(std::function<void(std::chrono::milliseconds)> sleep) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->sleep = std::move(sleep);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.sleep = p.sleep; });
}

Result<Client> New(ID id, const std::vector<ClientOption>& options) {
  auto state = std::make_shared<detail::ClientState>();
  state->source = detail::detect_source();
  const detail::SourceSpec& spec = detail::source_spec(state->source);
  Result<bool> supported = detail::check_identity(spec, id);
  if (!supported) return supported.error();
  if (spec.setup != nullptr) {
    Result<detail::WorkloadSetup> setup = spec.setup(spec, id);
    if (!setup) return setup.error();
    state->workload.reset(new detail::WorkloadSetup(std::move(*setup)));
  }
  state->id = std::move(id);
  state->cache_id = state->workload ? detail::cat({state->workload->client_id, " ", state->workload->url.str()})
                                    : state->id.value();
  for (const ClientOption& option : options) option.apply(state->config);
  Result<bool> transport = detail::choose_transport(spec, *state);
  if (!transport) return transport.error();
  return detail::ClientState::make_client(std::move(state));
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource) const {
  return detail::acquire(*state_, ctx, resource, detail::AcquireConfig{});
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource,
                                        const std::vector<AcquireTokenOption>& options) const {
  detail::AcquireConfig config;
  for (const AcquireTokenOption& option : options) option.apply(config);
  return detail::acquire(*state_, ctx, resource, config);
}

Source Client::source() const noexcept { return state_->source; }
const ID& Client::id() const noexcept { return state_->id; }

bool Error::retryable() const noexcept { return detail::retryable_outcome(source_, code_, status_code_); }

}  // namespace v1
}  // namespace mi

// ---- src/probe.hpp ----
// mi::Probe (docs/protocol.md §11): is a managed identity endpoint here? A program that runs
// both on Azure and on a developer's machine asks once at start-up and picks its credential,
// instead of finding out through a token request's retries (tens of seconds off Azure).
// A source the environment configures is answered from the variables alone; IMDS, and an
// Azure Arc agent found by its file, must answer one request within a short bound.

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// The bound when the caller's context has none: a metadata endpoint on the same host or
// link answers in milliseconds, and off Azure the address is usually silently dropped.
constexpr Millis kProbeTimeout{1000};

// Whether the source was found by its detection variables (all set). Those name the
// endpoint, so the answer needs no I/O. A source found otherwise (the Arc agent's file, or
// IMDS as the fallback) may or may not have an endpoint listening, so it is asked.
bool configured_by_variables(const SourceSpec& spec) {
  if (spec.detect_variables.at[0] == nullptr) return false;
  for (const char* name : spec.detect_variables)
    if (name != nullptr && env(name).empty()) return false;
  return true;
}

// A GET to the token URL with no query and no Metadata header: it asks for no token, IMDS
// refuses it with 400 and the Arc agent with 400 or 401, and any answer shows the endpoint
// is there.
Result<HttpRequest> probe_request(const SourceSpec& spec) {
  Result<Url> url = endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
  if (!url) return url.error();
  url->query.clear();
  HttpRequest request;
  request.method = "GET";
  request.url = url->str();
  add_pair(request.headers, "User-Agent", kUserAgent);
  return request;
}

// Docker Desktop answers for the IMDS address itself, with a 403 whose body says the network
// is unreachable: that is the container runtime, not a managed identity endpoint.
bool unreachable_network_answer(const HttpResponse& response) {
  if (response.status != 403) return false;
  const std::string_view word = "unreachable";
  const std::string_view body = response.body;
  for (size_t i = 0; i + word.size() <= body.size(); ++i)
    if (iequals(body.substr(i, word.size()), word)) return true;
  return false;
}

MI_DETAIL_COLD Error probe_absent(const SourceSpec& spec, const std::string& url, Errc code,
                                  std::initializer_list<std::string_view> why) {
  return ErrorAccess::make(code,
                           cat({"no managed identity endpoint answered (", spec.label, " at ", url, ": ", cat(why),
                                "); this program is probably not running on Azure, so use another credential here"}),
                           spec.source);
}

Result<Source> probe(const Context& ctx, const std::vector<ClientOption>& options) {
  ClientState st;
  st.source = detect_source();
  const SourceSpec& spec = source_spec(st.source);
  for (const ClientOption& option : options) option.apply(st.config);
  // The options are checked as New checks them (a pinned source's transport must pin, its
  // endpoint and thumbprint must parse), even where no request follows.
  Result<bool> transport = choose_transport(spec, st);
  if (!transport) return transport.error();
  ContextStatus cs = context_status(ctx);
  if (cs != ContextStatus::ok) {
    Error e = context_error(cs, {"probing for ", spec.label});
    ErrorAccess::set_source(e, st.source);
    return e;
  }
  if (configured_by_variables(spec)) return st.source;

  Result<HttpRequest> request = probe_request(spec);
  if (!request) return request.error();
  if (!st.transport) return no_transport_error(spec);
  // No deadline: the probe's own. A deadline, even a longer one, is the caller's choice.
  const bool own_bound = ctx.deadline() == SteadyClock::time_point::max();
  Context bounded = (own_bound ? ctx.WithTimeout(kProbeTimeout) : ctx).WithTimeout(st.config.attempt_timeout);
  // One attempt, never retried: a slow "no" is what the probe exists to avoid.
  Result<HttpResponse> response = call_transport(st, bounded, *request);
  if (response) {
    if (unreachable_network_answer(*response))
      return probe_absent(spec, request->url, Errc::network,
                          {"HTTP 403 saying the network is unreachable, which is how a container runtime such as "
                           "Docker Desktop answers for the IMDS address"});
    st.log(LogLevel::Info, cat({"probe: ", spec.label, " answered HTTP ", num(response->status), " at ", request->url,
                                ", so a managed identity endpoint is here"}));
    return st.source;
  }
  cs = context_status(ctx);
  if (cs == ContextStatus::canceled) {
    Error e = context_error(cs, {"probing for ", spec.label});
    ErrorAccess::set_source(e, st.source);
    return e;
  }
  const Error& error = response.error();
  if (error.code() == Errc::timeout)
    return probe_absent(spec, request->url, Errc::timeout,
                        {"no answer ", own_bound ? cat({"within ", num(kProbeTimeout.count()), " ms"})
                                                 : std::string("before the context's deadline")});
  if (error.code() == Errc::network) return probe_absent(spec, request->url, Errc::network, {error.message()});
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  return e;
}

}  // namespace
}  // namespace detail

Result<Source> Probe(const Context& ctx, const std::vector<ClientOption>& options) {
  return detail::probe(ctx, options);
}

}  // namespace v1
}  // namespace mi

#endif  // MI_IMPLEMENTATION

// ---- src/impl_end.hpp ----
// Internal macros do not leak into the includer: the Windows ones this header
// defined, and every MI_DETAIL_* except MI_DETAIL_IMPLEMENTATION_INCLUDED, which must
// outlive this inclusion so that a second one does not compile the implementation again.
// (tests/compile_check.py lists the macros the header leaves defined.)
#ifdef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#endif
#ifdef MI_DETAIL_UNDEF_NOMINMAX
#undef NOMINMAX
#undef MI_DETAIL_UNDEF_NOMINMAX
#endif
#undef MI_DETAIL_EXCEPTIONS
#undef MI_DETAIL_CPLUSPLUS
#undef MI_DETAIL_WINDOWS
#undef MI_DETAIL_CURL
#undef MI_DETAIL_CURL_LINKED
#undef MI_DETAIL_NOINLINE
#undef MI_DETAIL_COLD
