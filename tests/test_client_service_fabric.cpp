// Service Fabric through mi::New and AcquireToken (docs/protocol.md §2, §4, §7): a real TLS
// server on loopback, the certificate pin, New's checks, token revocation and
// client capabilities.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "test_support.hpp"
#include "cache_support.hpp"

using namespace std::chrono_literals;
using support::CleanEnv;
using support::set_env;
using testsrv::Reply;
using testsrv::Request;

namespace {
using Params = std::vector<std::pair<std::string, std::string>>;

using support::fresh_cache;

const std::string kSfSecret = "sf-secret-0c4e";
}  // namespace

TEST_CASE("Service Fabric: New refuses an http:// endpoint and malformed thumbprints") {
  CleanEnv env;
  const std::string good = "0123456789abcdef0123456789ABCDEF01234567";
  for (const char* endpoint : {"http://127.0.0.1:2377/token", "https://", "not a url", "https://host:99999/x"}) {
    CAPTURE(endpoint);
    support::service_fabric_env(endpoint, good, kSfSecret);
    auto client = mi::New(mi::SystemAssigned());
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
    CHECK(client.error().message().find("IDENTITY_ENDPOINT") != std::string::npos);
  }
  for (const char* thumb : {"0123", "0123456789abcdef0123456789abcdef012345678", "zz23456789abcdef0123456789abcdef01234567",
                            "0123456789abcdef0123456789abcdef0123456"}) {
    CAPTURE(thumb);
    support::service_fabric_env("https://127.0.0.1:2377/token", thumb, kSfSecret);
    auto client = mi::New(mi::SystemAssigned());
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
    CHECK(client.error().message().find("IDENTITY_SERVER_THUMBPRINT") != std::string::npos);
  }
  support::service_fabric_env("https://127.0.0.1:2377/token", "01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67",
                              kSfSecret);
  CHECK(mi::New(mi::SystemAssigned()));
  support::service_fabric_env("https://127.0.0.1:2377/token", " 0123456789abcdef 0123456789abcdef01234567 ", kSfSecret);
  CHECK(mi::New(mi::SystemAssigned()));
  // As pasted from Windows' certificate dialog: a U+200E mark in front.
  support::service_fabric_env("https://127.0.0.1:2377/token", "\xE2\x80\x8E" + good, kSfSecret);
  CHECK(mi::New(mi::SystemAssigned()));
}

#if defined(MI_USE_CURL)
#include "tls_server.hpp"

namespace {
std::string sf_body(const std::string& token) {
  return "{\"token_type\":\"Bearer\",\"access_token\":\"" + token +
         "\",\"expires_on\":" + std::to_string(support::now_unix() + 7200) + ",\"resource\":\"https://vault.azure.net/\"}";
}
}  // namespace

TEST_CASE("Service Fabric: the exact request over pinned TLS, then the cache") {
  CleanEnv env;
  fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  support::TokenMint mint("sf");
  tlssrv::Server server(identity, [&](const Request&) { return Reply::json(sf_body(mint.next())); });
  support::service_fabric_env(server.url("/metadata/identity/oauth2/token?keep=1"), identity.sha1_hex(),
                              kSfSecret);
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  CHECK(client->source() == mi::Source::ServiceFabric);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(token);
  CHECK(token->access_token == "sf-1");
  Request r = server.last();
  CHECK(r.method == "GET");
  CHECK(r.path == "/metadata/identity/oauth2/token");
  CHECK(r.query_list() == Params{{"api-version", "2019-07-01-preview"}, {"keep", "1"}, {"resource", "https://vault.azure.net"}});
  CHECK(r.header("Secret") == "sf-secret-0c4e");
  CHECK(r.header("Accept") == "application/json");
  CHECK_FALSE(r.has_header("Metadata"));
  CHECK(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net")->token_source == mi::TokenSource::Cache);
  CHECK(server.request_count() == 1);
}

TEST_CASE("Service Fabric: the endpoint is fixed at New, the secret read per request") {
  CleanEnv env;
  fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  tlssrv::Server server(identity, [](const Request&) { return Reply::json(sf_body("sf-fixed")); });
  support::service_fabric_env(server.url(), identity.sha1_hex(), kSfSecret);
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  set_env("IDENTITY_ENDPOINT", "https://127.0.0.1:1/elsewhere");
  set_env("IDENTITY_HEADER", "rotated-secret");
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://fixed"));
  CHECK(server.request_count() == 1);
  CHECK(server.last().header("Secret") == "rotated-secret");
}

TEST_CASE("Service Fabric: a wrong thumbprint fails with tls and the server gets no request") {
  CleanEnv env;
  fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  tlssrv::Identity other = tlssrv::make_identity("someone-else");
  tlssrv::Server server(identity, [](const Request&) { return Reply::json(sf_body("never")); });
  support::service_fabric_env(server.url(), other.sha1_hex(), kSfSecret);
  auto client = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://pinned");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::tls);
  CHECK(token.error().source() == mi::Source::ServiceFabric);
  CHECK(token.error().message().find("sf-secret-0c4e") == std::string::npos);
  CHECK(server.idle());
  CHECK(server.request_count() == 0);
  CHECK(server.app_bytes() == 0);
}

TEST_CASE("Service Fabric: a redirect is refused and its target gets no request") {
  CleanEnv env;
  fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  tlssrv::Server target(identity, [](const Request&) { return Reply::json(sf_body("redirected")); });
  tlssrv::Server server(identity, [&target](const Request&) {
    return Reply::http(307, "", {{"Location", target.url()}});
  });
  support::service_fabric_env(server.url(), identity.sha1_hex(), kSfSecret);
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://redirect");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 307);
  CHECK(target.connections() == 0);
}

TEST_CASE("Service Fabric: claims send token_sha256_to_refresh of the cached token; capabilities send xms_cc") {
  CleanEnv env;
  fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  support::TokenMint mint("sf-revoked");
  tlssrv::Server server(identity, [&](const Request&) { return Reply::json(sf_body(mint.next())); });
  support::service_fabric_env(server.url(), identity.sha1_hex(), kSfSecret);
  auto client = mi::New(mi::SystemAssigned(), mi::WithClientCapabilities({"cp1", " llt ", ""}));
  REQUIRE(client);
  auto first = client->AcquireToken(mi::Context::Background(), "https://revocation");
  REQUIRE(first);
  Request r1 = server.last();
  CHECK(r1.query()["xms_cc"] == "cp1,llt");
  CHECK(r1.query().count("token_sha256_to_refresh") == 0);  // no claims yet
  auto second = client->AcquireToken(mi::Context::Background(), "https://revocation", mi::WithClaims("{\"x\":1}"));
  REQUIRE(second);
  CHECK(second->access_token == "sf-revoked-2");
  Request r2 = server.last();
  // SHA-256 computed independently with OpenSSL.
  unsigned char md[32];
  SHA256(reinterpret_cast<const unsigned char*>(first->access_token.data()), first->access_token.size(), md);
  std::string hex;
  for (unsigned char c : md) {
    static const char digits[] = "0123456789abcdef";
    hex.push_back(digits[c >> 4]);
    hex.push_back(digits[c & 15]);
  }
  CHECK(r2.query()["token_sha256_to_refresh"] == hex);
  CHECK(r2.raw.find("\"x\"") == std::string::npos);  // the claims themselves are not sent
  CHECK(client->AcquireToken(mi::Context::Background(), "https://revocation")->access_token == "sf-revoked-2");
}

TEST_CASE("SHA-256 of the library matches OpenSSL") {
  for (std::string s : {std::string(), std::string("abc"), std::string(55, 'x'), std::string(56, 'y'),
                        std::string(64, 'z'), std::string(1000, 'q')}) {
    unsigned char md[32];
    SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), md);
    CHECK(mi::detail::sha256_hex(s) == mi::detail::to_hex(md, 32));
  }
}

#else

TEST_CASE("Service Fabric without MI_USE_CURL: a tls error that says how to enable HTTPS") {
  CleanEnv env;
  fresh_cache();
  support::service_fabric_env("https://127.0.0.1:2377/token", "0123456789abcdef0123456789abcdef01234567", kSfSecret);
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://no-curl");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::tls);
  CHECK(token.error().message().find("MI_USE_CURL") != std::string::npos);
}

#endif
