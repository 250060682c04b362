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
#pragma once
#include "context.hpp"
#include "http.hpp"
#include "url.hpp"

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
