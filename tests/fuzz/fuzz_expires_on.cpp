// Fuzz target: the expires_on parser (parse_expires_on: epoch seconds, ISO 8601 /
// RFC 3339, M/d/yyyy h:mm:ss [AM|PM] [+hh:mm], yyyy-MM-dd HH:mm:ss) and its use inside
// parse_token_response. The input is the expires_on text.
//
// Invariants, beyond "no crash, no sanitizer report":
//  - a successful parse yields a time between 1970-01-01 and 9999-12-31T23:59:59Z;
//  - that instant, written back in every accepted form (epoch seconds, ISO with Z, with
//    a 7-digit fraction and +00:00, with a space, M/d/yyyy in 24-hour and AM/PM forms
//    with +00:00), parses to the same instant;
//  - all-digit input parses exactly when its value is at most the limit, to that value;
//  - inside a token body, as a JSON string (and as a JSON number when it is one),
//    expires_on gives the same instant, and an unparseable one falls back to expires_in.
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "fuzz_common.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

constexpr int64_t kYear9999End = 253402300799;  // 9999-12-31T23:59:59Z

struct Civil {
  int64_t y;
  unsigned m, d, hh, mm, ss;
};

// Howard Hinnant's civil_from_days, written here independently of the library.
Civil civil(int64_t t) {
  int64_t days = t / 86400, rem = t % 86400;
  days += 719468;
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(days - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  Civil c;
  c.d = doy - (153 * mp + 2) / 5 + 1;
  c.m = mp < 10 ? mp + 3 : mp - 9;
  c.y = static_cast<int64_t>(yoe) + era * 400 + (c.m <= 2);
  c.hh = static_cast<unsigned>(rem / 3600);
  c.mm = static_cast<unsigned>(rem / 60 % 60);
  c.ss = static_cast<unsigned>(rem % 60);
  return c;
}

std::string pad(int64_t v, int width) {
  std::string s = std::to_string(v);
  while (static_cast<int>(s.size()) < width) s.insert(s.begin(), '0');
  return s;
}

bool parse(std::string_view text, int64_t& seconds) {
  mi::detail::SysClock::time_point tp;
  if (!mi::detail::parse_expires_on(text, tp)) return false;
  seconds = mi::detail::to_unix_seconds(tp);
  FUZZ_CHECK(tp == mi::detail::from_unix_seconds(seconds), "expires_on is a whole number of seconds");
  return true;
}

void expect_same(const std::string& text, int64_t seconds, const char* what) {
  int64_t again = -1;
  FUZZ_CHECK(parse(text, again), what);
  FUZZ_CHECK(again == seconds, what);
}

void check_round_trips(int64_t t) {
  const Civil c = civil(t);
  const std::string date = pad(c.y, 4) + "-" + pad(c.m, 2) + "-" + pad(c.d, 2);
  const std::string time = pad(c.hh, 2) + ":" + pad(c.mm, 2) + ":" + pad(c.ss, 2);
  expect_same(std::to_string(t), t, "epoch seconds round trip");
  expect_same(date + "T" + time + "Z", t, "ISO 8601 with Z round trip");
  expect_same(date + "T" + time + ".0000000+00:00", t, "ISO 8601 with fraction and offset round trip");
  expect_same(date + "T" + time, t, "ISO 8601 without a zone round trip");
  expect_same(date + " " + time, t, "yyyy-MM-dd HH:mm:ss round trip");
  const std::string us_date = std::to_string(c.m) + "/" + std::to_string(c.d) + "/" + pad(c.y, 4);
  expect_same(us_date + " " + std::to_string(c.hh) + ":" + pad(c.mm, 2) + ":" + pad(c.ss, 2) + " +00:00", t,
              "M/d/yyyy 24-hour round trip");
  const unsigned h12 = c.hh % 12 == 0 ? 12 : c.hh % 12;
  expect_same(us_date + " " + std::to_string(h12) + ":" + pad(c.mm, 2) + ":" + pad(c.ss, 2) +
                  (c.hh < 12 ? " AM" : " PM") + " +00:00",
              t, "M/d/yyyy AM/PM round trip");
}

void check_token_body(std::string_view input, bool ok, int64_t seconds) {
  const auto now = mi::detail::from_unix_seconds(1700000000);
  if (fuzz::valid_utf8(input)) {
    std::string body = "{\"access_token\":\"t\",\"expires_on\":";
    fuzz::json_quote(input, body);
    body += "}";
    auto r = mi::detail::parse_token_response(body, now);
    FUZZ_CHECK(static_cast<bool>(r) == ok, "a token body's expires_on string parses as parse_expires_on does");
    if (ok) FUZZ_CHECK(mi::detail::to_unix_seconds(r->token.expires_on) == seconds, "a token body's expires_on string");

    body.insert(body.size() - 1, ",\"expires_in\":\"3600\"");
    auto r2 = mi::detail::parse_token_response(body, now);
    FUZZ_CHECK(static_cast<bool>(r2), "expires_in is the fallback for any expires_on");
    const int64_t want = ok ? seconds : 1700000000 + 3600;
    FUZZ_CHECK(mi::detail::to_unix_seconds(r2->token.expires_on) == want, "an unparseable expires_on falls back to expires_in");
  }
  // As a JSON number, when the input is one.
  mi::detail::JsonValue v;
  if (mi::detail::parse_json(input, nullptr, v) && v.is_number()) {
    // The literal without the blanks JSON allows around it.
    int64_t literal_seconds = -1;
    const bool literal_ok = v.text == input ? ok : parse(v.text, literal_seconds);
    if (v.text == input) literal_seconds = seconds;
    std::string body = "{\"access_token\":\"t\",\"expires_on\":" + v.text + "}";
    auto r = mi::detail::parse_token_response(body, now);
    FUZZ_CHECK(static_cast<bool>(r) == literal_ok, "a numeric expires_on parses as the same text does");
    if (literal_ok)
      FUZZ_CHECK(mi::detail::to_unix_seconds(r->token.expires_on) == literal_seconds, "a numeric expires_on");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  int64_t seconds = -1;
  const bool ok = parse(input, seconds);
  if (ok) {
    FUZZ_CHECK(seconds >= 0 && seconds <= kYear9999End, "expires_on lies between 1970 and 9999");
    FUZZ_CHECK(seconds <= mi::detail::kMaxEpochSeconds, "expires_on is representable");
    check_round_trips(seconds);
  }

  // Plain digits: exactly the decimal value, when it is within the limit.
  if (!input.empty() && input.size() <= 18 && input.find_first_not_of("0123456789") == std::string_view::npos) {
    int64_t value = 0;
    for (char c : input) value = value * 10 + (c - '0');
    FUZZ_CHECK(ok == (value <= mi::detail::kMaxEpochSeconds), "digits parse exactly when within the limit");
    if (ok) FUZZ_CHECK(seconds == value, "digits parse to their value");
  }

  check_token_body(input, ok, seconds);
  return 0;
}
