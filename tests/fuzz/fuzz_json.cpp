// Fuzz target: the JSON parser (parse_json) and the token and error body parsers
// built on it (parse_token_response, parse_error_body). The input is a response body.
//
// Invariants, beyond "no crash, no sanitizer report":
//  - a failure has a non-empty, printable-ASCII message and an offset inside the input;
//  - a parsed document has container depth <= 64, its strings and keys are valid UTF-8,
//    and its re-serialisation re-parses to an identical tree (and re-serialises to the
//    same text);
//  - nesting beyond 64 is always rejected: the document wrapped in (64 - depth) arrays
//    still parses, wrapped in (65 - depth) arrays it does not;
//  - the filtered parse (a member filter) accepts and rejects exactly alike;
//  - parse_error_body says json exactly when parse_json succeeds;
//  - a successful parse_token_response has a non-empty access_token and token_type, an
//    expiry between 1970 and 9999, and a refresh time that is none or strictly between
//    now and the expiry; a failed one is invalid_response with a printable-ASCII message
//    that stays the same when the access token's text changes (so it never quotes it).
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "fuzz_common.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

using mi::detail::JsonValue;

namespace {

constexpr int kMaxDepth = 64;  // docs/protocol.md §9; mi::detail::kMaxJsonDepth

int depth_of(const JsonValue& v) {
  int d = 0;
  for (const auto& item : v.items) {
    int c = depth_of(item);
    if (c > d) d = c;
  }
  for (const auto& member : v.members) {
    int c = depth_of(member.second);
    if (c > d) d = c;
  }
  return v.type == JsonValue::Type::Array || v.is_object() ? d + 1 : 0;
}

bool all_strings_utf8(const JsonValue& v) {
  if (v.is_string() && !fuzz::valid_utf8(v.text)) return false;
  for (const auto& item : v.items)
    if (!all_strings_utf8(item)) return false;
  for (const auto& member : v.members)
    if (!fuzz::valid_utf8(member.first) || !all_strings_utf8(member.second)) return false;
  return true;
}

bool same(const JsonValue& a, const JsonValue& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case JsonValue::Type::Null: return true;
    case JsonValue::Type::Bool: return a.boolean == b.boolean;
    case JsonValue::Type::Number:
    case JsonValue::Type::String: return a.text == b.text;
    case JsonValue::Type::Array:
      if (a.items.size() != b.items.size()) return false;
      for (size_t i = 0; i < a.items.size(); ++i)
        if (!same(a.items[i], b.items[i])) return false;
      return true;
    case JsonValue::Type::Object:
      if (a.members.size() != b.members.size()) return false;
      for (size_t i = 0; i < a.members.size(); ++i)
        if (a.members[i].first != b.members[i].first || !same(a.members[i].second, b.members[i].second))
          return false;
      return true;
  }
  return false;
}

bool parses(std::string_view text) {
  JsonValue v;
  return static_cast<bool>(mi::detail::parse_json(text, nullptr, v));
}

void check_json(std::string_view input) {
  JsonValue root;
  const mi::detail::JsonStatus status = mi::detail::parse_json(input, nullptr, root);
  const bool ok = static_cast<bool>(status);
  const std::string message = ok ? std::string() : std::string(status.error);
  const size_t offset = status.offset;

  // The filtered parse used for bodies from the network checks the very same grammar.
  JsonValue kept;
  const mi::detail::JsonStatus kept_status =
      mi::detail::parse_json(input, [](int, std::string_view) noexcept { return true; }, kept);
  FUZZ_CHECK(static_cast<bool>(kept_status) == ok, "the filtered parse accepts exactly what the full parse accepts");
  if (!ok)
    FUZZ_CHECK(message == kept_status.error && kept_status.offset == offset, "the filtered parse fails alike");
  if (ok) FUZZ_CHECK(kept.type == root.type, "the filtered parse gives the root's type");

  if (!ok) {
    FUZZ_CHECK(!message.empty(), "a JSON error has a message");
    FUZZ_CHECK(fuzz::printable_ascii(message), "a JSON error message is printable ASCII (never quotes input)");
    FUZZ_CHECK(offset <= input.size(), "a JSON error offset lies within the input");
    return;
  }

  const int depth = depth_of(root);
  FUZZ_CHECK(depth <= kMaxDepth, "a parsed document is nested at most 64 deep");
  FUZZ_CHECK(all_strings_utf8(root), "parsed strings and keys are valid UTF-8");

  std::string text;
  fuzz::json_write(root, text);
  JsonValue again;
  FUZZ_CHECK(mi::detail::parse_json(text, nullptr, again), "a re-serialised document parses");
  FUZZ_CHECK(same(root, again), "a re-serialised document parses to the same tree");
  std::string text2;
  fuzz::json_write(again, text2);
  FUZZ_CHECK(text == text2, "serialisation is a fixed point");

  // The nesting limit is exact: 64 levels parse, 65 never do.
  const size_t fill = static_cast<size_t>(kMaxDepth - depth);
  std::string deep = std::string(fill, '[') + text + std::string(fill, ']');
  FUZZ_CHECK(parses(deep), "a document wrapped up to depth 64 parses");
  std::string deeper = "[" + deep + "]";
  FUZZ_CHECK(!parses(deeper), "a document nested 65 deep is rejected");
  std::string deeper_obj = "{\"k\":" + deep + "}";
  FUZZ_CHECK(!parses(deeper_obj), "a document nested 65 deep (object) is rejected");
}

void check_bodies(std::string_view input) {
  JsonValue root;
  const bool is_json = static_cast<bool>(mi::detail::parse_json(input, nullptr, root));

  mi::detail::ErrorBody err = mi::detail::parse_error_body(input);
  FUZZ_CHECK(err.json == is_json, "parse_error_body's json flag agrees with parse_json");
  if (!is_json || !root.is_object())
    FUZZ_CHECK(err.code.empty() && err.description.empty() && err.correlation_id.empty(),
               "a body that is not a JSON object gives empty error fields");

  // A fixed "now" keeps runs reproducible: 2023-11-14T22:13:20Z.
  const auto now = mi::detail::from_unix_seconds(1700000000);
  auto result = mi::detail::parse_token_response(input, now);
  if (result) {
    const mi::detail::Token& t = result.value().token;
    FUZZ_CHECK(!t.access_token.empty(), "a parsed token is non-empty");
    FUZZ_CHECK(!t.token_type.empty(), "a parsed token has a token type");
    const int64_t exp = mi::detail::to_unix_seconds(t.expires_on);
    FUZZ_CHECK(exp >= 0 && exp <= 253402300799, "a token expires between 1970 and 9999");
    if (t.refresh_on != mi::detail::SysClock::time_point())
      FUZZ_CHECK(t.refresh_on > now && t.refresh_on < t.expires_on, "the refresh time lies between now and expiry");
    const JsonValue* tok = root.find("access_token");
    FUZZ_CHECK(tok != nullptr && tok->is_string() && tok->text == t.access_token,
               "the access token is the document's access_token");
  } else {
    const mi::Error& e = result.error();
    FUZZ_CHECK(e.code() == mi::Errc::invalid_response, "a rejected token body is invalid_response");
    FUZZ_CHECK(fuzz::printable_ascii(e.message()), "a token body error message is printable ASCII");
    if (is_json && root.is_object()) {
      // The message must not depend on the token's text: the same body with every
      // access_token string replaced by another of the same length fails alike. The
      // replacement keeps the token's spaces and control characters (C0, DEL, C1), whose
      // presence alone is a reason to refuse it.
      JsonValue other = root;
      bool changed = false;
      for (auto& member : other.members)
        if (member.first == "access_token" && member.second.is_string() && !member.second.text.empty()) {
          std::string& text = member.second.text;
          const char fill = text[0] == 'Q' ? 'R' : 'Q';
          for (size_t i = 0; i < text.size(); ++i) {
            const unsigned char c = static_cast<unsigned char>(text[i]);
            if (c <= 0x20 || c == 0x7f) continue;
            if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
                static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
              ++i;
              continue;
            }
            text[i] = fill;
          }
          changed = true;
        }
      if (changed) {
        std::string body;
        fuzz::json_write(other, body);
        auto again = mi::detail::parse_token_response(body, now);
        FUZZ_CHECK(!again, "a body fails whatever the token's text");
        FUZZ_CHECK(again.error().message() == e.message(), "an error message never depends on (quotes) the access token");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check_json(input);
  check_bodies(input);
  return 0;
}
