#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <string>
#include <vector>

using mi::Errc;
using mi::detail::ErrorBody;
using mi::detail::from_unix_seconds;
using mi::detail::parse_error_body;
using mi::detail::parse_expires_on;
using mi::detail::parse_token_response;
using mi::detail::SysClock;
using mi::detail::to_unix_seconds;
using mi::detail::TokenResponse;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

// 2026-12-01T19:51:37Z, one day before the samples' expires_on (1796241097 = 2026-12-02T19:51:37Z).
const SysClock::time_point kNow = from_unix_seconds(1796154697);
const int64_t kSampleExpiry = 1796241097;
const SysClock::time_point kEpoch{};
const std::string kToken = "eyJ0eXAiOiJKV1QiSECRET.payload.signature";

TokenResponse parse_ok(const std::string& body, SysClock::time_point now = kNow) {
  auto r = parse_token_response(body, now);
  INFO("error: " << (r ? std::string() : r.error().message()));
  REQUIRE(r.ok());
  return *r;
}

mi::Error parse_fail(const std::string& body, SysClock::time_point now = kNow) {
  auto r = parse_token_response(body, now);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::invalid_response);
  CHECK_FALSE(r.error().retryable());
  return r.error();
}

// A body with the test token and the given extra members.
std::string body_with(const std::string& members) {
  return "{\"access_token\":\"" + kToken + "\"" + (members.empty() ? "" : "," + members) + "}";
}

int64_t expires_on_of(const std::string& expires_on_json) {
  return to_unix_seconds(parse_ok(body_with("\"expires_on\":" + expires_on_json)).token.expires_on);
}

int64_t parsed_epoch(std::string_view text) {
  SysClock::time_point t;
  INFO(text);
  REQUIRE(parse_expires_on(text, t));
  return to_unix_seconds(t);
}

bool parses(std::string_view text) {
  SysClock::time_point t;
  return parse_expires_on(text, t);
}

}  // namespace

TEST_CASE("every SAMPLES.md success body parses with the right expiry") {
  // IMDS: every value a string.
  TokenResponse imds = parse_ok(
      R"({"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOi...","client_id":"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10",
 "expires_in":"86399","expires_on":"1796241097","ext_expires_in":"86399","not_before":"1796154397",
 "resource":"https://management.azure.com/","token_type":"Bearer"})");
  CHECK(imds.token.access_token == "eyJ0eXAiOiJKV1QiLCJhbGciOi...");
  CHECK(to_unix_seconds(imds.token.expires_on) == kSampleExpiry);
  CHECK(imds.echo.resource == "https://management.azure.com/");
  CHECK(imds.token.token_type == "Bearer");
  CHECK(imds.echo.client_id == "9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10");
  CHECK(imds.token.refresh_on == kNow + seconds(86400) / 2);  // lifetime 86400 s > 2 h: half

  // App Service 2019-08-01 (Linux).
  TokenResponse app = parse_ok(R"({"access_token":"eyJ0eXAi...","expires_on":"1796241097","resource":"https://vault.azure.net",
 "token_type":"Bearer","client_id":"5E29463D-71DA-4FE0-8E69-999B57DB23B0"})");
  CHECK(to_unix_seconds(app.token.expires_on) == kSampleExpiry);
  CHECK(app.echo.resource == "https://vault.azure.net");
  CHECK(app.echo.client_id == "5E29463D-71DA-4FE0-8E69-999B57DB23B0");

  // App Service in Windows containers: ISO with 7 fractional digits.
  TokenResponse win = parse_ok(R"({"access_token":"eyJ0eXAi...","expires_on":"2026-12-02T19:51:37.0000000+00:00",
 "resource":"https://vault.azure.net","token_type":"Bearer","client_id":"5E29463D-..."})");
  CHECK(to_unix_seconds(win.token.expires_on) == kSampleExpiry);
  CHECK(win.echo.client_id == "5E29463D-...");

  // Azure ML / 2017-09-01: Windows with AM/PM, Linux without.
  TokenResponse ml_win = parse_ok(
      R"({"access_token":"eyJ0eXAi...","expires_on":"12/2/2026 7:51:37 PM +00:00","resource":"https://vault.azure.net","token_type":"Bearer"})");
  CHECK(to_unix_seconds(ml_win.token.expires_on) == kSampleExpiry);
  TokenResponse ml_linux = parse_ok(
      R"({"access_token":"eyJ0eXAi...","expires_on":"12/02/2026 19:51:37 +00:00","resource":"https://vault.azure.net","token_type":"Bearer"})");
  CHECK(to_unix_seconds(ml_linux.token.expires_on) == kSampleExpiry);

  // Cloud Shell: strings and an empty refresh_token.
  TokenResponse shell = parse_ok(R"({"access_token":"eyJ0eXAi...","refresh_token":"","expires_in":"3599","expires_on":"1796241097",
 "not_before":"1796237197","resource":"https://management.azure.com/","token_type":"Bearer"})");
  CHECK(to_unix_seconds(shell.token.expires_on) == kSampleExpiry);  // expires_on wins over expires_in

  // Service Fabric: expires_on a JSON number.
  TokenResponse sf = parse_ok(
      R"({"token_type":"Bearer","access_token":"eyJ0eXAi...","expires_on":1796241097,"resource":"https://vault.azure.net/"})");
  CHECK(to_unix_seconds(sf.token.expires_on) == kSampleExpiry);
  CHECK(sf.echo.resource == "https://vault.azure.net/");

  // Server-chosen refresh time.
  TokenResponse refresh =
      parse_ok(R"({"access_token":"eyJ0eXAi...","expires_in":86399,"refresh_in":43199,"token_type":"Bearer"})");
  CHECK(refresh.token.expires_on == kNow + seconds(86399));
  CHECK(refresh.token.refresh_on == kNow + seconds(43199));
  CHECK(refresh.echo.resource.empty());
}

TEST_CASE("expires_on: epoch seconds as a number or a string") {
  CHECK(expires_on_of("1729281097") == 1729281097);
  CHECK(expires_on_of("\"1729281097\"") == 1729281097);
  CHECK(expires_on_of("1729281097.9") == 1729281097);      // fraction truncated
  CHECK(expires_on_of("\"1729281097.999\"") == 1729281097);
  CHECK(expires_on_of("1.729281097e9") == 1729281097);     // exponent form of a JSON number
  CHECK(expires_on_of("17292810975e-1") == 1729281097);
  CHECK(expires_on_of("0") == 0);
  CHECK(parsed_epoch("1729281097") == 1729281097);
  CHECK(parsed_epoch("01729281097") == 1729281097);  // numeric strings may carry leading zeros
}

TEST_CASE("expires_on: ISO 8601 / RFC 3339 forms") {
  // 2024-10-18T19:51:37Z is 1729281097 (computed independently).
  const int64_t t = 1729281097;
  CHECK(parsed_epoch("2024-10-18T19:51:37Z") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37z") == t);
  CHECK(parsed_epoch("2024-10-18t19:51:37Z") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37") == t);  // zone-less is UTC
  CHECK(parsed_epoch("2024-10-18T19:51:37+00:00") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37-00:00") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37.0000000+00:00") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37.9999999+00:00") == t);  // 7 digits, truncated
  CHECK(parsed_epoch("2024-10-18T19:51:37.1234567Z") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37.5Z") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37.123") == t);
  CHECK(parsed_epoch("2024-10-18T19:51:37.123456789Z") == t);  // more digits than .NET writes: still fine
  // Offsets are applied.
  CHECK(parsed_epoch("2024-10-18T14:51:37-05:00") == t);
  CHECK(parsed_epoch("2024-10-19T01:21:37+05:30") == t);
  CHECK(parsed_epoch("2024-10-18T20:51:37+01:00") == t);
  CHECK(parsed_epoch("2024-10-18T09:51:37-10:00") == t);
  CHECK(parsed_epoch("2024-10-18T14:51:37.0000000-05:00") == t);
  CHECK(parsed_epoch("2024-10-18T14:51:37-0500") == t);
  // yyyy-MM-dd HH:mm:ss (and the same with a zone).
  CHECK(parsed_epoch("2024-10-18 19:51:37") == t);
  CHECK(parsed_epoch("2024-10-18 19:51:37Z") == t);
  CHECK(parsed_epoch("2024-10-18 19:51:37 +00:00") == t);
  CHECK(parsed_epoch("2024-10-18 14:51:37 -05:00") == t);
  // Calendar edges.
  CHECK(parsed_epoch("2024-02-29T00:00:00Z") == 1709164800);  // leap year
  CHECK(parsed_epoch("2000-02-29T12:00:00Z") == 951825600);   // 400-year leap
  CHECK(parsed_epoch("2024-12-31T23:59:59Z") == 1735689599);
  CHECK(parsed_epoch("1970-01-01T00:00:00Z") == 0);
  CHECK(parsed_epoch("2026-12-02T19:51:37Z") == kSampleExpiry);
  // Across a day boundary because of the offset.
  CHECK(parsed_epoch("2024-10-19T00:51:37+05:00") == t);
  CHECK(parsed_epoch("2024-10-17T23:51:37-20:00") == t);
}

TEST_CASE("expires_on: M/d/yyyy h:mm:ss with optional AM/PM and offset") {
  const int64_t t = 1729281097;
  CHECK(parsed_epoch("10/18/2024 7:51:37 PM +00:00") == t);
  CHECK(parsed_epoch("10/18/2024 7:51:37 PM") == t);
  CHECK(parsed_epoch("10/18/2024 07:51:37 pm") == t);
  CHECK(parsed_epoch("10/18/2024 19:51:37") == t);
  CHECK(parsed_epoch("10/18/2024 19:51:37 +00:00") == t);
  CHECK(parsed_epoch("10/18/2024 2:51:37 PM -05:00") == t);
  CHECK(parsed_epoch("10/19/2024 1:21:37 AM +05:30") == t);
  CHECK(parsed_epoch("12/2/2026 7:51:37 PM +00:00") == kSampleExpiry);
  CHECK(parsed_epoch("12/02/2026 19:51:37 +00:00") == kSampleExpiry);
  CHECK(parsed_epoch("2/29/2024 0:00:00") == 1709164800);
  // 12 AM is midnight, 12 PM is noon (2024-10-18T00:00:00Z = 1729209600).
  CHECK(parsed_epoch("10/18/2024 12:00:00 AM") == 1729209600);
  CHECK(parsed_epoch("10/18/2024 12:30:00 AM") == 1729209600 + 1800);
  CHECK(parsed_epoch("10/18/2024 1:00:00 AM") == 1729209600 + 3600);
  CHECK(parsed_epoch("10/18/2024 11:59:59 AM") == 1729209600 + 43199);
  CHECK(parsed_epoch("10/18/2024 12:00:00 PM") == 1729252800);
  CHECK(parsed_epoch("10/18/2024 12:59:59 PM") == 1729252800 + 3599);
  CHECK(parsed_epoch("10/18/2024 1:00:00 PM") == 1729252800 + 3600);
  CHECK(parsed_epoch("10/18/2024 11:59:59 PM") == 1729209600 + 86399);
  CHECK(parsed_epoch("10/18/2024 0:00:00") == 1729209600);
  CHECK(parsed_epoch("10/18/2024 23:59:59") == 1729209600 + 86399);
}

TEST_CASE("expires_on: malformed and out-of-range forms are rejected") {
  const char* const bad[] = {
      "", " ", "abc", "tomorrow", "null", "-1729281097", "+1729281097", " 1729281097", "1729281097 ", "1729281097s",
      "1e", "0x1234", "1.", ".5", "99999999999999999999", "1e400",
      // ISO
      "2024-10-18", "2024-10-18T", "2024-10-18T19:51", "2024-10-18T19:51:3", "24-10-18T19:51:37Z",
      "2024-1-18T19:51:37Z", "2024-10-8T19:51:37Z", "2024/10/18T19:51:37Z", "2024-10-18X19:51:37Z",
      "2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "2024-10-00T00:00:00Z", "2024-10-32T00:00:00Z",
      "2024-04-31T00:00:00Z", "2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2024-02-30T00:00:00Z",
      "2024-10-18T24:00:00Z", "2024-10-18T19:60:00Z", "2024-10-18T19:51:60Z", "2024-10-18T19:51:37.Z",
      "2024-10-18T19:51:37.", "2024-10-18T19:51:37Zjunk", "2024-10-18T19:51:37ZZ", "2024-10-18T19:51:37 ",
      "2024-10-18T19:51:37+25:00", "2024-10-18T19:51:37+05:60", "2024-10-18T19:51:37+5:00",
      "2024-10-18T19:51:37+05:0", "2024-10-18T19:51:37+05:00 ", "2024-10-18T19:51:37+05:00x",
      "2024-10-18T19:51:37 UTC", " 2024-10-18T19:51:37Z", "2024-10-18T19:51:37,5Z", "1969-12-31T23:59:59Z",
      "10000-01-01T00:00:00Z",
      // M/d/yyyy
      "13/18/2024 7:51:37 PM", "0/18/2024 7:51:37 PM", "10/32/2024 7:51:37 PM", "2/30/2024 7:51:37",
      "2/29/2023 7:51:37", "10/18/24 7:51:37 PM", "10/18/2024 13:51:37 PM", "10/18/2024 0:51:37 AM",
      "10/18/2024 24:00:00", "10/18/2024 7:60:37 PM", "10/18/2024 7:51:60 PM", "10/18/2024 7:51:37 XM",
      "10/18/2024 7:51:37 PM +00:00 extra", "10/18/2024 7:51:37 PM+00:00", "10/18/2024 7:51:37PM",
      "10/18/2024 7:51:37  PM", "10/18/2024 7:51 PM", "10/18/2024 7:5:37 PM", "10/18/2024", "10/18/2024 ",
      "100/18/2024 7:51:37", "10/180/2024 7:51:37", "10/18/2024 7:51:37 P", "10/18/2024 7:51:37 PM +25:00",
      "10/18/2024 123:51:37",
  };
  for (const char* b : bad) {
    INFO("'" << b << "'");
    CHECK_FALSE(parses(b));
    // In a body: unparseable expires_on falls back to expires_in when present...
    std::string json_string = std::string("\"") + b + "\"";
    TokenResponse r = parse_ok(body_with("\"expires_on\":" + json_string + ",\"expires_in\":3600"));
    CHECK(r.token.expires_on == kNow + seconds(3600));
    // ...and is invalid_response without it.
    mi::Error e = parse_fail(body_with("\"expires_on\":" + json_string));
    CHECK(e.message().find("expires_on") != std::string::npos);
  }
}

TEST_CASE("expires_on of other JSON types falls back to expires_in") {
  for (const char* v : {"null", "true", "false", "[]", "{}", "[1729281097]", "-5", "-1.5", "1e400"}) {
    INFO(v);
    TokenResponse r = parse_ok(body_with(std::string("\"expires_on\":") + v + ",\"expires_in\":\"60\""));
    CHECK(r.token.expires_on == kNow + seconds(60));
    parse_fail(body_with(std::string("\"expires_on\":") + v));
  }
}

TEST_CASE("expires_in: numbers, numeric strings, truncation, fallback") {
  CHECK(parse_ok(body_with("\"expires_in\":3599")).token.expires_on == kNow + seconds(3599));
  CHECK(parse_ok(body_with("\"expires_in\":\"3599\"")).token.expires_on == kNow + seconds(3599));
  CHECK(parse_ok(body_with("\"expires_in\":3599.9")).token.expires_on == kNow + seconds(3599));
  CHECK(parse_ok(body_with("\"expires_in\":\"3599.9\"")).token.expires_on == kNow + seconds(3599));
  CHECK(parse_ok(body_with("\"expires_in\":3.6e3")).token.expires_on == kNow + seconds(3600));
  CHECK(parse_ok(body_with("\"expires_in\":0")).token.expires_on == kNow);
  CHECK(parse_ok(body_with("\"expires_in\":0.5")).token.expires_on == kNow);
  // A sub-second `now` is kept: expires_in is added to it.
  SysClock::time_point fine_now = kNow + milliseconds(250);
  CHECK(parse_ok(body_with("\"expires_in\":60"), fine_now).token.expires_on == fine_now + seconds(60));
  // Unusable expires_in values.
  for (const char* v : {"-1", "\"-1\"", "\"\"", "\"abc\"", "\"60s\"", "\" 60\"", "true", "null", "[60]", "{}",
                        "1e400", "\"99999999999999999999\""}) {
    INFO(v);
    mi::Error e = parse_fail(body_with(std::string("\"expires_in\":") + v));
    CHECK(e.message().find("neither a usable expires_on nor expires_in") != std::string::npos);
  }
  // expires_on wins when both are usable.
  TokenResponse both = parse_ok(body_with("\"expires_in\":60,\"expires_on\":\"1796241097\""));
  CHECK(to_unix_seconds(both.token.expires_on) == kSampleExpiry);
  // Neither at all.
  mi::Error e = parse_fail(body_with("\"token_type\":\"Bearer\""));
  CHECK(e.message() == "the token response has neither a usable expires_on nor expires_in");
}

TEST_CASE("refresh time") {
  // refresh_in honoured when 0 < refresh_in < lifetime, as a number or a string.
  CHECK(parse_ok(body_with("\"expires_in\":3600,\"refresh_in\":1800")).token.refresh_on == kNow + seconds(1800));
  CHECK(parse_ok(body_with("\"expires_in\":3600,\"refresh_in\":\"1800\"")).token.refresh_on == kNow + seconds(1800));
  CHECK(parse_ok(body_with("\"expires_in\":3600,\"refresh_in\":3599")).token.refresh_on == kNow + seconds(3599));
  CHECK(parse_ok(body_with("\"expires_in\":3600,\"refresh_in\":1")).token.refresh_on == kNow + seconds(1));
  CHECK(parse_ok(body_with("\"expires_in\":3600,\"refresh_in\":1800.7")).token.refresh_on == kNow + seconds(1800));
  CHECK(parse_ok(body_with("\"expires_on\":" + std::to_string(to_unix_seconds(kNow) + 600) + ",\"refresh_in\":300"))
            .token.refresh_on == kNow + seconds(300));
  // Ignored when >= lifetime or <= 0 (or unusable); short lifetimes then get none.
  for (const char* v : {"3600", "3601", "999999", "0", "-5", "\"0\"", "\"x\"", "null", "0.5"}) {
    INFO(v);
    CHECK(parse_ok(body_with(std::string("\"expires_in\":3600,\"refresh_in\":") + v)).token.refresh_on == kEpoch);
  }
  // ...and long lifetimes get half.
  CHECK(parse_ok(body_with("\"expires_in\":86400,\"refresh_in\":86400")).token.refresh_on == kNow + hours(12));
  CHECK(parse_ok(body_with("\"expires_in\":86400,\"refresh_in\":-1")).token.refresh_on == kNow + hours(12));
  CHECK(parse_ok(body_with("\"expires_in\":86400,\"refresh_in\":0")).token.refresh_on == kNow + hours(12));

  // The 2-hour rule: exactly 2 h -> none; more -> half the lifetime.
  CHECK(parse_ok(body_with("\"expires_in\":7200")).token.refresh_on == kEpoch);
  CHECK(parse_ok(body_with("\"expires_in\":7199")).token.refresh_on == kEpoch);
  CHECK(parse_ok(body_with("\"expires_in\":60")).token.refresh_on == kEpoch);
  CHECK(parse_ok(body_with("\"expires_in\":7202")).token.refresh_on == kNow + seconds(3601));
  CHECK(parse_ok(body_with("\"expires_in\":7201")).token.refresh_on == kNow + milliseconds(3600500));
  CHECK(parse_ok(body_with("\"expires_in\":86399")).token.refresh_on == kNow + milliseconds(43199500));
  // The same through expires_on: lifetime counts from `now`.
  std::string on_2h = std::to_string(to_unix_seconds(kNow) + 7200);
  std::string on_2h2s = std::to_string(to_unix_seconds(kNow) + 7202);
  CHECK(parse_ok(body_with("\"expires_on\":" + on_2h)).token.refresh_on == kEpoch);
  CHECK(parse_ok(body_with("\"expires_on\":\"" + on_2h2s + "\"")).token.refresh_on == kNow + seconds(3601));
  // An expires_on in the past: no refresh time, still a parsed response (the cache decides).
  TokenResponse past = parse_ok(body_with("\"expires_on\":1000"));
  CHECK(to_unix_seconds(past.token.expires_on) == 1000);
  CHECK(past.token.refresh_on == kEpoch);
}

TEST_CASE("access_token must be a non-empty string") {
  struct Case {
    const char* body;
    const char* expected;
  };
  const Case cases[] = {
      {R"({"expires_in":3600})", "the token response has no access_token"},
      {R"({"Access_Token":"x","expires_in":3600})", "the token response has no access_token"},
      {R"({"access_token":"","expires_in":3600})", "the token response has an empty access_token"},
      {R"({"access_token":12345,"expires_in":3600})", "the token response's access_token is not a string"},
      {R"({"access_token":null,"expires_in":3600})", "the token response's access_token is not a string"},
      {R"({"access_token":true,"expires_in":3600})", "the token response's access_token is not a string"},
      {R"({"access_token":["x"],"expires_in":3600})", "the token response's access_token is not a string"},
      {R"({"access_token":{"v":"x"},"expires_in":3600})", "the token response's access_token is not a string"},
  };
  for (const Case& c : cases) {
    INFO(c.body);
    CHECK(parse_fail(c.body).message() == c.expected);
  }
  // The first of duplicate keys counts.
  CHECK(parse_fail(R"({"access_token":"","access_token":"x","expires_in":3600})").message() ==
        "the token response has an empty access_token");
  CHECK(parse_ok(R"({"access_token":"x","access_token":"","expires_in":3600})").token.access_token == "x");
}

TEST_CASE("bodies that are not a JSON object") {
  for (const char* body : {"[]", "\"token\"", "42", "null", "true", "[{\"access_token\":\"x\",\"expires_in\":1}]"}) {
    INFO(body);
    CHECK(parse_fail(body).message() == "the token response is not a JSON object");
  }
  CHECK(parse_fail("").message().find("empty") != std::string::npos);
  CHECK(parse_fail(" \r\n").message().find("empty") != std::string::npos);
  mi::Error html = parse_fail("<html><body>403 Forbidden</body></html>");
  CHECK(html.message().rfind("the token response is not valid JSON (at byte 0): ", 0) == 0);
  CHECK(html.message().find("html") == std::string::npos);
  mi::Error cut = parse_fail("{\"access_token\":\"abc\",\"expires_in\":");
  CHECK(cut.message().rfind("the token response is not valid JSON (at byte 35): ", 0) == 0);
}

TEST_CASE("token_type, resource and the echoed identity fields") {
  CHECK(parse_ok(body_with("\"expires_in\":60")).token.token_type == "Bearer");
  CHECK(parse_ok(body_with("\"expires_in\":60,\"token_type\":\"\"")).token.token_type == "Bearer");
  CHECK(parse_ok(body_with("\"expires_in\":60,\"token_type\":null")).token.token_type == "Bearer");
  CHECK(parse_ok(body_with("\"expires_in\":60,\"token_type\":5")).token.token_type == "Bearer");
  CHECK(parse_ok(body_with("\"expires_in\":60,\"token_type\":\"pop\"")).token.token_type == "pop");
  CHECK(parse_ok(body_with("\"expires_in\":60,\"token_type\":\"bearer\"")).token.token_type == "bearer");

  TokenResponse none = parse_ok(body_with("\"expires_in\":60"));
  CHECK(none.token.access_token == kToken);
  CHECK(none.echo.resource.empty());
  CHECK(none.echo.client_id.empty());
  CHECK(none.echo.object_id.empty());
  CHECK(none.echo.msi_res_id.empty());
  CHECK(none.echo.mi_res_id.empty());

  TokenResponse all = parse_ok(body_with(
      "\"expires_in\":60,\"resource\":\"https://vault.azure.net/\",\"client_id\":\"c-id\",\"object_id\":\"o-id\","
      "\"msi_res_id\":\"/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/"
      "userAssignedIdentities/u\",\"mi_res_id\":\"/subscriptions/s/mi\""));
  CHECK(all.echo.resource == "https://vault.azure.net/");
  CHECK(all.echo.client_id == "c-id");
  CHECK(all.echo.object_id == "o-id");
  CHECK(all.echo.msi_res_id ==
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u");
  CHECK(all.echo.mi_res_id == "/subscriptions/s/mi");

  TokenResponse wrong_types = parse_ok(body_with(
      "\"expires_in\":60,\"resource\":1,\"client_id\":123,\"object_id\":null,\"msi_res_id\":[\"x\"],\"mi_res_id\":{}"));
  CHECK(wrong_types.echo.resource.empty());
  CHECK(wrong_types.echo.client_id.empty());
  CHECK(wrong_types.echo.object_id.empty());
  CHECK(wrong_types.echo.msi_res_id.empty());
  CHECK(wrong_types.echo.mi_res_id.empty());

  // Escapes in values are decoded; unknown members are ignored.
  TokenResponse escaped = parse_ok(
      R"({"access_token":"a\/b\u0041","expires_in":60,"resource":"https:\/\/vault.azure.net\/","extra":{"x":[1,2]}})");
  CHECK(escaped.token.access_token == "a/bA");
  CHECK(escaped.echo.resource == "https://vault.azure.net/");
}

TEST_CASE("the token and the body never appear in an error message") {
  const std::string bodies[] = {
      body_with(""),
      body_with("\"expires_on\":\"not a date\""),
      body_with("\"expires_on\":\"" + kToken + "\""),
      body_with("\"expires_in\":\"" + kToken + "\""),
      body_with("\"expires_in\":60,"),                  // trailing comma: not JSON
      body_with("\"expires_in\":60") + "garbage",       // trailing garbage
      body_with("\"expires_in\":6\x01"),
      "{\"access_token\":\"" + kToken,                   // truncated
      "{\"access_token\":\"" + kToken + "\\x\"}",        // bad escape
      "{\"access_token\":\"" + kToken + "\xff\"}",       // bad UTF-8
      "[\"" + kToken + "\"]",                            // not an object
      "\"" + kToken + "\"",
      "{\"access_token\":[\"" + kToken + "\"],\"expires_in\":60}",
      "{\"access_token\":{\"" + kToken + "\":1},\"expires_in\":60}",
      "{\"token\":\"" + kToken + "\",\"expires_in\":60}",
      "{\"access_token\":\"" + kToken + "\",\"n\":" + std::string(100, '[') + "}",
  };
  for (const std::string& body : bodies) {
    auto r = parse_token_response(body, kNow);
    REQUIRE_FALSE(r.ok());
    const std::string& message = r.error().message();
    INFO(message);
    CHECK(r.error().code() == Errc::invalid_response);
    CHECK(message.find("SECRET") == std::string::npos);
    CHECK(message.find("eyJ") == std::string::npos);
    CHECK(message.find("signature") == std::string::npos);
    CHECK(message.find("not a date") == std::string::npos);
    CHECK(message.find("garbage") == std::string::npos);
    CHECK(r.error().error_description().find("SECRET") == std::string::npos);
    CHECK(r.error().error_code().empty());
  }
}

TEST_CASE("parse_error_body on every SAMPLES.md error body") {
  ErrorBody a = parse_error_body(R"({"error":"invalid_request","error_description":"Identity not found"})");
  CHECK(a.code == "invalid_request");
  CHECK(a.description == "Identity not found");
  CHECK(a.correlation_id.empty());

  ErrorBody b = parse_error_body(
      R"({"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://x was not found...","error_codes":[500011],"timestamp":"2026-11-28 10:00:00Z","trace_id":"...","correlation_id":"0b2c7a5e-..."})");
  CHECK(b.code == "invalid_resource");
  CHECK(b.description == "AADSTS500011: The resource principal named https://x was not found...");
  CHECK(b.correlation_id == "0b2c7a5e-...");

  ErrorBody c = parse_error_body(
      R"({"error":{"correlationId":"7f30f4d3-0f3a-41e0-a417-527f21b3848f","code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}})");
  CHECK(c.code == "SecretHeaderNotFound");
  CHECK(c.description == "Secret is not found in the request headers.");
  CHECK(c.correlation_id == "7f30f4d3-0f3a-41e0-a417-527f21b3848f");

  ErrorBody d = parse_error_body(R"({"error":{"code":"BadRequest","message":"Invalid resource"}})");
  CHECK(d.code == "BadRequest");
  CHECK(d.description == "Invalid resource");
  CHECK(d.correlation_id.empty());
}

TEST_CASE("parse_error_body on other shapes") {
  // App Service's own shape.
  ErrorBody app = parse_error_body(
      R"({"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":"7f30f4d3"})");
  CHECK(app.code.empty());
  CHECK(app.description == "Unable to load the proper Managed Identity.");
  CHECK(app.correlation_id == "7f30f4d3");
  // A numeric nested code is kept as written.
  CHECK(parse_error_body(R"({"error":{"code":400,"message":"m"}})").code == "400");
  // A nested correlation id wins over a flat one; the flat one is used when the nested is absent.
  CHECK(parse_error_body(R"({"error":{"code":"c","correlationId":"in"},"correlation_id":"out"})").correlation_id ==
        "in");
  CHECK(parse_error_body(R"({"error":{"code":"c"},"correlation_id":"out"})").correlation_id == "out");
  // Escapes are decoded.
  CHECK(parse_error_body(R"({"error":"e","error_description":"line1\nline2 \u00e9"})").description ==
        "line1\nline2 \xc3\xa9");
  // Wrong member types give empty fields.
  ErrorBody wrong = parse_error_body(R"({"error":42,"error_description":["x"],"correlation_id":{}})");
  CHECK(wrong.code.empty());
  CHECK(wrong.description.empty());
  CHECK(wrong.correlation_id.empty());
  ErrorBody nested_wrong = parse_error_body(R"({"error":{"code":null,"message":7,"correlationId":false}})");
  CHECK(nested_wrong.code.empty());
  CHECK(nested_wrong.description.empty());
  CHECK(nested_wrong.correlation_id.empty());

  // Anything that is not a JSON object gives empty fields, without crashing.
  const std::string others[] = {
      "",
      " ",
      "Not Found",
      "A socket operation was attempted to an unreachable network.",
      "<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1></body></html>",
      "<!DOCTYPE html>\n<html>\n<body>Bad Gateway</body>\n</html>\n",
      "[]",
      "[{\"error\":\"x\"}]",
      "\"invalid_request\"",
      "null",
      "42",
      "{\"error\":\"invalid_request\",",  // truncated
      "{\"error\":\"x\"} trailing",
      "{\"error\":\"\xff\"}",
      std::string(100, '[') + std::string(100, ']'),
      std::string(100000, '{'),
  };
  for (const std::string& body : others) {
    INFO(body.substr(0, 40));
    ErrorBody e = parse_error_body(body);
    CHECK(e.code.empty());
    CHECK(e.description.empty());
    CHECK(e.correlation_id.empty());
  }
  // An object without any known member.
  ErrorBody empty = parse_error_body("{}");
  CHECK(empty.code.empty());
  CHECK(empty.description.empty());
}
