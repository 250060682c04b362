#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

using mi::Errc;
using mi::detail::parse_thumbprint;

// ---- available in every build -------------------------------------------------------

TEST_CASE("parse_thumbprint accepts 40 hex digits with ':' and white space, either case") {
  const std::string upper = "0123456789ABCDEF0123456789ABCDEF01234567";
  std::string expected;
  for (size_t i = 0; i < 40; i += 2) expected.push_back(static_cast<char>(std::stoi(upper.substr(i, 2), nullptr, 16)));
  std::string out;
  REQUIRE(parse_thumbprint(upper, out));
  CHECK(out == expected);
  CHECK(out.size() == 20);

  std::string lower = "0123456789abcdef0123456789abcdef01234567";
  out.clear();
  REQUIRE(parse_thumbprint(lower, out));
  CHECK(out == expected);

  std::string colons;
  for (size_t i = 0; i < 40; i += 2) colons += (i ? ":" : "") + upper.substr(i, 2);
  out.clear();
  REQUIRE(parse_thumbprint(colons, out));
  CHECK(out == expected);

  std::string spaced = "  01 23 45 67\t89ab cdef\r\n0123456789AB:CD:EF:01:23:45:67 \n";
  out.clear();
  REQUIRE(parse_thumbprint(spaced, out));
  CHECK(out == expected);
}

TEST_CASE("parse_thumbprint ignores the invisible marks a copy from a certificate viewer brings") {
  const std::string digits = "0123456789ABCDEF0123456789ABCDEF01234567";
  std::string expected;
  REQUIRE(parse_thumbprint(digits, expected));
  // Windows' certificate dialog puts U+200E (left-to-right mark) in front of the thumbprint.
  const std::string lrm = "\xE2\x80\x8E", rlm = "\xE2\x80\x8F", bom = "\xEF\xBB\xBF", nbsp = "\xC2\xA0";
  for (const std::string& spelling : {lrm + digits, digits + rlm, bom + digits, "01" + nbsp + digits.substr(2),
                                      lrm + "01:23" + lrm + digits.substr(4) + "\n"}) {
    std::string out;
    CHECK_MESSAGE(parse_thumbprint(spelling, out), spelling);
    CHECK(out == expected);
  }
  // Only those whole marks: a truncated mark, or another character from the same block, is rejected.
  std::string out = "unchanged";
  CHECK_FALSE(parse_thumbprint("\xE2\x80" + digits, out));
  CHECK_FALSE(parse_thumbprint(digits + "\xE2\x80", out));
  CHECK_FALSE(parse_thumbprint("\xE2\x80\x8D" + digits, out));  // U+200D, zero width joiner
  CHECK_FALSE(parse_thumbprint("\xC2" + digits, out));
  CHECK_FALSE(parse_thumbprint(lrm + digits.substr(1), out));  // 39 digits
  CHECK(out == "unchanged");
}

TEST_CASE("parse_thumbprint rejects wrong lengths, non-hex and empty input without touching the output") {
  const std::string good = "0123456789ABCDEF0123456789ABCDEF01234567";
  std::string out = "unchanged";
  CHECK_FALSE(parse_thumbprint(good.substr(0, 39), out));  // 39 digits
  CHECK_FALSE(parse_thumbprint(good + "8", out));          // 41 digits
  CHECK_FALSE(parse_thumbprint(good + good, out));         // 80 digits
  CHECK_FALSE(parse_thumbprint("", out));
  CHECK_FALSE(parse_thumbprint("   ::  ", out));
  CHECK_FALSE(parse_thumbprint("G123456789ABCDEF0123456789ABCDEF01234567", out));  // non-hex
  CHECK_FALSE(parse_thumbprint("0x23456789ABCDEF0123456789ABCDEF01234567", out));
  CHECK_FALSE(parse_thumbprint("0123456789ABCDEF0123456789ABCDEF0123456-", out));
  CHECK_FALSE(parse_thumbprint("0123456789ABCDEF0123456789ABCDEF0123456\xc3\xa9", out));
  CHECK_FALSE(parse_thumbprint(std::string("0123456789ABCDEF0123456789ABCDEF01234567\0", 41), out));
  CHECK(out == "unchanged");
}

#if !defined(MI_USE_CURL)

TEST_CASE("curl transport") { MESSAGE("skipped: built without MI_USE_CURL"); }

#else  // MI_USE_CURL

using mi::detail::constant_time_equal;

// The pin comparison (only the libcurl transport pins).
TEST_CASE("constant_time_equal") {
  CHECK(constant_time_equal("", ""));
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "ab"));
  CHECK_FALSE(constant_time_equal("", "a"));
  CHECK_FALSE(constant_time_equal("xbc", "abc"));
  std::string a(20, '\0'), b(20, '\0');
  CHECK(constant_time_equal(a, b));
  b[19] = '\x01';
  CHECK_FALSE(constant_time_equal(a, b));
  b[19] = '\0';
  b[0] = '\x80';
  CHECK_FALSE(constant_time_equal(a, b));
}


#include "tls_server.hpp"

using mi::detail::CurlTransport;
using testsrv::Reply;
using testsrv::Request;

namespace {

const std::string kSecret = "s3cr3t-identity-header-value";

mi::HttpRequest sf_request(const std::string& url) {
  mi::HttpRequest r;
  r.method = "GET";
  r.url = url + "?api-version=2019-07-01-preview&resource=https%3A%2F%2Fvault.azure.net";
  r.headers = {{"Secret", kSecret}, {"Accept", "application/json"}, {"User-Agent", "managed-identity-cpp/0.1.0"}};
  return r;
}

std::string pin_of(const tlssrv::Identity& id) {
  std::string pin;
  REQUIRE(parse_thumbprint(id.sha1_hex(), pin));
  return pin;
}

// A check's outcome as before Result<bool>: true, or false with its message in `why`.
bool ok(const mi::Result<bool>& checked, std::string& why) {
  why = checked ? std::string() : checked.error().message();
  return checked.ok();
}

const tlssrv::Identity& server_identity() {
  static const tlssrv::Identity id = tlssrv::make_identity("127.0.0.1");
  return id;
}

void check_no_secret(const mi::Error& e) {
  CHECK(e.message().find(kSecret) == std::string::npos);
  CHECK(e.message().find(server_identity().sha1_hex()) == std::string::npos);
}

const std::string kToken = R"({"access_token":"tok","expires_on":"1999999999","resource":"https://vault.azure.net"})";

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_CASE("curl: the TLS backend check accepts only libcurl on the same OpenSSL") {
  using mi::detail::curl_tls_backend_supports_pinning;
  std::string why;
  const unsigned long v3 = 0x30000130UL, v111 = 0x1010117fUL;
  CHECK(ok(curl_tls_backend_supports_pinning("OpenSSL/3.0.19", v3), why));
  CHECK(ok(curl_tls_backend_supports_pinning("OpenSSL/3.2.1 (Schannel)", v3), why));
  CHECK(ok(curl_tls_backend_supports_pinning("OpenSSL/1.1.1w", v111), why));
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("OpenSSL/1.1.1w", v3), why));
  CHECK(why.find("same OpenSSL") != std::string::npos);
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("OpenSSL/1.0.2u", v111), why));
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("GnuTLS/3.7.9", v3), why));
  CHECK(why == "the libcurl TLS backend is GnuTLS/3.7.9; Service Fabric certificate pinning needs libcurl built with OpenSSL");
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("(OpenSSL/3.0.2) Schannel", v3), why));
  CHECK(why.find("Service Fabric certificate pinning needs libcurl built with OpenSSL") != std::string::npos);
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("LibreSSL/3.3.6", v3), why));
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("BoringSSL", v3), why));
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("", v3), why));
  CHECK(why.find("is none") != std::string::npos);
  CHECK_FALSE(ok(curl_tls_backend_supports_pinning("OpenSSL/", v3), why));
  // The libcurl this program uses (loaded, or linked with MI_CURL_LINKED).
  const mi::detail::curl_impl::CurlApi& api = mi::detail::curl_impl::curl_api();
  REQUIRE_MESSAGE(api.problem.empty(), api.problem);
  CHECK_MESSAGE(api.pinning_problem.empty(), api.pinning_problem);
  const curl_version_info_data* info = api.curl_version_info(CURLVERSION_NOW);
  REQUIRE(info != nullptr);
  REQUIRE(info->ssl_version != nullptr);
  CHECK_MESSAGE(ok(curl_tls_backend_supports_pinning(info->ssl_version, OPENSSL_VERSION_NUMBER), why), why);
  CHECK(api.version_num == info->version_num);
}

TEST_CASE("curl: libcurl's OpenSSL library must be of the headers' OpenSSL series") {
  using mi::detail::openssl_library_matches_headers;
  std::string why;
  CHECK(ok(openssl_library_matches_headers(0x30000130UL, 0x30000130UL), why));
  CHECK(ok(openssl_library_matches_headers(0x30200010UL, 0x30000020UL), why));  // 3.2 at run time, 3.0 headers
  CHECK(ok(openssl_library_matches_headers(0x1010117fUL, 0x1010107fUL), why));  // 1.1.1w and 1.1.1g
  CHECK_FALSE(ok(openssl_library_matches_headers(0x1010117fUL, 0x30000130UL), why));
  CHECK(why == "libcurl runs with OpenSSL 1.1 but this program was compiled with the OpenSSL 3.0 headers; "
               "build libcurl and managed_identity.hpp against the same OpenSSL");
  CHECK_FALSE(ok(openssl_library_matches_headers(0x30000130UL, 0x1010117fUL), why));
  CHECK_FALSE(ok(openssl_library_matches_headers(0x1000215fUL, 0x1010117fUL), why));  // 1.0.2 against 1.1
  // The OpenSSL this program's libcurl runs with.
  const mi::detail::curl_impl::CurlApi& api = mi::detail::curl_impl::curl_api();
  const bool resolved = api.OpenSSL_version_num != nullptr;
  REQUIRE(resolved);
  CHECK_MESSAGE(ok(openssl_library_matches_headers(api.OpenSSL_version_num(), OPENSSL_VERSION_NUMBER), why), why);
}

TEST_CASE("curl: libcurl older than 7.80.0 is refused") {
  using mi::detail::curl_version_supported;
  std::string why;
  CHECK(ok(curl_version_supported(0x075000), why));  // 7.80.0
  CHECK(ok(curl_version_supported(0x075801), why));  // 7.88.1
  CHECK(ok(curl_version_supported(0x080b00), why));  // 8.11.0
  CHECK_FALSE(ok(curl_version_supported(0x074f01), why));
  CHECK(why == "libcurl 7.79.1 is too old: Service Fabric needs 7.80.0 or later (CURLOPT_PREREQFUNCTION)");
  CHECK_FALSE(ok(curl_version_supported(0x074a00), why));
  CHECK(why.find("7.74.0") != std::string::npos);
  CHECK_FALSE(ok(curl_version_supported(0), why));
}

TEST_CASE("curl: the right thumbprint, in any accepted spelling, gets the request through") {
  const tlssrv::Identity& id = server_identity();
  std::string hex = id.sha1_hex();
  std::string colons, lower_spaced;
  for (size_t i = 0; i < hex.size(); i += 2) {
    colons += (i ? ":" : "") + hex.substr(i, 2);
    lower_spaced += (i ? " " : "") + mi::detail::ascii_lowercase(hex.substr(i, 2));
  }
  for (const std::string& spelling : {hex, colons, lower_spaced, mi::detail::ascii_lowercase(hex), " " + colons + "\n",
                                      "\xE2\x80\x8E" + hex}) {
    CAPTURE(spelling);
    std::string pin;
    REQUIRE(parse_thumbprint(spelling, pin));
    tlssrv::Server server(id, [](const Request&) {
      return Reply::http(200, kToken, {{"X-Ms-Request-Id", "abc"}, {"Set-Cookie", "a=1"}, {"Set-Cookie", "b=2"}});
    });
    CurlTransport transport(pin, std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->status == 200);
    CHECK(result->body == kToken);
    int cookies = 0;
    bool request_id = false, content_type = false;
    for (const auto& h : result->headers) {
      if (mi::detail::iequals(h.first, "Set-Cookie")) ++cookies;
      if (h.first == "X-Ms-Request-Id" && h.second == "abc") request_id = true;
      if (mi::detail::iequals(h.first, "Content-Type") && h.second == "application/json") content_type = true;
    }
    CHECK(cookies == 2);
    CHECK(request_id);
    CHECK(content_type);
    REQUIRE(server.request_count() == 1);
    Request got = server.last();
    CHECK(got.method == "GET");
    CHECK(got.version == "HTTP/1.1");
    CHECK(got.path == "/metadata/identity/oauth2/token");
    CHECK(got.query()["api-version"] == "2019-07-01-preview");
    CHECK(got.query()["resource"] == "https://vault.azure.net");
    CHECK(got.header("Secret") == kSecret);
    CHECK(got.header("Accept") == "application/json");
    CHECK(got.header("User-Agent") == "managed-identity-cpp/0.1.0");
    CHECK_FALSE(got.has_header("Proxy-Authorization"));
    CHECK(server.handshakes_ok() == 1);
  }
}

TEST_CASE("curl: a wrong thumbprint fails with tls before any request byte is sent") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Identity other = tlssrv::make_identity("127.0.0.1");
  std::string flipped = pin_of(id);
  flipped[19] = static_cast<char>(flipped[19] ^ 1);
  for (int max_version : {0, TLS1_2_VERSION}) {
    for (const std::string& pin : {pin_of(other), flipped}) {
      CAPTURE(max_version);
      tlssrv::Options options;
      options.max_version = max_version;
      bool handler_called = false;
      tlssrv::Server server(id, [&](const Request&) {
        handler_called = true;
        return Reply::json(kToken);
      }, options);
      CurlTransport transport(pin, std::chrono::milliseconds(5000));
      auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
      REQUIRE_FALSE(result.ok());
      CHECK(result.error().code() == Errc::tls);
      CHECK(result.error().message() ==
            "the Service Fabric endpoint's TLS certificate does not match IDENTITY_SERVER_THUMBPRINT");
      CHECK_FALSE(result.error().retryable());
      check_no_secret(result.error());
      REQUIRE(server.idle());
      CHECK(server.connections() == 1);
      CHECK(server.handshakes_ok() == 0);
      CHECK(server.handshakes_failed() == 1);
      CHECK(server.app_bytes() == 0);
      CHECK(server.request_count() == 0);
      CHECK_FALSE(handler_called);
    }
  }
}

TEST_CASE("curl: only the leaf certificate is pinned, not its issuer") {
  tlssrv::Identity ca = tlssrv::make_identity("test root", nullptr, true);
  tlssrv::Identity leaf = tlssrv::make_identity("127.0.0.1", &ca);
  tlssrv::Options options;
  options.extra_chain.push_back(ca);
  {
    tlssrv::Server server(leaf, [](const Request&) { return Reply::json(kToken); }, options);
    CurlTransport transport(pin_of(ca), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::tls);
    REQUIRE(server.idle());
    CHECK(server.app_bytes() == 0);
  }
  {
    tlssrv::Server server(leaf, [](const Request&) { return Reply::json(kToken); }, options);
    CurlTransport transport(pin_of(leaf), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->status == 200);
  }
}

TEST_CASE("curl: the transport declares that it pins, and checks the pin the request carries") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Identity other = tlssrv::make_identity("127.0.0.1");
  CurlTransport unpinned("", std::chrono::milliseconds(5000));
  const mi::HttpClient& as_client = unpinned;
  CHECK(as_client.PinsServerCertificate());
  // The request's pin alone, upper or lower case, gets the request through.
  for (const std::string& hex : {id.sha1_hex(), mi::detail::ascii_lowercase(id.sha1_hex())}) {
    CAPTURE(hex);
    tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
    mi::HttpRequest request = sf_request(server.url());
    request.pinned_sha1 = hex;
    auto result = unpinned.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->status == 200);
    CHECK(server.request_count() == 1);
    CHECK(server.last().header("Secret") == kSecret);
  }
  // Another certificate's pin: tls, and the server receives no request byte.
  {
    tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
    mi::HttpRequest request = sf_request(server.url());
    request.pinned_sha1 = other.sha1_hex();
    auto result = unpinned.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::tls);
    CHECK(result.error().message() ==
          "the Service Fabric endpoint's TLS certificate does not match IDENTITY_SERVER_THUMBPRINT");
    check_no_secret(result.error());
    REQUIRE(server.idle());
    CHECK(server.handshakes_failed() == 1);
    CHECK(server.app_bytes() == 0);
    CHECK(server.request_count() == 0);
  }
  // A malformed pin, or one that disagrees with the transport's own: nothing is sent at all.
  {
    tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
    for (const std::string& bad : {id.sha1_hex().substr(1), id.sha1_hex() + "0", "G" + id.sha1_hex().substr(1),
                                   id.sha1_hex().substr(0, 38) + ":0"}) {
      CAPTURE(bad);
      mi::HttpRequest request = sf_request(server.url());
      request.pinned_sha1 = bad;
      auto result = unpinned.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
      REQUIRE_FALSE(result.ok());
      CHECK(result.error().code() == Errc::invalid_argument);
      check_no_secret(result.error());
    }
    CurlTransport pinned(pin_of(id), std::chrono::milliseconds(5000));
    mi::HttpRequest request = sf_request(server.url());
    request.pinned_sha1 = other.sha1_hex();
    auto result = pinned.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::tls);
    check_no_secret(result.error());
    request.pinned_sha1 = id.sha1_hex();  // agreeing pins are fine
    auto agreed = pinned.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
    REQUIRE_MESSAGE(agreed.ok(), agreed.error().message());
    CHECK(server.connections() == 1);
    CHECK(server.request_count() == 1);
  }
}

TEST_CASE("curl: without a pin, normal verification rejects a self-signed certificate") {
  tlssrv::Server server(server_identity(), [](const Request&) { return Reply::json(kToken); });
  CurlTransport transport("", std::chrono::milliseconds(5000));
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::tls);
  check_no_secret(result.error());
  REQUIRE(server.idle());
  CHECK(server.app_bytes() == 0);
}

TEST_CASE("curl: a redirect is returned as a response and never followed") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server second(id, [](const Request&) { return Reply::json(kToken); });
  std::string location = second.url("/elsewhere");
  tlssrv::Server first(id, [&](const Request&) { return Reply::http(302, "", {{"Location", location}}, "Found"); });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(first.url()));
  REQUIRE_MESSAGE(result.ok(), result.error().message());
  CHECK(result->status == 302);
  bool has_location = false;
  for (const auto& h : result->headers)
    if (mi::detail::iequals(h.first, "Location") && h.second == location) has_location = true;
  CHECK(has_location);
  CHECK(first.request_count() == 1);
  CHECK(second.connections() == 0);
  CHECK(second.request_count() == 0);
}

TEST_CASE("curl: 1xx interim responses are skipped; headers are the final response's") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) {
    Reply r;
    r.raw = "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
            "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            "HTTP/1.1 404 Not Found\r\nX-Final: 1\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nno";
    return r;
  });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
  REQUIRE_MESSAGE(result.ok(), result.error().message());
  CHECK(result->status == 404);
  CHECK(result->body == "no");
  bool interim = false, final_header = false, folded = false;
  for (const auto& h : result->headers) {
    if (h.first == "X-Interim" || h.first == "Link") interim = true;
    if (h.first == "X-Final" && h.second == "1") final_header = true;
    if (h.first == "X-Folded" && h.second == "a b") folded = true;
  }
  CHECK_FALSE(interim);
  CHECK(final_header);
  CHECK(folded);
}

TEST_CASE("curl: chunked and close-delimited bodies") {
  const tlssrv::Identity& id = server_identity();
  SUBCASE("chunked") {
    tlssrv::Server server(id, [](const Request&) {
      Reply r;
      r.raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
      return r;
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->body == "hello world");
  }
  SUBCASE("close-delimited") {
    tlssrv::Server server(id, [](const Request&) {
      Reply r;
      r.raw = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end";
      return r;
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->body == "until the end");
  }
}

TEST_CASE("curl: POST sends the body with its Content-Length") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  mi::HttpRequest request;
  request.method = "POST";
  request.url = server.url();
  request.body = "resource=https%3A%2F%2Fvault.azure.net";
  request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}, {"Metadata", "true"}};
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
  REQUIRE_MESSAGE(result.ok(), result.error().message());
  Request got = server.last();
  CHECK(got.method == "POST");
  CHECK(got.body == request.body);
  CHECK(got.header("Content-Length") == std::to_string(request.body.size()));
  CHECK(got.header("Content-Type") == "application/x-www-form-urlencoded");
  CHECK_FALSE(got.has_header("Expect"));
}

TEST_CASE("curl: Cancel() from another thread stops a request the server never answers") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) {
    Reply r;
    r.hang = true;
    return r;
  });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceller([&] {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (server.request_count() == 0 && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ctx.Cancel();
  });
  auto start = std::chrono::steady_clock::now();
  auto result = transport.Do(ctx, sf_request(server.url()));
  double elapsed = seconds_since(start);
  canceller.join();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::canceled);
  CHECK(server.request_count() == 1);
  check_no_secret(result.error());
  CHECK(elapsed < 10.0);
}

TEST_CASE("curl: Cancel() stops a peer stuck before the TLS handshake") {
  tlssrv::SilentListener silent;
  CurlTransport transport(pin_of(server_identity()), std::chrono::milliseconds(5000));
  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ctx.Cancel();
  });
  auto start = std::chrono::steady_clock::now();
  auto result = transport.Do(ctx, sf_request(silent.url()));
  double elapsed = seconds_since(start);
  canceller.join();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::canceled);
  CHECK(elapsed < 4.0);  // well under the 5 s connect timeout
}

TEST_CASE("curl: an already-canceled context fails at once without connecting") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  mi::Context ctx = mi::Context::Background().WithCancel();
  ctx.Cancel();
  auto result = transport.Do(ctx, sf_request(server.url()));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::canceled);
  CHECK(server.connections() == 0);
}

TEST_CASE("curl: the context deadline gives timeout") {
  const tlssrv::Identity& id = server_identity();
  SUBCASE("server never answers") {
    tlssrv::Server server(id, [](const Request&) {
      Reply r;
      r.hang = true;
      return r;
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto start = std::chrono::steady_clock::now();
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(300)),
                               sf_request(server.url()));
    double elapsed = seconds_since(start);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
    CHECK(result.error().retryable());
    check_no_secret(result.error());
    CHECK(elapsed >= 0.25);
    CHECK(elapsed < 10.0);
  }
  SUBCASE("peer stuck before the handshake") {
    tlssrv::SilentListener silent;
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto start = std::chrono::steady_clock::now();
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(200)),
                               sf_request(silent.url()));
    double elapsed = seconds_since(start);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
    CHECK(elapsed < 4.0);
  }
  SUBCASE("already expired") {
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto ctx = mi::Context::Background().WithDeadline(std::chrono::steady_clock::now() - std::chrono::seconds(1));
    auto result = transport.Do(ctx, sf_request("https://127.0.0.1:1/token"));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
  }
}

TEST_CASE("curl: oversize responses are invalid_response") {
  const tlssrv::Identity& id = server_identity();
  const size_t limit = MI_MAX_RESPONSE_BYTES;
  SUBCASE("body exactly at the limit is accepted") {
    tlssrv::Server server(id, [&](const Request&) { return Reply::http(200, std::string(limit, 'a')); });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_MESSAGE(result.ok(), result.error().message());
    CHECK(result->body.size() == limit);
  }
  SUBCASE("Content-Length over the limit") {
    tlssrv::Server server(id, [&](const Request&) { return Reply::http(200, std::string(limit + 1, 'a')); });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::invalid_response);
    CHECK(result.error().message().find("MI_MAX_RESPONSE_BYTES") != std::string::npos);
  }
  SUBCASE("chunked body over the limit") {
    tlssrv::Server server(id, [&](const Request&) {
      Reply r;
      r.raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
      std::string chunk(64 * 1024, 'b');
      for (size_t sent = 0; sent <= limit; sent += chunk.size()) r.raw += "10000\r\n" + chunk + "\r\n";
      r.raw += "0\r\n\r\n";
      return r;
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::invalid_response);
    CHECK(result.error().message().find("MI_MAX_RESPONSE_BYTES") != std::string::npos);
  }
  SUBCASE("close-delimited body over the limit") {
    tlssrv::Server server(id, [&](const Request&) {
      Reply r;
      r.raw = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + std::string(limit + 10, 'c');
      return r;
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::invalid_response);
  }
  SUBCASE("headers over the limit") {
    tlssrv::Server server(id, [&](const Request&) {
      std::vector<std::pair<std::string, std::string>> headers;
      for (int i = 0; i < (MI_MAX_HEADER_BYTES) / 1000 + 2; ++i)
        headers.emplace_back("X-Filler-" + std::to_string(i), std::string(1000, 'h'));
      return Reply::http(200, kToken, headers);
    });
    CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::invalid_response);
    CHECK(result.error().message().find("MI_MAX_HEADER_BYTES") != std::string::npos);
    CHECK(result.error().message().find("hhhh") == std::string::npos);
  }
}

TEST_CASE("curl: a closed port is a network error") {
  CurlTransport transport(pin_of(server_identity()), std::chrono::milliseconds(5000));
  std::string url = "https://127.0.0.1:" + std::to_string(tlssrv::closed_port()) + "/token";
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(url));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::network);
  CHECK(result.error().retryable());
  check_no_secret(result.error());
}

TEST_CASE("curl: a peer that closes after the handshake is a network error") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) {
    Reply r;
    r.close_now = true;
    return r;
  });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::network);
}

TEST_CASE("curl: a peer that hangs up while a large body is being sent: network error, no SIGPIPE") {
  // SIGPIPE keeps its default action (terminate) in this process: if a write raised it
  // outside the transport's guard, the test run would die here.
  const tlssrv::Identity& id = server_identity();
  tlssrv::Options options;
  options.close_after_handshake = true;
  tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); }, options);
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  mi::HttpRequest request;
  request.method = "POST";
  request.url = server.url();
  request.body.assign(8 * 1024 * 1024, 'x');
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), request);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::network);
  // The thread's signal mask is restored and no SIGPIPE is left pending.
  sigset_t mask, pending;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  CHECK(sigismember(&mask, SIGPIPE) == 0);
  sigpending(&pending);
  CHECK(sigismember(&pending, SIGPIPE) == 0);
}

TEST_CASE("curl: a plain-HTTP peer is refused") {
  testsrv::Server plain([](const Request&) { return Reply::json(kToken); });
  CurlTransport transport(pin_of(server_identity()), std::chrono::milliseconds(5000));
  SUBCASE("http:// URL") {
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(plain.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::invalid_argument);
  }
  SUBCASE("https:// URL to an HTTP server: the handshake fails, the secret stays here") {
    // The HTTP server waits for a request head that a ClientHello never completes, so
    // the outcome is a timeout (or a tls/network error if the peer gives up first).
    std::string url = "https://127.0.0.1:" + std::to_string(plain.port()) + "/token";
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(300)), sf_request(url));
    REQUIRE_FALSE(result.ok());
    Errc code = result.error().code();
    CHECK((code == Errc::tls || code == Errc::network || code == Errc::timeout));
    for (const auto& r : plain.requests()) CHECK(r.raw.find(kSecret) == std::string::npos);
  }
  CHECK(plain.request_count() == 0);
}

TEST_CASE("curl: hostile request input is rejected before anything is sent") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  auto ctx = mi::Context::Background().WithTimeout(std::chrono::seconds(30));
  mi::HttpRequest r = sf_request(server.url());
  r.headers.emplace_back("X-Evil", "a\r\nInjected: yes");
  auto result = transport.Do(ctx, r);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::invalid_argument);
  CHECK(result.error().message().find("Injected") == std::string::npos);

  r = sf_request(server.url());
  r.headers.emplace_back("Bad Name", "x");
  CHECK(transport.Do(ctx, r).error().code() == Errc::invalid_argument);

  r = sf_request(server.url());
  r.method = "GET /x";
  CHECK(transport.Do(ctx, r).error().code() == Errc::invalid_argument);

  r = sf_request(server.url());
  r.url += "\r\nX: y";
  CHECK(transport.Do(ctx, r).error().code() == Errc::invalid_argument);

  CurlTransport bad_pin(std::string(19, 'x'), std::chrono::milliseconds(5000));
  CHECK(bad_pin.Do(ctx, sf_request(server.url())).error().code() == Errc::invalid_argument);
  CHECK(server.connections() == 0);
}

TEST_CASE("curl: proxy variables in the environment are ignored") {
  const tlssrv::Identity& id = server_identity();
  tlssrv::Server server(id, [](const Request&) { return Reply::json(kToken); });
  testsrv::Server proxy([](const Request&) { return Reply::http(502, "proxy"); });
  ::setenv("https_proxy", proxy.base().c_str(), 1);
  ::setenv("HTTPS_PROXY", proxy.base().c_str(), 1);
  ::setenv("ALL_PROXY", proxy.base().c_str(), 1);
  ::setenv("all_proxy", proxy.base().c_str(), 1);
  CurlTransport transport(pin_of(id), std::chrono::milliseconds(5000));
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), sf_request(server.url()));
  ::unsetenv("https_proxy");
  ::unsetenv("HTTPS_PROXY");
  ::unsetenv("ALL_PROXY");
  ::unsetenv("all_proxy");
  REQUIRE_MESSAGE(result.ok(), result.error().message());
  CHECK(result->status == 200);
  CHECK(proxy.connection_count() == 0);
  CHECK(server.request_count() == 1);
}

// ---- the trust store a chain-validated transport builds once ----------------------------------
// The system's store cannot be written by a test: CurlTrust's system anchors stand in for
// libcurl's defaults (CURLINFO_CAINFO, CURLINFO_CAPATH).

namespace {

// A scratch directory, removed at the end.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mi-curl-trust-XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    REQUIRE(made != nullptr);
    dir_ = made;
  }
  ~TempDir() { (void)std::system(("rm -rf '" + dir_ + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

mi::HttpRequest token_post(const std::string& url) {
  mi::HttpRequest r;
  r.method = "POST";
  r.url = url;
  r.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  r.body = "grant_type=client_credentials";
  return r;
}

// Three CAs: A stands for the system's, B for WithCAFile's, C is trusted by nobody.
struct ThreeCas {
  tlssrv::Identity a = tlssrv::make_identity("mi-test system CA", nullptr, true);
  tlssrv::Identity b = tlssrv::make_identity("mi-test WithCAFile CA", nullptr, true);
  tlssrv::Identity c = tlssrv::make_identity("mi-test unknown CA", nullptr, true);
  static tlssrv::Identity leaf(const tlssrv::Identity& issuer, const std::vector<std::string>& names = {"IP:127.0.0.1"}) {
    return tlssrv::make_identity("mi-test server", &issuer, false, names);
  }
};

// One request through `transport` to a server presenting `identity`: its outcome, and
// whether the server received any byte after the handshake.
mi::Result<mi::HttpResponse> post_to(CurlTransport& transport, const tlssrv::Identity& identity, size_t* app_bytes) {
  tlssrv::Server server(identity, [](const Request&) { return Reply::json(kToken); });
  auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), token_post(server.url()));
  server.idle();
  *app_bytes = server.app_bytes();
  return result;
}

// Writes `id` as `<subject hash>.0`, as c_rehash lays out /etc/ssl/certs.
void write_hashed(const tlssrv::Identity& id, const TempDir& dir) {
  char name[32];
  std::snprintf(name, sizeof name, "%08lx.0", X509_subject_name_hash(id.cert.get()));
  tlssrv::write_pem(id, dir.path(name));
}

}  // namespace

TEST_CASE("curl trust store: the system's anchors apply beside WithCAFile's, an unknown CA does not") {
  ThreeCas cas;
  TempDir dir;
  tlssrv::write_pem(cas.a, dir.path("system.pem"));
  tlssrv::write_pem(cas.b, dir.path("extra.pem"));
  TempDir hashed;
  write_hashed(cas.a, hashed);
  struct Layout {
    const char* name;
    std::string file, dir;
  };
  for (const Layout& layout : {Layout{"system bundle file", dir.path("system.pem"), ""},
                               Layout{"system hashed directory", "", hashed.path("")}}) {
    CAPTURE(layout.name);
    mi::detail::CurlTrust trust;
    trust.extra_ca_file = dir.path("extra.pem");
    trust.system_anchors_given = true;
    trust.system_ca_file = layout.file;
    trust.system_ca_dir = layout.dir;
    CurlTransport transport("", std::chrono::milliseconds(5000), trust);
    size_t app_bytes = 0;
    for (int round = 0; round < 2; ++round) {  // the store built by the first request, then reused
      CAPTURE(round);
      auto by_system = post_to(transport, ThreeCas::leaf(cas.a), &app_bytes);
      CHECK_MESSAGE(by_system.ok(), (by_system.ok() ? "" : by_system.error().message()));
      auto by_extra = post_to(transport, ThreeCas::leaf(cas.b), &app_bytes);
      CHECK_MESSAGE(by_extra.ok(), (by_extra.ok() ? "" : by_extra.error().message()));
      auto unknown = post_to(transport, ThreeCas::leaf(cas.c), &app_bytes);
      REQUIRE_FALSE(unknown.ok());
      CHECK(unknown.error().code() == Errc::tls);
      CHECK(app_bytes == 0);
      auto wrong_name = post_to(transport, ThreeCas::leaf(cas.a, {"DNS:login.example"}), &app_bytes);
      REQUIRE_FALSE(wrong_name.ok());
      CHECK(wrong_name.error().code() == Errc::tls);
      CHECK(app_bytes == 0);
    }
  }
  SUBCASE("without WithCAFile, the system's anchors alone") {
    mi::detail::CurlTrust trust;
    trust.system_anchors_given = true;
    trust.system_ca_file = dir.path("system.pem");
    CurlTransport transport("", std::chrono::milliseconds(5000), trust);
    size_t app_bytes = 0;
    auto by_system = post_to(transport, ThreeCas::leaf(cas.a), &app_bytes);
    CHECK_MESSAGE(by_system.ok(), (by_system.ok() ? "" : by_system.error().message()));
    auto by_extra = post_to(transport, ThreeCas::leaf(cas.b), &app_bytes);
    REQUIRE_FALSE(by_extra.ok());
    CHECK(by_extra.error().code() == Errc::tls);
    CHECK(app_bytes == 0);
  }
}

TEST_CASE("curl trust store: an unreadable system bundle or WithCAFile is tls naming the file, nothing sent") {
  ThreeCas cas;
  TempDir dir;
  tlssrv::write_pem(cas.a, dir.path("system.pem"));
  std::ofstream(dir.path("junk.pem")) << "not a certificate\n";
  struct Case {
    const char* name;
    std::string system, extra, says;
  };
  for (const Case& c : {Case{"system bundle missing", dir.path("missing.pem"), "", dir.path("missing.pem")},
                        Case{"system bundle without certificates", dir.path("junk.pem"), "", dir.path("junk.pem")},
                        Case{"WithCAFile missing", dir.path("system.pem"), dir.path("missing.pem"), "mi::WithCAFile"},
                        Case{"WithCAFile without certificates", dir.path("system.pem"), dir.path("junk.pem"),
                             "mi::WithCAFile"}}) {
    CAPTURE(c.name);
    mi::detail::CurlTrust trust;
    trust.extra_ca_file = c.extra;
    trust.system_anchors_given = true;
    trust.system_ca_file = c.system;
    CurlTransport transport("", std::chrono::milliseconds(5000), trust);
    tlssrv::Server server(ThreeCas::leaf(cas.a), [](const Request&) { return Reply::json(kToken); });
    auto result =
        transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(30)), token_post(server.url()));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::tls);
    CHECK(result.error().message().find(c.says) != std::string::npos);
    server.idle();
    CHECK(server.app_bytes() == 0);
    CHECK(server.request_count() == 0);
  }
}

TEST_CASE("curl trust store: built once, shared, and built again from the files after 24 hours") {
  using mi::detail::curl_impl::CurlTrustStore;
  const mi::detail::curl_impl::CurlApi& api = mi::detail::curl_impl::curl_api();
  REQUIRE(api.problem.empty());
  REQUIRE(api.pinning_problem.empty());
  ThreeCas cas;
  TempDir dir;
  tlssrv::write_pem(cas.a, dir.path("system.pem"));
  tlssrv::write_pem(cas.b, dir.path("extra.pem"));
  mi::detail::CurlTrust trust;
  trust.extra_ca_file = dir.path("extra.pem");
  trust.system_anchors_given = true;
  trust.system_ca_file = dir.path("system.pem");
  CurlTrustStore holder;
  const auto t0 = std::chrono::steady_clock::now();
  auto first = holder.get(api, trust, nullptr, t0);
  REQUIRE(first.ok());
  REQUIRE(first->get() != nullptr);
  std::ofstream(dir.path("extra.pem"), std::ios::trunc) << "not a certificate\n";
  auto later = holder.get(api, trust, nullptr, t0 + std::chrono::hours(23));
  REQUIRE(later.ok());
  CHECK(later->get() == first->get());  // the same store, the file not read again
  auto next_day = holder.get(api, trust, nullptr, t0 + std::chrono::hours(25));
  REQUIRE_FALSE(next_day.ok());  // built again: the file's new content is refused
  CHECK(next_day.error().code() == Errc::tls);
  CHECK(next_day.error().message().find(dir.path("extra.pem")) != std::string::npos);
  tlssrv::write_pem(cas.b, dir.path("extra.pem"));
  auto rebuilt = holder.get(api, trust, nullptr, t0 + std::chrono::hours(26));
  REQUIRE(rebuilt.ok());
  CHECK(rebuilt->get() != nullptr);
  CHECK(rebuilt->get() != first->get());  // the old one lives on while a transfer holds it
}

#endif  // MI_USE_CURL
