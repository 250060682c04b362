// A strict RFC 8259 JSON parser for the small bodies the endpoints send.
// Grammar exactly as the RFC (no comments, trailing commas, leading zeros,
// NaN or single quotes), strings validated as UTF-8 with every escape decoded
// (surrogate pairs joined, lone ones rejected), numbers kept as their literal
// text, nesting limited to kMaxJsonDepth before recursing. Error messages give
// a byte offset and never quote the input (it may hold a token).
//
// A tree of every value costs about 90 bytes per value, so a 1 MiB body of tiny values
// ("[0,0,...]") would cost some 45 MB. Bodies from the network are therefore parsed with
// a filter: the whole grammar is still checked, but only the members the caller reads are
// built; everything else is validated and dropped on the fly.
//
// Failure is reported as the parser's own small status (what and at which byte), not as an
// mi::Error: the parser knows neither the source nor which body it reads, so each caller
// words the Error once, for its body.
#pragma once
#include "util.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

struct JsonValue {
  enum class Type : unsigned char { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  std::string text;  // String: the decoded UTF-8 value; Number: the literal exactly as written
  std::vector<JsonValue> items;                            // Array elements
  std::vector<std::pair<std::string, JsonValue>> members;  // Object members in document order

  // Special members are defined after the class: their definitions need
  // std::pair<std::string, JsonValue>, which needs JsonValue complete (clang
  // with libstdc++ in C++20 mode rejects the implicit inline ones).
  JsonValue();
  JsonValue(const JsonValue& other);
  JsonValue(JsonValue&& other) noexcept;
  JsonValue& operator=(const JsonValue& other);
  JsonValue& operator=(JsonValue&& other) noexcept;
  MI_DETAIL_NOINLINE ~JsonValue();  // recursive: inlined, GCC copies it into itself levels deep

  // The first member with that key (objects only), else nullptr.
  const JsonValue* find(std::string_view key) const noexcept;
  bool is_number() const noexcept { return type == Type::Number; }
  bool is_string() const noexcept { return type == Type::String; }
  bool is_object() const noexcept { return type == Type::Object; }
};

// Inline, so that only those the program uses are compiled; the destructor (always used) is not.
inline JsonValue::JsonValue() = default;
inline JsonValue::JsonValue(const JsonValue& other) = default;
inline JsonValue::JsonValue(JsonValue&& other) noexcept = default;
inline JsonValue& JsonValue::operator=(const JsonValue& other) = default;
inline JsonValue& JsonValue::operator=(JsonValue&& other) noexcept = default;
JsonValue::~JsonValue() = default;

const JsonValue* JsonValue::find(std::string_view key) const noexcept {
  if (type != Type::Object) return nullptr;
  for (const auto& member : members)
    if (member.first == key) return &member.second;
  return nullptr;
}

constexpr int kMaxJsonDepth = 64;

// Which object members to build: called with the object's depth (0 for the root) and the
// member's decoded name. Array elements are never built under a filter.
using JsonKeep = bool (*)(int depth, std::string_view name) noexcept;

// The outcome of a parse: `error` is nullptr on success, else what was wrong (no input
// quoted), found at byte `offset`.
struct JsonStatus {
  const char* error = nullptr;
  size_t offset = 0;
  explicit operator bool() const noexcept { return error == nullptr; }
};

class JsonParser {
 public:
  JsonParser(std::string_view text, JsonKeep keep) noexcept
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()), keep_(keep) {}

  // Parses the whole input as one document.
  JsonStatus parse_document(JsonValue& out);

 private:
  bool fail(const char* what, const char* at) noexcept {
    error_ = what;
    offset_ = static_cast<size_t>(at - begin_);
    return false;
  }
  void skip_whitespace() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  // A null `out` checks the value without building it.
  bool parse_value(JsonValue* out, int depth);
  bool parse_array(JsonValue* out, int depth);
  bool parse_object(JsonValue* out, int depth);
  bool parse_string(std::string* out);
  bool parse_escaped(std::string& out, const char* start);
  bool parse_number(JsonValue* out);
  bool parse_literal(const char* word, size_t length);
  bool parse_hex4(const char* at, unsigned& out) noexcept;
  bool skip_utf8_sequence() noexcept;

  const char* begin_;
  const char* p_;
  const char* end_;
  const char* error_ = nullptr;
  size_t offset_ = 0;
  JsonKeep keep_;        // nullptr: build everything
  std::string scratch_;  // names under a filter and escaped strings that are dropped, reused
};

JsonStatus JsonParser::parse_document(JsonValue& out) {
  out = JsonValue();
  skip_whitespace();
  if (parse_value(&out, 0)) {
    skip_whitespace();
    if (p_ != end_) fail("unexpected data after the JSON document", p_);
  }
  return JsonStatus{error_, offset_};
}

bool JsonParser::parse_value(JsonValue* out, int depth) {
  if (p_ == end_) return fail("unexpected end of input, expected a value", p_);
  switch (*p_) {
    case '{': return parse_object(out, depth);
    case '[': return parse_array(out, depth);
    case '"':
      if (out == nullptr) return parse_string(nullptr);
      out->type = JsonValue::Type::String;
      return parse_string(&out->text);
    case 't':
    case 'f':
      if (out != nullptr) {
        out->type = JsonValue::Type::Bool;
        out->boolean = *p_ == 't';
      }
      return *p_ == 't' ? parse_literal("true", 4) : parse_literal("false", 5);
    case 'n':
      if (out != nullptr) out->type = JsonValue::Type::Null;
      return parse_literal("null", 4);
    default:
      if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) return parse_number(out);
      return fail("unexpected character, expected a value", p_);
  }
}

bool JsonParser::parse_literal(const char* word, size_t length) {
  if (static_cast<size_t>(end_ - p_) < length) {
    // Report the first mismatching byte, or the end of input for a truncated literal.
    for (const char* q = p_; q < end_; ++q)
      if (*q != word[static_cast<size_t>(q - p_)]) return fail("invalid literal", q);
    return fail("unexpected end of input in a literal", end_);
  }
  for (size_t i = 0; i < length; ++i)
    if (p_[i] != word[i]) return fail("invalid literal", p_ + i);
  p_ += length;
  return true;
}

bool JsonParser::parse_number(JsonValue* out) {
  const char* start = p_;
  auto is_digit = [this]() noexcept { return p_ < end_ && *p_ >= '0' && *p_ <= '9'; };
  if (*p_ == '-') ++p_;
  if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
  if (*p_ == '0') {
    ++p_;
    if (is_digit()) return fail("invalid number (leading zero)", p_);
  } else {
    while (is_digit()) ++p_;
  }
  if (p_ < end_ && *p_ == '.') {
    ++p_;
    if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
    while (is_digit()) ++p_;
  }
  if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
    ++p_;
    if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (!is_digit()) return fail(p_ == end_ ? "unexpected end of input in a number" : "invalid number", p_);
    while (is_digit()) ++p_;
  }
  if (out != nullptr) {
    out->type = JsonValue::Type::Number;
    out->text.assign(start, static_cast<size_t>(p_ - start));
  }
  return true;
}

bool JsonParser::parse_hex4(const char* at, unsigned& out) noexcept {
  if (end_ - at < 4) {
    for (const char* q = at; q < end_; ++q)
      if (hex_value(*q) < 0) return fail("invalid \\u escape", q);
    return fail("unexpected end of input in a \\u escape", end_);
  }
  unsigned v = 0;
  for (int i = 0; i < 4; ++i) {
    int h = hex_value(at[i]);
    if (h < 0) return fail("invalid \\u escape", at + i);
    v = (v << 4) | static_cast<unsigned>(h);
  }
  out = v;
  return true;
}

// Validates one multi-byte UTF-8 sequence at p_ (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF) and moves past it.
bool JsonParser::skip_utf8_sequence() noexcept {
  const unsigned char* s = reinterpret_cast<const unsigned char*>(p_);
  const unsigned char* e = reinterpret_cast<const unsigned char*>(end_);
  unsigned char c = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return fail("invalid UTF-8 in a string", p_);
  }
  for (size_t i = 1; i <= need; ++i) {
    if (s + i >= e) return fail("unexpected end of input in a UTF-8 sequence", end_);
    unsigned char b = s[i];
    unsigned char b_lo = i == 1 ? lo : static_cast<unsigned char>(0x80);
    unsigned char b_hi = i == 1 ? hi : static_cast<unsigned char>(0xBF);
    if (b < b_lo || b > b_hi) return fail("invalid UTF-8 in a string", p_ + i);
  }
  p_ += need + 1;
  return true;
}

bool JsonParser::parse_string(std::string* out) {
  ++p_;  // the opening quote
  const char* start = p_;
  // Fast path: no escapes, so the value is the raw bytes (validated in place).
  while (p_ < end_) {
    unsigned char c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      if (out != nullptr) out->assign(start, static_cast<size_t>(p_ - start));
      ++p_;
      return true;
    }
    if (c == '\\') return parse_escaped(out != nullptr ? *out : scratch_, start);
    if (c < 0x20) return fail("unescaped control character in a string", p_);
    if (c < 0x80) {
      ++p_;
    } else if (!skip_utf8_sequence()) {
      return false;
    }
  }
  return fail("unexpected end of input in a string", end_);
}

// The slow path, from the first backslash on; [start, p_) is already validated.
bool JsonParser::parse_escaped(std::string& out, const char* start) {
  out.clear();
  out.reserve(static_cast<size_t>(p_ - start) + 16);
  out.append(start, static_cast<size_t>(p_ - start));
  while (p_ < end_) {
    unsigned char c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      ++p_;
      return true;
    }
    if (c < 0x20) return fail("unescaped control character in a string", p_);
    if (c >= 0x80) {
      const char* run = p_;
      if (!skip_utf8_sequence()) return false;
      out.append(run, static_cast<size_t>(p_ - run));
      continue;
    }
    if (c != '\\') {
      // Copy the run of plain ASCII up to the next special byte at once.
      const char* run = p_;
      while (p_ < end_) {
        unsigned char d = static_cast<unsigned char>(*p_);
        if (d == '"' || d == '\\' || d < 0x20 || d >= 0x80) break;
        ++p_;
      }
      out.append(run, static_cast<size_t>(p_ - run));
      continue;
    }
    const char* escape = p_;
    if (++p_ == end_) return fail("unexpected end of input in an escape", end_);
    char e = *p_++;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        unsigned cp;
        if (!parse_hex4(p_, cp)) return false;
        p_ += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate in a \\u escape", escape);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (end_ - p_ < 2) {
            if (p_ == end_ || (*p_ == '\\' && p_ + 1 == end_))
              return fail("unexpected end of input after a high surrogate", end_);
            return fail("lone high surrogate in a \\u escape", escape);
          }
          if (p_[0] != '\\' || p_[1] != 'u') return fail("lone high surrogate in a \\u escape", escape);
          unsigned low;
          if (!parse_hex4(p_ + 2, low)) return false;
          if (low < 0xDC00 || low > 0xDFFF) return fail("high surrogate not followed by a low surrogate", p_);
          p_ += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        if (cp < 0x80) {
          out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
          out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
          out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
          out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
        break;
      }
      default: return fail("invalid escape in a string", escape);
    }
  }
  return fail("unexpected end of input in a string", end_);
}

bool JsonParser::parse_array(JsonValue* out, int depth) {
  if (depth >= kMaxJsonDepth) return fail("JSON nested too deeply", p_);
  ++p_;  // '['
  if (out != nullptr) out->type = JsonValue::Type::Array;
  if (keep_ != nullptr) out = nullptr;  // elements are checked, not built
  skip_whitespace();
  if (p_ < end_ && *p_ == ']') {
    ++p_;
    return true;
  }
  for (;;) {
    JsonValue* item = nullptr;
    if (out != nullptr) {
      out->items.emplace_back();
      item = &out->items.back();
    }
    if (!parse_value(item, depth + 1)) return false;
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an array", p_);
    if (*p_ == ']') {
      ++p_;
      return true;
    }
    if (*p_ != ',') return fail("expected ',' or ']' in an array", p_);
    ++p_;
    skip_whitespace();
  }
}

bool JsonParser::parse_object(JsonValue* out, int depth) {
  if (depth >= kMaxJsonDepth) return fail("JSON nested too deeply", p_);
  ++p_;  // '{'
  if (out != nullptr) out->type = JsonValue::Type::Object;
  skip_whitespace();
  if (p_ < end_ && *p_ == '}') {
    ++p_;
    return true;
  }
  for (;;) {
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ != '"') return fail("expected a string key in an object", p_);
    JsonValue* value = nullptr;
    if (out == nullptr) {
      if (!parse_string(nullptr)) return false;
    } else if (keep_ == nullptr) {
      out->members.emplace_back();
      auto& member = out->members.back();
      if (!parse_string(&member.first)) return false;
      value = &member.second;
    } else {
      // Only the first member of a kept name is built (find() returns the first anyway),
      // so repeating a wanted name costs nothing either.
      if (!parse_string(&scratch_)) return false;
      if (keep_(depth, scratch_) && out->find(scratch_) == nullptr) {
        out->members.emplace_back(scratch_, JsonValue());
        value = &out->members.back().second;
      }
    }
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ != ':') return fail("expected ':' after an object key", p_);
    ++p_;
    skip_whitespace();
    if (!parse_value(value, depth + 1)) return false;
    skip_whitespace();
    if (p_ == end_) return fail("unexpected end of input in an object", p_);
    if (*p_ == '}') {
      ++p_;
      return true;
    }
    if (*p_ != ',') return fail("expected ',' or '}' in an object", p_);
    ++p_;
    skip_whitespace();
  }
}

// Parses one whole document (whitespace around it allowed, nothing else), checking the
// grammar in full. A body from the network passes the `keep` filter of the members its
// caller reads: only those are built (under the root, and under a kept object), the first
// of each name, and arrays stay empty, so memory beyond the input is the kept text and at
// most the longest string, whatever the body's shape. A null `keep` builds the whole tree.
JsonStatus parse_json(std::string_view text, JsonKeep keep, JsonValue& out) {
  return JsonParser(text, keep).parse_document(out);
}

// `value` as compact JSON text: strings escaped as RFC 8259 requires (UTF-8 passes through,
// the parser validated it), numbers exactly as written. Depth is bounded by the parser's.
MI_DETAIL_COLD void write_json(const JsonValue& value, std::string& out) {
  auto write_string = [&out](std::string_view text) {
    static const char hex[] = "0123456789abcdef";
    out.push_back('"');
    for (char ch : text) {
      unsigned char c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        out.push_back('\\');
        out.push_back(ch);
      } else if (c < 0x20 || c == 0x7f) {
        out += "\\u00";
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 15]);
      } else {
        out.push_back(ch);
      }
    }
    out.push_back('"');
  };
  switch (value.type) {
    case JsonValue::Type::Null: out += "null"; return;
    case JsonValue::Type::Bool: out += value.boolean ? "true" : "false"; return;
    case JsonValue::Type::Number: out += value.text; return;
    case JsonValue::Type::String: write_string(value.text); return;
    case JsonValue::Type::Array:
      out.push_back('[');
      for (size_t i = 0; i < value.items.size(); ++i) {
        if (i > 0) out.push_back(',');
        write_json(value.items[i], out);
      }
      out.push_back(']');
      return;
    case JsonValue::Type::Object:
      out.push_back('{');
      for (size_t i = 0; i < value.members.size(); ++i) {
        if (i > 0) out.push_back(',');
        write_string(value.members[i].first);
        out.push_back(':');
        write_json(value.members[i].second, out);
      }
      out.push_back('}');
      return;
  }
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
