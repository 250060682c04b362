// Shared helpers for the tests: a clean identity environment, token bodies, and
// an injected mi::HttpClient that records requests and sends nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#if defined(_WIN32)
#include <filesystem>
#else
#include <stdlib.h>  // mkdtemp
#include <unistd.h>
#endif

#include "loopback_server.hpp"

namespace support {

inline void set_env(const char* name, const std::string& value) {
#if defined(_WIN32)
  _putenv_s(name, value.c_str());
#else
  setenv(name, value.c_str(), 1);
#endif
}
inline void unset_env(const char* name) {
#if defined(_WIN32)
  _putenv_s(name, "");
#else
  unsetenv(name);
#endif
}

#if defined(_WIN32)
// A new directory under %TEMP% (where the POSIX tests use mkdtemp), and its removal.
inline std::string make_temp_dir(const std::string& prefix) {
  static std::atomic<unsigned> counter{0};
  const std::filesystem::path base = std::filesystem::temp_directory_path();
  const std::string stamp = std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  for (;;) {
    std::filesystem::path p = base / (prefix + "-" + stamp + "-" + std::to_string(++counter));
    if (std::filesystem::create_directory(p)) return p.string();
  }
}
inline void remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}
#endif

// Every variable that selects a source or feeds a request.
inline const std::vector<const char*>& identity_variables() {
  static const std::vector<const char*> names = {
      "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET",
      "IMDS_ENDPOINT",     "AZURE_POD_IDENTITY_AUTHORITY_HOST",              "DEFAULT_IDENTITY_CLIENT_ID",
      // workload identity (docs/protocol.md §12), and the proxy variables its transport honours
      "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_AUTHORITY_HOST",
      "AZURE_KUBERNETES_TOKEN_PROXY", "AZURE_KUBERNETES_CA_FILE", "AZURE_KUBERNETES_CA_DATA",
      "AZURE_KUBERNETES_SNI_NAME", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"};
  return names;
}

// Clears the identity environment for the scope of a test and restores it afterwards.
class CleanEnv {
 public:
  CleanEnv() {
    for (const char* name : identity_variables()) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v ? std::string(v) : std::string(), v != nullptr);
      unset_env(name);
    }
  }
  ~CleanEnv() {
    for (auto& s : saved_) {
      if (std::get<2>(s)) set_env(std::get<0>(s), std::get<1>(s));
      else unset_env(std::get<0>(s));
    }
  }
  CleanEnv(const CleanEnv&) = delete;
  CleanEnv& operator=(const CleanEnv&) = delete;

 private:
  std::vector<std::tuple<const char*, std::string, bool>> saved_;
};

inline long long now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// An IMDS-shaped success body (every value a string, as IMDS sends them).
inline std::string imds_body(const std::string& token, long long expires_in = 3600, const std::string& extra = "") {
  long long now = now_unix();
  return "{\"access_token\":\"" + token + "\",\"client_id\":\"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10\",\"expires_in\":\"" +
         std::to_string(expires_in) + "\",\"expires_on\":\"" + std::to_string(now + expires_in) +
         "\",\"ext_expires_in\":\"" + std::to_string(expires_in) + "\",\"not_before\":\"" + std::to_string(now) +
         "\",\"resource\":\"https://management.azure.com/\",\"token_type\":\"Bearer\"" + extra + "}";
}

// Issues "<prefix>-1", "<prefix>-2", ... as tokens.
class TokenMint {
 public:
  explicit TokenMint(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string next() { return prefix_ + "-" + std::to_string(++count_); }
  int count() const { return count_.load(); }

 private:
  std::string prefix_;
  std::atomic<int> count_{0};
};

// An injected transport: records each request and answers from a function, without any I/O.
class RecordingHttpClient : public mi::HttpClient {
 public:
  using Responder = std::function<mi::Result<mi::HttpResponse>(const mi::HttpRequest&)>;
  explicit RecordingHttpClient(Responder responder) : responder_(std::move(responder)) {}

  mi::Result<mi::HttpResponse> Do(const mi::Context&, const mi::HttpRequest& request) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_.push_back(request);
    }
    return responder_(request);
  }
  std::vector<mi::HttpRequest> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }
  size_t count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.size();
  }

 private:
  Responder responder_;
  mutable std::mutex mutex_;
  std::vector<mi::HttpRequest> requests_;
};

inline mi::HttpResponse response(int status, const std::string& body,
                                 std::vector<std::pair<std::string, std::string>> headers = {}) {
  mi::HttpResponse r;
  r.status = status;
  r.body = body;
  r.headers = std::move(headers);
  return r;
}

inline std::string header_of(const mi::HttpRequest& request, const std::string& name) {
  for (const auto& h : request.headers)
    if (testsrv::lower(h.first) == testsrv::lower(name)) return h.second;
  return "";
}

// Records the waits the retry loop asks for instead of sleeping.
struct SleepRecorder {
  std::shared_ptr<std::vector<long long>> waits = std::make_shared<std::vector<long long>>();
  std::shared_ptr<std::mutex> mutex = std::make_shared<std::mutex>();
  std::function<void(std::chrono::milliseconds)> hook() const {
    auto w = waits;
    auto m = mutex;
    return [w, m](std::chrono::milliseconds d) {
      std::lock_guard<std::mutex> lock(*m);
      w->push_back(d.count());
    };
  }
  std::vector<long long> get() const {
    std::lock_guard<std::mutex> lock(*mutex);
    return *waits;
  }
};

// A fresh directory (/tmp/<prefix>-XXXXXX, or under %TEMP%), removed with its contents at
// the end of the scope. Paths are built by appending "/name": Windows takes either separator.
struct TempDir {
  std::string path;
#if defined(_WIN32)
  explicit TempDir(const std::string& prefix = "mi-test") : path(make_temp_dir(prefix)) {}
  ~TempDir() { remove_tree(path); }
#else
  explicit TempDir(const std::string& prefix = "mi-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    path = mkdtemp(&tmpl[0]);
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
#endif
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Writes `content` to `path` byte for byte, replacing what was there.
inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

// Service Fabric's three variables (read at mi::New).
inline void service_fabric_env(const std::string& endpoint, const std::string& thumbprint, const std::string& secret) {
  set_env("IDENTITY_ENDPOINT", endpoint);
  set_env("IDENTITY_HEADER", secret);
  set_env("IDENTITY_SERVER_THUMBPRINT", thumbprint);
}

}  // namespace support
