// What crosses the wire in either direction stays safe: Service Fabric's secret only
// goes through a transport that checks the certificate pin; text taken from an error
// body has its control characters shown as spaces, then is redacted, then cut, in every
// field; a token that would break the header it is put into is refused; the public
// to_string overloads; the LICENSE file. Every request goes to an injected transport
// that sends nothing.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "cache_support.hpp"

using support::CleanEnv;
using support::set_env;

namespace {

using support::fresh_cache;

const std::string kThumbprint = "0123456789abcdef0123456789ABCDEF01234567";

// Service Fabric's variables with `thumbprint`, and an empty cache.
void sf_env(const std::string& thumbprint = kThumbprint) {
  support::service_fabric_env("https://127.0.0.1:2377/metadata/identity/oauth2/token", thumbprint, "sf-wire-secret-3b8e");
  fresh_cache();
}

// IMDS, pointed at a loopback address (the injected transports send nothing anyway).
void imds_env() {
  set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9");
  fresh_cache();
}

void app_service_env(const std::string& secret) {
  set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token");
  set_env("IDENTITY_HEADER", secret);
  fresh_cache();
}

std::shared_ptr<support::RecordingHttpClient> answering(int status, std::string body) {
  return std::make_shared<support::RecordingHttpClient>(
      [status, body](const mi::HttpRequest&) { return support::response(status, body); });
}

// One failed acquisition against `http` (no retries, no sleeping).
mi::Error acquire_error(const std::shared_ptr<mi::HttpClient>& http, const std::string& resource = "https://wire") {
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled());
  REQUIRE_MESSAGE(client, client.error().message());
  auto token = client->AcquireToken(mi::Context::Background(), resource);
  REQUIRE_FALSE(token);
  return token.error();
}

// Every text an Error carries.
std::vector<std::string> texts(const mi::Error& e) {
  return {e.message(), e.error_code(), e.error_description(), e.correlation_id()};
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

// A control character (C0, DEL, or C1 as UTF-8) anywhere in `s`.
bool has_control(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return true;
    if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(s[i + 1]) <= 0x9F)
      return true;
  }
  return false;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

// ---- 1. Service Fabric never hands its secret to a transport that does not pin ---------------

TEST_CASE("Service Fabric: New refuses a custom transport that does not check the certificate pin") {
  CleanEnv env;
  sf_env();
  auto http = answering(200, "{}");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE_FALSE(client);
  CHECK(client.error().code() == mi::Errc::invalid_argument);
  CHECK(client.error().source() == mi::Source::ServiceFabric);
  CHECK(contains(client.error().message(), "PinsServerCertificate"));
  CHECK(contains(client.error().message(), "IDENTITY_SERVER_THUMBPRINT"));
  CHECK_FALSE(contains(client.error().message(), "sf-wire-secret-3b8e"));
  CHECK(http->count() == 0);
}

namespace {
// A recording transport that declares it checks pinned_sha1 during the handshake.
class PinningHttpClient : public support::RecordingHttpClient {
 public:
  using support::RecordingHttpClient::RecordingHttpClient;
  bool PinsServerCertificate() const noexcept override { return true; }
};

std::string sf_body(const std::string& token) {
  return "{\"token_type\":\"Bearer\",\"access_token\":\"" + token + "\",\"expires_on\":" +
         std::to_string(support::now_unix() + 7200) + ",\"resource\":\"https://vault.azure.net/\"}";
}
}  // namespace

TEST_CASE("HttpClient: PinsServerCertificate is false unless a transport says otherwise") {
  support::RecordingHttpClient plain([](const mi::HttpRequest&) { return support::response(200, ""); });
  PinningHttpClient pinning([](const mi::HttpRequest&) { return support::response(200, ""); });
  const mi::HttpClient& a = plain;
  const mi::HttpClient& b = pinning;
  CHECK_FALSE(a.PinsServerCertificate());
  CHECK(b.PinsServerCertificate());
  static_assert(noexcept(a.PinsServerCertificate()), "PinsServerCertificate is noexcept");
  mi::HttpRequest request;
  CHECK(request.pinned_sha1.empty());
}

TEST_CASE("Service Fabric: a pinning transport gets every request with the normalised thumbprint") {
  CleanEnv env;
  const std::string upper = "0123456789ABCDEF0123456789ABCDEF01234567";
  for (const std::string& spelling :
       {kThumbprint, std::string("01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67"),
        std::string(" 0123456789abcdef 0123456789abcdef01234567\t"), "\xE2\x80\x8E" + kThumbprint}) {
    CAPTURE(spelling);
    sf_env(spelling);
    support::TokenMint mint("sf-pinned");
    auto http = std::make_shared<PinningHttpClient>(
        [&mint](const mi::HttpRequest&) { return support::response(200, sf_body(mint.next())); });
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE_MESSAGE(client, client.error().message());
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net", mi::WithClaims("{}")));
    REQUIRE(http->count() == 2);
    for (const mi::HttpRequest& r : http->requests()) {
      CHECK(r.pinned_sha1 == upper);
      CHECK(support::header_of(r, "Secret") == "sf-wire-secret-3b8e");
    }
  }
}

TEST_CASE("every other source's requests carry no pin, whatever the environment holds") {
  CleanEnv env;
  set_env("IDENTITY_SERVER_THUMBPRINT", kThumbprint);  // without IDENTITY_ENDPOINT+HEADER: not Service Fabric
  imds_env();
  auto imds = answering(200, support::imds_body("imds-nopin"));
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(imds));
  REQUIRE(client);
  REQUIRE(client->source() == mi::Source::DefaultToIMDS);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://nopin"));
  REQUIRE(imds->count() == 1);
  CHECK(imds->requests()[0].pinned_sha1.empty());

  CleanEnv env2;
  app_service_env("app-secret-nopin");
  auto app = std::make_shared<PinningHttpClient>(
      [](const mi::HttpRequest&) { return support::response(200, support::imds_body("app-nopin")); });
  auto app_client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(app));
  REQUIRE(app_client);
  REQUIRE(app_client->source() == mi::Source::AppService);
  REQUIRE(app_client->AcquireToken(mi::Context::Background(), "https://nopin"));
  REQUIRE(app->count() == 1);
  CHECK(app->requests()[0].pinned_sha1.empty());
}

// ---- 2 and 12. Text from an error body: folded, then redacted, then cut, in every field ------

TEST_CASE("a secret echoed with control characters in place of its spaces is redacted in every field") {
  CleanEnv env;
  const std::string secret = "open sesame 7f3a9c21 door";
  app_service_env(secret);
  const std::string echo = "open\\u0001sesame\\u00017f3a9c21\\u0001door";
  auto http = answering(400, "{\"error\":\"" + echo + "\",\"error_description\":\"header " + echo +
                                 " is wrong\",\"correlation_id\":\"" + echo + "\"}");
  mi::Error e = acquire_error(http);
  CHECK(e.code() == mi::Errc::http_status);
  CHECK(e.status_code() == 400);
  for (const std::string& text : texts(e)) {
    CAPTURE(text);
    CHECK_FALSE(contains(text, "sesame"));
    CHECK_FALSE(has_control(text));
  }
  CHECK(contains(e.error_description(), "[redacted]"));
  CHECK(e.correlation_id() == "[redacted]");
}

TEST_CASE("a secret that itself holds a C1 control character is redacted however the endpoint echoes it") {
  CleanEnv env;
  const std::string secret = "lock\xC2\x85key-9e8d7c6b5a";  // U+0085 NEL, not refused as a C0 control
  for (const std::string& echo : {std::string("lock\\u0085key-9e8d7c6b5a"), std::string("lock\\u0001key-9e8d7c6b5a"),
                                  std::string("lock key-9e8d7c6b5a"), std::string("lock\\tkey-9e8d7c6b5a")}) {
    CAPTURE(echo);
    app_service_env(secret);
    auto http = answering(401, "{\"error\":{\"code\":\"" + echo + "\",\"message\":\"bad " + echo +
                                   "\",\"correlationId\":\"" + echo + "\"}}");
    mi::Error e = acquire_error(http);
    for (const std::string& text : texts(e)) {
      CAPTURE(text);
      CHECK_FALSE(contains(text, "9e8d7c6b5a"));
      CHECK_FALSE(has_control(text));
    }
  }
}

TEST_CASE("IMDS: an error body of unknown shape reaches the message as an excerpt") {
  CleanEnv env;
  imds_env();
  auto http = answering(400, "{\"raw\": \"error format is undefined\"}");
  mi::Error e = acquire_error(http);
  CHECK(e.code() == mi::Errc::http_status);
  CHECK(e.status_code() == 400);
  CHECK(contains(e.message(), "error format is undefined"));
  CHECK(e.error_code().empty());
  CHECK(e.error_description().empty());
}

TEST_CASE("error body fields show C0, DEL and C1 controls as spaces") {
  CleanEnv env;
  imds_env();
  auto http = answering(400, "{\"error\":\"bad\\u0085request\",\"error_description\":\"x\\u0001y\\u007fz\\u0085w\\u009fv\","
                             "\"correlation_id\":\"c0\\u0000c1\\u0080c2\"}");
  mi::Error e = acquire_error(http);
  CHECK(e.error_code() == "bad request");
  CHECK(e.error_description() == "x y z w v");
  CHECK(e.correlation_id() == "c0 c1 c2");
  CHECK(contains(e.message(), "bad request: x y z w v"));
  // The same for an excerpt of a body that is not JSON: raw C1 bytes too.
  auto plain = answering(400, "oops\x01here\x7f" "and\xC2\x85there\xC2\x9f!");
  mi::Error p = acquire_error(plain);
  CHECK(contains(p.message(), "oops here and there !"));
  CHECK_FALSE(has_control(p.message()));
}

TEST_CASE("excerpts and fields are at most 512 bytes, cut on a UTF-8 character boundary") {
  CleanEnv env;
  imds_env();
  std::string e_acute;
  for (int i = 0; i < 600; ++i) e_acute += "\xC3\xA9";
  std::string euro;
  for (int i = 0; i < 1000; ++i) euro += "\xE2\x82\xAC";
  // Not JSON: the excerpt. "a" first so that byte 512 falls inside a character.
  {
    mi::Error e = acquire_error(answering(400, "a" + e_acute));
    CAPTURE(e.message());
    CHECK(valid_utf8(e.message()));
    size_t open = e.message().find("(\"");
    size_t close = e.message().find("\")");
    REQUIRE(open != std::string::npos);
    REQUIRE(close != std::string::npos);
    CHECK(close - open - 2 <= 512);
    CHECK(close - open - 2 >= 400);
  }
  // JSON of unknown shape: the excerpt again.
  {
    mi::Error e = acquire_error(answering(400, "{\"raw\":\"b" + e_acute + "\"}"));
    CHECK(valid_utf8(e.message()));
    CHECK(contains(e.message(), "{\"raw\":\"b\xC3\xA9"));
  }
  // Known fields, every one long.
  for (const std::string& prefix : {std::string(), std::string("z"), std::string("zz")}) {
    CAPTURE(prefix);
    const std::string v = prefix + euro;
    mi::Error e = acquire_error(answering(
        400, "{\"error\":\"" + v + "\",\"error_description\":\"" + v + "\",\"correlation_id\":\"" + v + "\"}"));
    for (const std::string* s : {&e.error_code(), &e.error_description(), &e.correlation_id()}) {
      CHECK(s->size() <= 512);
      CHECK(s->size() >= 400);
      CHECK(valid_utf8(*s));
    }
    CHECK(valid_utf8(e.message()));
    CHECK(e.message().size() < 2000);
  }
}

TEST_CASE("a secret cut by the 512-byte limit leaves no piece behind") {
  CleanEnv env;
  const std::string secret = "cut-secret-0a1b2c3d4e5f6a7b8c9d";
  app_service_env(secret);
  for (size_t pad = 490; pad < 512; pad += 3) {
    CAPTURE(pad);
    fresh_cache();
    const std::string text = std::string(pad, 'p') + secret + " tail";
    mi::Error e = acquire_error(answering(
        400, "{\"error\":\"" + text + "\",\"error_description\":\"" + text + "\",\"correlation_id\":\"" + text + "\"}"));
    for (const std::string& t : texts(e)) {
      CAPTURE(t);
      CHECK_FALSE(contains(t, "cut-secret"));
      CHECK_FALSE(contains(t, "0a1b2c3d"));
    }
    mi::Error p = acquire_error(answering(400, text));
    CHECK_FALSE(contains(p.message(), "cut-secret"));
    CHECK_FALSE(contains(p.message(), "0a1b2c3d"));
  }
}

// ---- 3. A token that would break the header it goes into is refused ------------------------

TEST_CASE("access_token or token_type with a control character or a space is invalid_response") {
  using mi::detail::parse_token_response;
  const auto now = mi::detail::SysClock::now();
  const std::vector<std::string> bad = {"zq9\\r\\nX-Injected: 1", "zq9\\nen", "zq9\\ren", "zq9 en", "zq9\\u0000en",
                                        "zq9\\ten", "zq9\\u007fen", "zq9\\u0085en", " zq9", "zq9 "};
  for (const std::string& b : bad) {
    CAPTURE(b);
    auto r = parse_token_response("{\"access_token\":\"" + b + "\",\"expires_in\":3600}", now);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == mi::Errc::invalid_response);
    CHECK(contains(r.error().message(), "access_token"));
    CHECK_FALSE(contains(r.error().message(), "zq9"));
    auto t = parse_token_response("{\"access_token\":\"good\",\"token_type\":\"Bea" + b + "\",\"expires_in\":3600}", now);
    REQUIRE_FALSE(t);
    CHECK(t.error().code() == mi::Errc::invalid_response);
    CHECK(contains(t.error().message(), "token_type"));
  }
  // Printable ASCII other than the space is fine, and so is an omitted token_type.
  auto ok = parse_token_response("{\"access_token\":\"a.b-c_d~e+f/g=\",\"token_type\":\"pop\",\"expires_in\":3600}", now);
  REQUIRE(ok);
  CHECK(ok->token.access_token == "a.b-c_d~e+f/g=");
  CHECK(ok->token.token_type == "pop");
}

TEST_CASE("AcquireToken: a token with CR LF is not handed to the caller") {
  CleanEnv env;
  imds_env();
  auto http = answering(200, "{\"access_token\":\"header-split-1\\r\\nX-Evil: yes\",\"expires_in\":\"3600\"}");
  mi::Error e = acquire_error(http);
  CHECK(e.code() == mi::Errc::invalid_response);
  CHECK_FALSE(contains(e.message(), "header-split"));
  CHECK_FALSE(contains(e.message(), "X-Evil"));
}

// ---- 15. The public to_string overloads -----------------------------------------------------

TEST_CASE("to_string of TokenSource, LogLevel and Errc") {
  static_assert(std::is_same<decltype(mi::to_string(mi::TokenSource::Cache)), std::string_view>::value, "");
  static_assert(std::is_same<decltype(mi::to_string(mi::LogLevel::Error)), std::string_view>::value, "");
  static_assert(std::is_same<decltype(mi::to_string(mi::Errc::tls)), std::string_view>::value, "");
  static_assert(noexcept(mi::to_string(mi::TokenSource::Cache)), "");
  static_assert(noexcept(mi::to_string(mi::LogLevel::Error)), "");
  static_assert(noexcept(mi::to_string(mi::Errc::tls)), "");
  CHECK(mi::to_string(mi::TokenSource::IdentityProvider) == "IdentityProvider");
  CHECK(mi::to_string(mi::TokenSource::Cache) == "Cache");
  CHECK(mi::to_string(mi::LogLevel::Error) == "Error");
  CHECK(mi::to_string(mi::LogLevel::Warning) == "Warning");
  CHECK(mi::to_string(mi::LogLevel::Info) == "Info");
  CHECK(mi::to_string(mi::LogLevel::Verbose) == "Verbose");
  const std::vector<std::pair<mi::Errc, const char*>> codes = {
      {mi::Errc::invalid_argument, "invalid_argument"},
      {mi::Errc::unsupported_identity, "unsupported_identity"},
      {mi::Errc::network, "network"},
      {mi::Errc::timeout, "timeout"},
      {mi::Errc::canceled, "canceled"},
      {mi::Errc::http_status, "http_status"},
      {mi::Errc::invalid_response, "invalid_response"},
      {mi::Errc::arc_challenge, "arc_challenge"},
      {mi::Errc::tls, "tls"},
      {mi::Errc::platform_not_supported, "platform_not_supported"},
  };
  for (const auto& c : codes) CHECK(mi::to_string(c.first) == c.second);
  // As a caller would use them: the result of an acquisition, and a logger.
  CleanEnv env;
  imds_env();
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(answering(200, support::imds_body("ts-1"))));
  REQUIRE(client);
  auto first = client->AcquireToken(mi::Context::Background(), "https://to-string");
  REQUIRE(first);
  CHECK(std::string(mi::to_string(first->token_source)) == "IdentityProvider");
  auto second = client->AcquireToken(mi::Context::Background(), "https://to-string");
  REQUIRE(second);
  CHECK(std::string(mi::to_string(second->token_source)) == "Cache");
}

// ---- 17. The license the header names is in the repository ----------------------------------

TEST_CASE("the repository has the MIT LICENSE the header names") {
  std::string here = __FILE__;
  size_t slash = here.find_last_of("/\\");
  REQUIRE(slash != std::string::npos);
  std::string root = here.substr(0, slash) + "/..";
  std::ifstream file(root + "/LICENSE");
  REQUIRE_MESSAGE(file.good(), "no LICENSE in " << root);
  std::stringstream text;
  text << file.rdbuf();
  CHECK(contains(text.str(), "MIT License"));
  CHECK(contains(text.str(), "Copyright (c) 2026 the managed_identity.hpp authors"));
  CHECK(contains(text.str(), "THE SOFTWARE IS PROVIDED \"AS IS\""));
  std::ifstream header(root + "/managed_identity.hpp");
  std::stringstream whole;
  whole << header.rdbuf();
  CHECK(contains(whole.str(), "SPDX-License-Identifier: MIT"));
  CHECK(contains(whole.str(), "Copyright (c) 2026 the managed_identity.hpp authors"));
}
