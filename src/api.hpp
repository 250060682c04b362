// The public API (README.md shows it in use). Everything here is OS-free; state of
// the heavier classes sits behind pointers so no macro changes a public layout.
#pragma once
#include "header_top.hpp"

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
