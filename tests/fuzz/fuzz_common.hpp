// Helpers shared by the fuzz targets. Include after managed_identity.hpp (with
// MI_IMPLEMENTATION defined): the targets check invariants of mi::detail parsers.
#ifndef MI_FUZZ_COMMON_HPP
#define MI_FUZZ_COMMON_HPP

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

// An invariant violation is a crash: libFuzzer saves the input, the replay runner
// (and so ctest) fails.
#define FUZZ_CHECK(cond, what)                                                                    \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::fprintf(stderr, "fuzz invariant violated: %s\n  check: %s\n  at %s:%d\n", (what), #cond, \
                   __FILE__, __LINE__);                                                           \
      std::abort();                                                                               \
    }                                                                                             \
  } while (0)

namespace fuzz {

// Every byte printable ASCII (0x20..0x7e): what error messages must look like, since
// they never quote raw input.
inline bool printable_ascii(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// Any C0 control character or DEL (HTAB included).
inline bool any_control(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// RFC 3629 UTF-8, written independently of the library's validator.
inline bool valid_utf8(std::string_view s) noexcept {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// A JSON string literal for s (s must be valid UTF-8): '"', '\\' and control
// characters escaped, everything else written as it is.
inline void json_quote(std::string_view s, std::string& out) {
  static const char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      out += "\\u00";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

// A tiny serializer for mi::detail::JsonValue (numbers as their literal text).
inline void json_write(const mi::detail::JsonValue& v, std::string& out) {
  using T = mi::detail::JsonValue::Type;
  switch (v.type) {
    case T::Null: out += "null"; break;
    case T::Bool: out += v.boolean ? "true" : "false"; break;
    case T::Number: out += v.text; break;
    case T::String: json_quote(v.text, out); break;
    case T::Array:
      out.push_back('[');
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i) out.push_back(',');
        json_write(v.items[i], out);
      }
      out.push_back(']');
      break;
    case T::Object:
      out.push_back('{');
      for (size_t i = 0; i < v.members.size(); ++i) {
        if (i) out.push_back(',');
        json_quote(v.members[i].first, out);
        out.push_back(':');
        json_write(v.members[i].second, out);
      }
      out.push_back('}');
      break;
  }
}

}  // namespace fuzz

#endif  // MI_FUZZ_COMMON_HPP
