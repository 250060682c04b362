// Token and error bodies (docs/protocol.md §5). Field types vary between sources: numbers
// arrive as JSON numbers or numeric strings, expires_on as epoch seconds or as
// one of several date forms. Error messages never quote the body or the token.
#pragma once
#include "json.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// A token as the endpoint issued it: what the cache keeps (entries and per-thread copies)
// and what AuthResult's token fields are filled from (set_token).
struct Token {
  std::string access_token;
  std::string token_type;  // "Bearer" when absent or empty
  SysClock::time_point expires_on;
  SysClock::time_point refresh_on;  // SysClock::time_point() (epoch) when none
};

// AuthResult's token fields, from a Token copied or moved: the one place the two meet.
template <class T>
void set_token(AuthResult& out, T&& token) {
  out.access_token = std::forward<T>(token).access_token;
  out.token_type = std::forward<T>(token).token_type;
  out.expires_on = token.expires_on;
  out.refresh_on = token.refresh_on;
}

// What the endpoint echoes about the request, each "" if absent or not a string. Only
// Azure Arc's identity fields are checked (arc_confirms_identity); none is cached.
struct TokenEcho {
  std::string resource;
  std::string client_id, object_id, msi_res_id, mi_res_id;
};

struct TokenResponse {
  Token token;
  TokenEcho echo;
};

struct ErrorBody {
  std::string code, description, correlation_id;
  bool json = false;  // the body was a JSON document (of any shape)
};

// The latest instant (in seconds since the epoch) accepted anywhere: 9999-12-31T23:59:59Z,
// or less where SysClock cannot represent that (libstdc++'s nanoseconds end in 2262).
constexpr int64_t kMaxEpochSeconds = kClockMaxSeconds - 1 < 253402300799 ? kClockMaxSeconds - 1 : 253402300799;

// A non-negative decimal in JSON number form (leading zeros tolerated, as numeric strings
// carry them), fraction and exponent allowed, truncated toward zero to whole seconds.
// False when malformed, negative, or above kMaxEpochSeconds.
bool parse_seconds_text(std::string_view s, int64_t& out) noexcept {
  size_t i = 0, n = s.size();
  auto digit = [&](size_t k) noexcept { return k < n && s[k] >= '0' && s[k] <= '9'; };
  size_t int_begin = i;
  while (digit(i)) ++i;
  size_t int_end = i;
  if (int_end == int_begin) return false;
  size_t frac_begin = i, frac_end = i;
  if (i < n && s[i] == '.') {
    frac_begin = ++i;
    while (digit(i)) ++i;
    frac_end = i;
    if (frac_end == frac_begin) return false;
  }
  int64_t exponent = 0;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool negative = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (!digit(i)) return false;
    while (digit(i)) {
      if (exponent < 100000) exponent = exponent * 10 + (s[i] - '0');
      ++i;
    }
    if (negative) exponent = -exponent;
  }
  if (i != n) return false;
  // The digits int||frac with the decimal point after `point` of them.
  const int64_t int_len = static_cast<int64_t>(int_end - int_begin);
  const int64_t frac_len = static_cast<int64_t>(frac_end - frac_begin);
  const int64_t point = int_len + exponent;
  int64_t value = 0;
  for (int64_t k = 0; k < point; ++k) {
    int d = 0;
    if (k < int_len) d = s[int_begin + static_cast<size_t>(k)] - '0';
    else if (k < int_len + frac_len) d = s[frac_begin + static_cast<size_t>(k - int_len)] - '0';
    else if (value == 0) break;  // only zeros remain to be appended to zero
    value = value * 10 + d;
    if (value > kMaxEpochSeconds) return false;
  }
  out = value;
  return true;
}

// Whether `text` can go into an HTTP header as one token: no control character (C0, DEL,
// or C1 as UTF-8) and no space. A CR LF in a token would let the endpoint add headers to
// whatever request the caller puts it in.
bool header_safe(std::string_view text) noexcept {
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c <= 0x20 || c == 0x7f) return false;
    if (c == 0xC2 && i + 1 < text.size()) {
      unsigned char next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9F) return false;
    }
  }
  return true;
}

// Seconds from a JSON number or a numeric string.
bool json_seconds(const JsonValue* v, int64_t& out) noexcept {
  if (v == nullptr || !(v->is_number() || v->is_string())) return false;
  return parse_seconds_text(v->text, out);
}

namespace date_parse {

struct Cursor {
  std::string_view s;
  size_t i = 0;
  bool done() const noexcept { return i == s.size(); }
  bool peek(char c) const noexcept { return i < s.size() && s[i] == c; }
  bool eat(char c) noexcept {
    if (!peek(c)) return false;
    ++i;
    return true;
  }
  bool is_digit() const noexcept { return i < s.size() && s[i] >= '0' && s[i] <= '9'; }
  // Exactly n digits.
  bool digits(int n, int& v) noexcept {
    v = 0;
    for (int k = 0; k < n; ++k) {
      if (!is_digit()) return false;
      v = v * 10 + (s[i++] - '0');
    }
    return true;
  }
  // One or two digits.
  bool digits12(int& v) noexcept {
    if (!digits(1, v)) return false;
    if (is_digit()) v = v * 10 + (s[i++] - '0');
    return true;
  }
};

inline bool leap_year(int y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

inline int days_in_month(int y, int m) noexcept {
  static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap_year(y) ? 29 : days[m - 1];
}

// A UTC offset: ('+'|'-') hh [':'] mm, in seconds east of UTC.
bool offset(Cursor& c, int64_t& seconds) noexcept {
  int sign;
  if (c.eat('+')) sign = 1;
  else if (c.eat('-')) sign = -1;
  else return false;
  int hh, mm;
  if (!c.digits(2, hh)) return false;
  c.eat(':');
  if (!c.digits(2, mm)) return false;
  if (hh > 23 || mm > 59) return false;
  seconds = sign * (static_cast<int64_t>(hh) * 3600 + static_cast<int64_t>(mm) * 60);
  return true;
}

bool combine(int y, int mo, int d, int h, int mi, int sec, int64_t offset_seconds, int64_t& out) noexcept {
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return false;
  if (h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59) return false;
  int64_t t = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 +
              static_cast<int64_t>(h) * 3600 + static_cast<int64_t>(mi) * 60 + sec - offset_seconds;
  if (t < 0 || t > kMaxEpochSeconds) return false;
  out = t;
  return true;
}

// yyyy-MM-dd('T'|' ')HH:mm:ss[.fraction][Z | [' ']±hh[:]mm]; no zone means UTC.
bool iso(std::string_view s, int64_t& out) noexcept {
  Cursor c{s};
  int y, mo, d, h, mi, sec;
  if (!c.digits(4, y) || !c.eat('-') || !c.digits(2, mo) || !c.eat('-') || !c.digits(2, d)) return false;
  if (!(c.eat('T') || c.eat('t') || c.eat(' '))) return false;
  if (!c.digits(2, h) || !c.eat(':') || !c.digits(2, mi) || !c.eat(':') || !c.digits(2, sec)) return false;
  if (c.eat('.')) {
    if (!c.is_digit()) return false;
    while (c.is_digit()) ++c.i;  // truncated
  }
  int64_t zone = 0;
  if (!c.done()) {
    if (!(c.eat('Z') || c.eat('z'))) {
      c.eat(' ');
      if (!offset(c, zone)) return false;
    }
  }
  return c.done() && combine(y, mo, d, h, mi, sec, zone, out);
}

// M/d/yyyy h:mm:ss[ AM| PM][ ±hh:mm] (.NET's general date/time pattern, en-US).
bool us(std::string_view s, int64_t& out) noexcept {
  Cursor c{s};
  int mo, d, y, h, mi, sec;
  if (!c.digits12(mo) || !c.eat('/') || !c.digits12(d) || !c.eat('/') || !c.digits(4, y)) return false;
  if (!c.eat(' ')) return false;
  if (!c.digits12(h) || !c.eat(':') || !c.digits(2, mi) || !c.eat(':') || !c.digits(2, sec)) return false;
  if (c.s.size() - c.i >= 3 && c.s[c.i] == ' ') {
    std::string_view marker = c.s.substr(c.i + 1, 2);
    bool am = iequals(marker, "AM"), pm = iequals(marker, "PM");
    if (am || pm) {
      c.i += 3;
      if (h < 1 || h > 12) return false;
      if (am) h = h == 12 ? 0 : h;
      else h = h == 12 ? 12 : h + 12;
    }
  }
  int64_t zone = 0;
  if (!c.done()) {
    if (!c.eat(' ') || !offset(c, zone)) return false;
  }
  return c.done() && combine(y, mo, d, h, mi, sec, zone, out);
}

}  // namespace date_parse

// One expires_on value given as a string (numeric strings included) -> time point;
// false if unparseable. Forms: epoch seconds; ISO 8601 / RFC 3339 with or without a
// fraction and a zone; M/d/yyyy h:mm:ss with optional AM/PM and offset; yyyy-MM-dd HH:mm:ss.
bool parse_expires_on(std::string_view text, SysClock::time_point& out) {
  int64_t seconds = 0;
  return (parse_seconds_text(text, seconds) || date_parse::iso(text, seconds) || date_parse::us(text, seconds)) &&
         from_unix_seconds(seconds, out);
}

// The members of a token response that are read; nothing else of the body is built.
bool token_member(int depth, std::string_view name) noexcept {
  static const char* const names[] = {"access_token", "token_type", "resource",   "expires_on", "expires_in",
                                      "refresh_in",   "client_id",  "object_id", "msi_res_id", "mi_res_id"};
  if (depth != 0) return false;
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

MI_DETAIL_NOINLINE Result<TokenResponse> parse_token_response(std::string_view body, SysClock::time_point now) {
  if (trim(body).empty())
    return make_error(Errc::invalid_response, "the token response is empty (a success status with no body)");
  JsonValue root;
  if (JsonStatus status = parse_json(body, &token_member, root); !status)
    return make_error(Errc::invalid_response, cat({"the token response is not valid JSON (at byte ",
                                                   num(static_cast<long long>(status.offset)), "): ", status.error}));
  if (!root.is_object()) return make_error(Errc::invalid_response, "the token response is not a JSON object");

  TokenResponse response;
  Token& out = response.token;
  const JsonValue* token = root.find("access_token");
  if (token == nullptr) return make_error(Errc::invalid_response, "the token response has no access_token");
  if (!token->is_string())
    return make_error(Errc::invalid_response, "the token response's access_token is not a string");
  if (token->text.empty()) return make_error(Errc::invalid_response, "the token response has an empty access_token");
  if (!header_safe(token->text))
    return make_error(Errc::invalid_response,
                      "the token response's access_token contains a control character or a space, so it cannot go "
                      "into an Authorization header");

  auto string_field = [&root](std::string_view key) -> std::string {
    const JsonValue* v = root.find(key);
    return v != nullptr && v->is_string() ? v->text : std::string();
  };

  // Expiry: expires_on when present and parseable, else now + expires_in.
  bool have_expiry = false;
  if (const JsonValue* on = root.find("expires_on")) {
    int64_t seconds = 0;
    if (on->is_number() && parse_seconds_text(on->text, seconds) && from_unix_seconds(seconds, out.expires_on)) {
      have_expiry = true;
    } else if (on->is_string() && parse_expires_on(on->text, out.expires_on)) {
      have_expiry = true;
    }
  }
  if (!have_expiry) {
    int64_t seconds = 0;
    if (json_seconds(root.find("expires_in"), seconds) && seconds <= kMaxEpochSeconds - to_unix_seconds(now)) {
      out.expires_on = now + std::chrono::seconds(seconds);
      have_expiry = true;
    }
  }
  if (!have_expiry)
    return make_error(Errc::invalid_response, "the token response has neither a usable expires_on nor expires_in");

  // Refresh: the server's refresh_in when it falls inside the lifetime, else half a long lifetime.
  const SysClock::duration lifetime = out.expires_on - now;
  int64_t refresh_in = 0;
  if (json_seconds(root.find("refresh_in"), refresh_in) && refresh_in > 0 &&
      std::chrono::seconds(refresh_in) < lifetime) {
    out.refresh_on = now + std::chrono::seconds(refresh_in);
  } else if (lifetime > std::chrono::hours(2)) {
    out.refresh_on = now + lifetime / 2;
  }

  out.access_token = token->text;
  out.token_type = string_field("token_type");
  if (out.token_type.empty()) out.token_type = "Bearer";
  if (!header_safe(out.token_type))
    return make_error(Errc::invalid_response,
                      "the token response's token_type contains a control character or a space, so it cannot go "
                      "into an Authorization header");
  TokenEcho& echo = response.echo;
  echo.resource = string_field("resource");
  echo.client_id = string_field("client_id");
  echo.object_id = string_field("object_id");
  echo.msi_res_id = string_field("msi_res_id");
  echo.mi_res_id = string_field("mi_res_id");
  return response;
}

// Best effort on any body: flat {"error", "error_description", "correlation_id"}, nested
// {"error": {"code", "message", "correlationId"}}, or App Service's {"message", "correlationId"}.
// Anything else (not JSON, HTML, empty, not an object) gives empty fields.
MI_DETAIL_COLD ErrorBody parse_error_body(std::string_view body) {
  ErrorBody out;
  JsonValue root;
  // Only the members read below are built: the root's, and those of a nested "error" object.
  JsonKeep keep = [](int depth, std::string_view name) noexcept {
    if (depth == 0)
      return name == "error" || name == "error_description" || name == "message" || name == "correlation_id" ||
             name == "correlationId";
    return depth == 1 && (name == "code" || name == "message" || name == "correlationId");
  };
  if (!parse_json(body, keep, root)) return out;
  out.json = true;
  if (!root.is_object()) return out;
  auto text = [](const JsonValue* v) -> std::string { return v != nullptr && v->is_string() ? v->text : std::string(); };
  auto code = [](const JsonValue* v) -> std::string {
    return v != nullptr && (v->is_string() || v->is_number()) ? v->text : std::string();
  };
  const JsonValue* error = root.find("error");
  if (error != nullptr && error->is_object()) {
    out.code = code(error->find("code"));
    out.description = text(error->find("message"));
    out.correlation_id = text(error->find("correlationId"));
  } else {
    out.code = text(error);
    out.description = text(root.find("error_description"));
  }
  if (out.description.empty()) out.description = text(root.find("message"));
  if (out.correlation_id.empty()) out.correlation_id = text(root.find("correlation_id"));
  if (out.correlation_id.empty()) out.correlation_id = text(root.find("correlationId"));
  return out;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
