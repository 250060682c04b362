// Workload identity over loopback TLS through the built-in libcurl transport (docs/protocol.md
// §12): the chain and host name checked against the trust store plus mi::WithCAFile, failures
// as tls with nothing sent, redirects refused, HTTPS_PROXY and NO_PROXY honoured (Service
// Fabric still ignores them), and the AKS token proxy with its own CA (file or PEM text) and
// its TLS server name. AZURE_AUTHORITY_HOST always points at loopback.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#if !defined(MI_USE_CURL) || defined(_WIN32)
TEST_CASE("workload identity over TLS") { MESSAGE("skipped: needs MI_USE_CURL on a POSIX system"); }
#else

#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cache_support.hpp"
#include "test_support.hpp"
#include "tls_server.hpp"

using support::CleanEnv;
using support::set_env;
using support::unset_env;
using testsrv::Reply;
using testsrv::Request;

namespace {

constexpr const char* kTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr const char* kClient = "5e29463d-71da-4fe0-8e69-999b57db23b0";
constexpr const char* kAssertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZDp3aSJ9.c2VjcmV0LXNpZw";

std::string entra_token(const std::string& token) {
  return "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,\"access_token\":\"" + token + "\"}";
}

// A scratch directory with the token file and PEM files, removed at the end.
class Scratch {
 public:
  Scratch() {
    char tmpl[] = "/tmp/mi-wi-tls-XXXXXX";
    const char* made = mkdtemp(tmpl);
    REQUIRE(made != nullptr);
    dir_ = made;
    std::ofstream(token_file()) << kAssertion << "\n";
  }
  ~Scratch() { (void)std::system(("rm -rf '" + dir_ + "'").c_str()); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  std::string token_file() const { return dir_ + "/token"; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

// A CA, and leaves it issued for chosen names.
struct Pki {
  tlssrv::Identity ca = tlssrv::make_identity("mi-test workload CA", nullptr, true);
  tlssrv::Identity other_ca = tlssrv::make_identity("mi-test other CA", nullptr, true);
  tlssrv::Identity leaf(const std::vector<std::string>& names, const tlssrv::Identity* issuer = nullptr,
                        tlssrv::Validity validity = tlssrv::Validity()) {
    return tlssrv::make_identity("mi-test server", issuer != nullptr ? issuer : &ca, false, names, validity);
  }
};

void workload_env(const Scratch& scratch, uint16_t port) {
  set_env("AZURE_FEDERATED_TOKEN_FILE", scratch.token_file());
  set_env("AZURE_TENANT_ID", kTenant);
  set_env("AZURE_CLIENT_ID", kClient);
  set_env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:" + std::to_string(port) + "/");
}

// A forward proxy on 127.0.0.1 that understands CONNECT (to 127.0.0.1 only) and relays
// bytes both ways; it counts the tunnels it opened and remembers their targets.
class ConnectProxy {
 public:
  ConnectProxy() {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    socklen_t len = sizeof addr;
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~ConnectProxy() {
    stopping_ = true;
    acceptor_.join();
    ::close(listener_);
    for (auto& t : workers_) t.join();
  }
  ConnectProxy(const ConnectProxy&) = delete;
  ConnectProxy& operator=(const ConnectProxy&) = delete;
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int tunnels() const { return tunnels_.load(); }
  std::vector<std::string> targets() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return targets_;
  }

 private:
  void accept_loop() {
    tlssrv::block_sigpipe_in_this_thread();
    while (!stopping_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int s = ::accept(listener_, nullptr, nullptr);
      if (s < 0) continue;
      workers_.emplace_back([this, s] { serve(s); });
    }
  }
  void serve(int client) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos && !stopping_) {
      pollfd p{client, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      ssize_t n = ::recv(client, buf, sizeof buf, 0);
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    // "CONNECT 127.0.0.1:PORT HTTP/1.1"
    const std::string prefix = "CONNECT 127.0.0.1:";
    int upstream = -1;
    if (head.compare(0, prefix.size(), prefix) == 0) {
      std::string target = head.substr(8, head.find(' ', 8) - 8);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        targets_.push_back(target);
      }
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(std::stoi(target.substr(10))));
      upstream = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(upstream);
        upstream = -1;
      }
    }
    if (upstream < 0) {
      const char refuse[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
      (void)::send(client, refuse, sizeof refuse - 1, 0);
      ::close(client);
      return;
    }
    ++tunnels_;
    const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    (void)::send(client, ok, sizeof ok - 1, 0);
    pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
    while (!stopping_) {
      if (::poll(fds, 2, 20) <= 0) continue;
      bool closed = false;
      for (int i = 0; i < 2 && !closed; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (n <= 0 || ::send(fds[1 - i].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) closed = true;
      }
      if (closed) break;
    }
    ::close(upstream);
    ::close(client);
  }

  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> tunnels_{0};
  std::thread acceptor_;
  std::vector<std::thread> workers_;
  mutable std::mutex mutex_;
  std::vector<std::string> targets_;
};

mi::Result<mi::AuthResult> acquire(const std::vector<mi::ClientOption>& options = {}) {
  support::fresh_cache();
  auto client = mi::New(mi::SystemAssigned(), options);
  if (!client) return client.error();
  return client->AcquireToken(mi::Context::Background().WithTimeout(std::chrono::seconds(30)),
                              "https://vault.azure.net");
}

}  // namespace

// ---- the chain and the host name -------------------------------------------------------------

TEST_CASE("TLS: a chain to a WithCAFile anchor and a matching name; the exact request bytes") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::Server server(pki.leaf({"DNS:localhost", "IP:127.0.0.1"}),
                        [](const Request&) { return Reply::json(entra_token("tls-1")); });
  workload_env(scratch, server.port());
  auto token = acquire({mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled()});
  REQUIRE(token);
  CHECK(token->access_token == "tls-1");
  Request r = server.last();
  const std::string form = std::string("grant_type=client_credentials&client_id=") + kClient +
                           "&scope=https%3A%2F%2Fvault.azure.net%2F.default"
                           "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
                           "&client_assertion=" + kAssertion;
  const std::string request_id = r.header("client-request-id");
  CHECK(request_id.size() == 36);
  CHECK(r.raw == std::string("POST /") + kTenant + "/oauth2/v2.0/token HTTP/1.1\r\n"
                 "Host: 127.0.0.1:" + std::to_string(server.port()) + "\r\n"
                 "User-Agent: managed-identity-cpp/" MI_VERSION_STRING "\r\n"
                 "Accept: application/json\r\n"
                 "x-client-SKU: managed-identity-cpp\r\n"
                 "x-client-Ver: " MI_VERSION_STRING "\r\n"
                 "return-client-request-id: true\r\n"
                 "client-request-id: " + request_id + "\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\n"
                 "Content-Length: " + std::to_string(form.size()) + "\r\n"
                 "\r\n" + form);
}

TEST_CASE("TLS: failures are tls and send nothing: unknown CA, wrong host name, self-signed, bad CA file") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::write_pem(pki.other_ca, scratch.path("other.pem"));
  std::ofstream(scratch.path("junk.pem")) << "not a certificate\n";
  struct Case {
    const char* name;
    tlssrv::Identity identity;
    std::string ca_file;  // "" : none (the system store only)
    const char* says;
  };
  std::vector<Case> cases = {
      {"no anchor for the chain", pki.leaf({"IP:127.0.0.1"}), "", "TLS handshake"},
      {"an anchor for another chain", pki.leaf({"IP:127.0.0.1"}), scratch.path("other.pem"), "TLS handshake"},
      {"a name that is not the host", pki.leaf({"DNS:login.example", "IP:10.9.8.7"}), scratch.path("ca.pem"),
       "TLS handshake"},
      {"self-signed", tlssrv::make_identity("self", nullptr, false, {"IP:127.0.0.1"}), scratch.path("ca.pem"),
       "TLS handshake"},
      {"expired, from the trusted CA", pki.leaf({"IP:127.0.0.1"}, nullptr, tlssrv::expired()), scratch.path("ca.pem"),
       "expired"},
      {"a CA file that does not exist", pki.leaf({"IP:127.0.0.1"}), scratch.path("missing.pem"), "mi::WithCAFile"},
      {"a CA file without certificates", pki.leaf({"IP:127.0.0.1"}), scratch.path("junk.pem"), "mi::WithCAFile"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    tlssrv::Server server(c.identity, [](const Request&) { return Reply::json(entra_token("never")); });
    workload_env(scratch, server.port());
    std::vector<mi::ClientOption> options = {mi::WithRetryPolicyDisabled()};
    if (!c.ca_file.empty()) options.push_back(mi::WithCAFile(c.ca_file));
    auto token = acquire(options);
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::tls);
    CHECK(token.error().source() == mi::Source::WorkloadIdentity);
    CHECK(token.error().message().find(c.says) != std::string::npos);
    CHECK_FALSE(token.error().retryable());
    server.idle();
    CHECK(server.app_bytes() == 0);
    CHECK(server.request_count() == 0);
  }
}

// The transport builds its trust store (the system's anchors and WithCAFile's) once and
// shares it between requests: every handshake must still check the chain, the dates and the
// host name, on a client's first request and on later ones alike.
TEST_CASE("TLS: one client, many cold acquisitions; a bad certificate fails on the first and on a later request") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  const tlssrv::Identity good = pki.leaf({"IP:127.0.0.1"});
  tlssrv::Server server(good, [](const Request&) { return Reply::json(entra_token("many")); });
  workload_env(scratch, server.port());
  support::fresh_cache();
  const std::vector<mi::ClientOption> options = {mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled()};
  auto client = mi::New(mi::SystemAssigned(), options);
  REQUIRE(client);
  int resources = 0;
  auto acquire_new = [&resources](mi::Client& c) {  // a resource not cached yet: a request
    return c.AcquireToken(mi::Context::Background().WithTimeout(std::chrono::seconds(30)),
                          "https://r" + std::to_string(++resources) + ".example");
  };
  for (int i = 0; i < 3; ++i) {
    auto token = acquire_new(*client);
    REQUIRE_MESSAGE(token, token.error().message());
    CHECK(token->token_source == mi::TokenSource::IdentityProvider);
  }
  CHECK(server.request_count() == 3);
  CHECK(server.handshakes_ok() == 3);

  struct Case {
    const char* name;
    tlssrv::Identity identity;
    const char* says;  // libcurl's (OpenSSL's) reason, in the message
  };
  const std::vector<Case> cases = {
      {"a name that is not the host", pki.leaf({"DNS:login.example", "IP:10.9.8.7"}), "subject name"},
      {"an untrusted CA", pki.leaf({"IP:127.0.0.1"}, &pki.other_ca), "unable to get local issuer certificate"},
      {"expired", pki.leaf({"IP:127.0.0.1"}, nullptr, tlssrv::expired()), "expired"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    server.present(c.identity);
    const size_t requests = server.request_count();
    auto fresh = mi::New(mi::SystemAssigned(), options);  // its first request builds its store
    REQUIRE(fresh);
    for (mi::Client* which : {&*fresh, &*client}) {
      CAPTURE(which == &*client ? "later request" : "first request");
      auto token = acquire_new(*which);
      REQUIRE_FALSE(token);
      CHECK(token.error().code() == mi::Errc::tls);
      CHECK(token.error().message().find(c.says) != std::string::npos);
      REQUIRE(server.idle());
      CHECK(server.request_count() == requests);
    }
  }
  server.present(good);
  auto again = acquire_new(*client);
  REQUIRE_MESSAGE(again, again.error().message());
  CHECK(server.request_count() == 4);
}

// The store is kept for 24 hours, as libcurl keeps its own cached one: the anchors file is
// read when the client's store is built, not at every request.
TEST_CASE("TLS: WithCAFile is read once per client, not at every request") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::Server server(pki.leaf({"IP:127.0.0.1"}), [](const Request&) { return Reply::json(entra_token("once")); });
  workload_env(scratch, server.port());
  support::fresh_cache();
  auto client = mi::New(mi::SystemAssigned(), mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  auto ctx = mi::Context::Background().WithTimeout(std::chrono::seconds(30));
  auto first = client->AcquireToken(ctx, "https://first.example");
  REQUIRE_MESSAGE(first, first.error().message());
  std::ofstream(scratch.path("ca.pem"), std::ios::trunc) << "not a certificate any more\n";
  auto second = client->AcquireToken(ctx, "https://second.example");
  REQUIRE_MESSAGE(second, second.error().message());
  CHECK(server.request_count() == 2);
  // A new client reads the file again.
  auto other = mi::New(mi::SystemAssigned(), mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled());
  REQUIRE(other);
  auto refused = other->AcquireToken(ctx, "https://third.example");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code() == mi::Errc::tls);
  CHECK(refused.error().message().find("mi::WithCAFile") != std::string::npos);
  CHECK(server.request_count() == 2);
}

TEST_CASE("TLS: a redirect is an http_status error, never followed") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::Server server(pki.leaf({"IP:127.0.0.1"}), [](const Request& r) {
    if (r.path.find("elsewhere") != std::string::npos) return Reply::json(entra_token("followed"));
    return Reply::http(307, "", {{"Location", "/elsewhere"}});
  });
  workload_env(scratch, server.port());
  auto token = acquire({mi::WithCAFile(scratch.path("ca.pem"))});
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 307);
  CHECK(server.request_count() == 1);
}

TEST_CASE("TLS: Entra's errors and a retried 503 over the wire") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  std::atomic<int> calls{0};
  tlssrv::Server server(pki.leaf({"IP:127.0.0.1"}), [&calls](const Request& r) {
    if (++calls == 1) return Reply::http(503, "{\"error\":\"temporarily_unavailable\"}", {{"Retry-After", "1"}});
    if (r.body.find("client_id=bad") != std::string::npos)
      return Reply::http(400, "{\"error\":\"unauthorized_client\",\"error_description\":\"AADSTS700016: Application "
                              "not found.\",\"error_codes\":[700016],\"correlation_id\":\"c-1\"}");
    return Reply::json(entra_token("after-503"));
  });
  workload_env(scratch, server.port());
  support::SleepRecorder sleeps;
  auto token = acquire({mi::WithCAFile(scratch.path("ca.pem")), mi::WithSleep(sleeps.hook())});
  REQUIRE(token);
  CHECK(token->access_token == "after-503");
  CHECK(sleeps.get().size() == 1);
  set_env("AZURE_CLIENT_ID", "bad");
  auto refused = acquire({mi::WithCAFile(scratch.path("ca.pem")), mi::WithSleep(sleeps.hook())});
  REQUIRE_FALSE(refused);
  CHECK(refused.error().status_code() == 400);
  CHECK(refused.error().error_code() == "unauthorized_client");
  CHECK(refused.error().correlation_id() == "c-1");
  CHECK(refused.error().message().find("not an application in this tenant") != std::string::npos);
}

// ---- proxies ---------------------------------------------------------------------------------

TEST_CASE("proxy: HTTPS_PROXY carries the request through a CONNECT tunnel; NO_PROXY bypasses it") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::Server server(pki.leaf({"IP:127.0.0.1"}), [](const Request&) { return Reply::json(entra_token("p")); });
  ConnectProxy proxy;
  workload_env(scratch, server.port());
  set_env("HTTPS_PROXY", proxy.url());
  REQUIRE(acquire({mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled()}));
  CHECK(proxy.tunnels() == 1);
  REQUIRE(proxy.targets().size() == 1);
  CHECK(proxy.targets()[0] == "127.0.0.1:" + std::to_string(server.port()));
  CHECK(server.request_count() == 1);
  set_env("NO_PROXY", "127.0.0.1");
  REQUIRE(acquire({mi::WithCAFile(scratch.path("ca.pem")), mi::WithRetryPolicyDisabled()}));
  CHECK(proxy.tunnels() == 1);
  CHECK(server.request_count() == 2);
}

TEST_CASE("proxy: Service Fabric's pinned endpoint still ignores HTTPS_PROXY") {
  CleanEnv env;
  Pki pki;
  tlssrv::Identity leaf = pki.leaf({"IP:127.0.0.1"});
  tlssrv::Server server(leaf, [](const Request&) {
    return Reply::json("{\"access_token\":\"sf\",\"expires_on\":" + std::to_string(support::now_unix() + 3600) +
                       ",\"token_type\":\"Bearer\"}");
  });
  ConnectProxy proxy;
  set_env("HTTPS_PROXY", proxy.url());
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
  set_env("IDENTITY_HEADER", "sf-secret");
  set_env("IDENTITY_SERVER_THUMBPRINT", leaf.sha1_hex());
  auto token = acquire({mi::WithRetryPolicyDisabled()});
  REQUIRE(token);
  CHECK(proxy.tunnels() == 0);
  CHECK(server.request_count() == 1);
}

// ---- the AKS token proxy (identity binding) ----------------------------------------------------

TEST_CASE("token proxy: its own CA (file or PEM text) and its TLS server name; the path prefix") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.other_ca, scratch.path("proxy-ca.pem"));
  tlssrv::Server server(pki.leaf({"DNS:aks-proxy.test"}, &pki.other_ca),
                        [](const Request&) { return Reply::json(entra_token("via-proxy")); });
  ConnectProxy http_proxy;
  workload_env(scratch, tlssrv::closed_port());  // the authority itself is never contacted
  set_env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:" + std::to_string(tlssrv::closed_port()) + "/");
  set_env("AZURE_KUBERNETES_TOKEN_PROXY", "https://127.0.0.1:" + std::to_string(server.port()) + "/tokenproxy");
  set_env("AZURE_KUBERNETES_SNI_NAME", "aks-proxy.test");
  set_env("HTTPS_PROXY", http_proxy.url());  // not for the token proxy
  for (bool as_data : {false, true}) {
    CAPTURE(as_data);
    if (as_data) {
      unset_env("AZURE_KUBERNETES_CA_FILE");
      set_env("AZURE_KUBERNETES_CA_DATA", tlssrv::pem(pki.other_ca));
    } else {
      set_env("AZURE_KUBERNETES_CA_FILE", scratch.path("proxy-ca.pem"));
    }
    auto token = acquire({mi::WithRetryPolicyDisabled()});
    REQUIRE(token);
    CHECK(token->access_token == "via-proxy");
    Request r = server.last();
    CHECK(r.path == std::string("/tokenproxy/") + kTenant + "/oauth2/v2.0/token");
    CHECK(r.header("Host") == "127.0.0.1:" + std::to_string(server.port()));
    CHECK(server.last_sni() == "aks-proxy.test");
  }
  CHECK(http_proxy.tunnels() == 0);
}

TEST_CASE("token proxy: only its CA is trusted, and the certificate must name the SNI name") {
  CleanEnv env;
  Scratch scratch;
  Pki pki;
  tlssrv::write_pem(pki.ca, scratch.path("ca.pem"));
  tlssrv::write_pem(pki.other_ca, scratch.path("proxy-ca.pem"));
  struct Case {
    const char* name;
    tlssrv::Identity identity;
    const char* sni;
    std::string with_ca_file;
  };
  std::vector<Case> cases = {
      // WithCAFile anchors are for Entra ID, not for the token proxy.
      {"a chain to a WithCAFile anchor", pki.leaf({"DNS:aks-proxy.test"}), "aks-proxy.test", scratch.path("ca.pem")},
      {"a certificate for another name", pki.leaf({"DNS:other.test"}, &pki.other_ca), "aks-proxy.test", ""},
      {"no SNI name: the address must match", pki.leaf({"DNS:aks-proxy.test"}, &pki.other_ca), "", ""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    tlssrv::Server server(c.identity, [](const Request&) { return Reply::json(entra_token("never")); });
    workload_env(scratch, tlssrv::closed_port());
    set_env("AZURE_KUBERNETES_TOKEN_PROXY", "https://127.0.0.1:" + std::to_string(server.port()));
    set_env("AZURE_KUBERNETES_CA_FILE", scratch.path("proxy-ca.pem"));
    set_env("AZURE_KUBERNETES_SNI_NAME", c.sni);
    std::vector<mi::ClientOption> options = {mi::WithRetryPolicyDisabled()};
    if (!c.with_ca_file.empty()) options.push_back(mi::WithCAFile(c.with_ca_file));
    auto token = acquire(options);
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::tls);
    server.idle();
    CHECK(server.app_bytes() == 0);
  }
}

#endif  // MI_USE_CURL
