// libcurl loaded at run time (MI_USE_CURL without MI_CURL_LINKED): not before the first
// HTTPS request, and a libcurl that cannot be loaded or used fails the request with a tls
// error before anything is sent. tests/CMakeLists.txt builds this file once per case:
//   curl_loading          the default library names: loaded by the first HTTPS request only
//   curl_loading_<case>   MI_CURL_LIBRARY set to a library that must be refused, and
//                         MI_TEST_CURL_PROBLEM to a phrase the error must contain
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "test_support.hpp"
#include "cache_support.hpp"

#if !defined(MI_USE_CURL) || MI_DETAIL_CURL_LINKED

TEST_CASE("libcurl loaded at run time") { MESSAGE("skipped: built without MI_USE_CURL, or with libcurl linked"); }

#else

#include <dlfcn.h>

#include "tls_server.hpp"

using support::CleanEnv;
using support::set_env;
using testsrv::Reply;
using testsrv::Request;

namespace {

const std::string kSecret = "sf-secret-loading-7d1e";

std::string sf_body(const std::string& token) {
  return "{\"token_type\":\"Bearer\",\"access_token\":\"" + token +
         "\",\"expires_on\":" + std::to_string(support::now_unix() + 7200) + ",\"resource\":\"https://vault.azure.net/\"}";
}

}  // namespace

#if !defined(MI_CURL_LIBRARY)

namespace {
// RTLD_NOLOAD finds a library already in the process and loads nothing; the reference it
// takes is given back at once.
bool libcurl_in_process() {
  void* handle = dlopen("libcurl.so.4", RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  dlclose(handle);
  return true;
}
}  // namespace

TEST_CASE("libcurl is loaded by the first HTTPS request, not at start-up, by New or by plain HTTP") {
  CleanEnv env;
  support::fresh_cache();
  CHECK_FALSE(libcurl_in_process());

  // IMDS over plain HTTP.
  support::TokenMint imds_mint("imds");
  testsrv::Server imds([&](const Request&) { return Reply::json(support::imds_body(imds_mint.next())); });
  set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.base());
  auto imds_client = mi::New(mi::SystemAssigned());
  REQUIRE(imds_client);
  auto imds_token = imds_client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_MESSAGE(imds_token, imds_token.error().message());
  CHECK(imds_token->access_token == "imds-1");
  CHECK_FALSE(libcurl_in_process());

  // Service Fabric: New builds the HTTPS transport without loading libcurl...
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  tlssrv::Server server(identity, [](const Request&) { return Reply::json(sf_body("sf-loaded")); });
  support::service_fabric_env(server.url(), identity.sha1_hex(), kSecret);
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  CHECK(client->source() == mi::Source::ServiceFabric);
  CHECK_FALSE(libcurl_in_process());

  // ...and the first request does, then gets its token over the pinned connection.
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_MESSAGE(token, token.error().message());
  CHECK(token->access_token == "sf-loaded");
  CHECK(libcurl_in_process());
  CHECK(server.request_count() == 1);
  const mi::detail::curl_impl::CurlApi& api = mi::detail::curl_impl::curl_api();
  CHECK(api.problem.empty());
  CHECK(api.pinning_problem.empty());
  CHECK(api.version_num >= mi::detail::kMinCurlVersion);
}

#else  // MI_CURL_LIBRARY: a library that must be refused

TEST_CASE("an unusable libcurl: Service Fabric fails with tls, says what and how to fix, sends nothing") {
  CleanEnv env;
  support::fresh_cache();
  tlssrv::Identity identity = tlssrv::make_identity("sf-cluster");
  tlssrv::Server server(identity, [](const Request&) { return Reply::json(sf_body("never")); });
  support::service_fabric_env(server.url(), identity.sha1_hex(), kSecret);
  auto client = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  for (int attempt = 0; attempt < 2; ++attempt) {  // the outcome of the one load is kept
    CAPTURE(attempt);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE_FALSE(token);
    const std::string message = token.error().message();
    CAPTURE(message);
    CHECK(token.error().code() == mi::Errc::tls);
    CHECK(token.error().source() == mi::Source::ServiceFabric);
    CHECK_FALSE(token.error().retryable());
    CHECK(message.find(MI_CURL_LIBRARY) != std::string::npos);
    CHECK(message.find(MI_TEST_CURL_PROBLEM) != std::string::npos);
    CHECK(message.find("install libcurl 7.80 or later built with OpenSSL") != std::string::npos);
    CHECK(message.find("MI_CURL_LINKED") != std::string::npos);
    CHECK(message.find(kSecret) == std::string::npos);
    CHECK(message.find(identity.sha1_hex()) == std::string::npos);
  }
  CHECK(server.connections() == 0);
  CHECK(server.app_bytes() == 0);
  CHECK(server.request_count() == 0);
}

#endif  // MI_CURL_LIBRARY
#endif  // MI_USE_CURL && !MI_DETAIL_CURL_LINKED
