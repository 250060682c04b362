#include "decode.hpp"

#include <utility>
#include <vector>

namespace mitoken {
namespace {

// base64url without padding (RFC 7515 §2); padding '=' is accepted at the end only.
bool base64url_decode(std::string_view in, std::string& out) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  if (in.size() % 4 == 1) return false;
  out.clear();
  unsigned int acc = 0;
  int bits = 0;
  for (char c : in) {
    unsigned int v;
    if (c >= 'A' && c <= 'Z') v = static_cast<unsigned int>(c - 'A');
    else if (c >= 'a' && c <= 'z') v = static_cast<unsigned int>(c - 'a' + 26);
    else if (c >= '0' && c <= '9') v = static_cast<unsigned int>(c - '0' + 52);
    else if (c == '-') v = 62;
    else if (c == '_') v = 63;
    else return false;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xffu);
    }
  }
  return true;
}

// A strict JSON reader that only checks well-formedness and hands back the text of each
// top-level member's value; values are re-emitted as they were (minus white space), so no
// number or string is reinterpreted.
class Reader {
 public:
  explicit Reader(std::string_view text) : s_(text) {}

  // The top-level object's members as (name as raw JSON string, value text).
  bool object_members(std::vector<std::pair<std::string_view, std::string_view>>& members) {
    skip_ws();
    if (!eat('{')) return false;
    skip_ws();
    if (eat('}')) return finish();
    for (;;) {
      skip_ws();
      const std::size_t name_start = i_;
      if (!string()) return false;
      const std::string_view name = s_.substr(name_start, i_ - name_start);
      skip_ws();
      if (!eat(':')) return false;
      skip_ws();
      const std::size_t value_start = i_;
      if (!value(1)) return false;
      members.emplace_back(name, s_.substr(value_start, i_ - value_start));
      skip_ws();
      if (eat(',')) continue;
      if (eat('}')) return finish();
      return false;
    }
  }

 private:
  bool finish() {
    skip_ws();
    return i_ == s_.size();
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool string() {
    if (!eat('"')) return false;
    while (i_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return true;
      if (c < 0x20) return false;
      if (c == '\\') {
        if (i_ >= s_.size()) return false;
        const char e = s_[i_++];
        if (e == 'u') {
          for (int k = 0; k < 4; ++k) {
            if (i_ >= s_.size()) return false;
            const char h = s_[i_++];
            if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) return false;
          }
        } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
          return false;
        }
      }
    }
    return false;
  }
  bool digits() {
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ > start;
  }
  bool number() {
    eat('-');
    if (eat('0')) {
    } else if (!digits()) {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (!eat('+')) eat('-');
      if (!digits()) return false;
    }
    return true;
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool value(int depth) {
    if (depth > 32 || i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '"') return string();
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++i_;
      skip_ws();
      if (eat(close)) return true;
      for (;;) {
        skip_ws();
        if (c == '{') {
          if (!string()) return false;
          skip_ws();
          if (!eat(':')) return false;
          skip_ws();
        }
        if (!value(depth + 1)) return false;
        skip_ws();
        if (eat(',')) continue;
        return eat(close);
      }
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    return number();
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

// Well-formed JSON text without the white space outside strings.
std::string compact(std::string_view json) {
  std::string out;
  bool in_string = false;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < json.size()) out += json[++i];
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
      out += c;
    } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
      out += c;
    }
  }
  return out;
}

bool decode_part(std::string_view part, std::string& json,
                 std::vector<std::pair<std::string_view, std::string_view>>& members) {
  if (!base64url_decode(part, json)) return false;
  Reader reader(json);
  return reader.object_members(members);
}

}  // namespace

bool decode_token(std::string_view token, std::string& out) {
  out.clear();
  const std::size_t dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return false;
  const std::size_t dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) return false;
  std::string header_json, claims_json;
  std::vector<std::pair<std::string_view, std::string_view>> header, claims;
  if (!decode_part(token.substr(0, dot1), header_json, header)) return false;
  if (!decode_part(token.substr(dot1 + 1, dot2 - dot1 - 1), claims_json, claims)) return false;

  out = "{\"verified\": false, \"note\": \"decoded from the token without checking its signature: not verified, "
        "so not proof of anything\", \"header\": {";
  bool first = true;
  for (const auto& m : header) {
    out += first ? "" : ", ";
    first = false;
    out += std::string(m.first) + ": " + compact(m.second);
  }
  out += "}, \"claims\": {";
  // The claims that say who the token is for and about; the rest (nonces, internal ids) stay out.
  static const char* const kShown[] = {"aud", "iss", "oid", "tid", "appid", "azp", "xms_mirid", "iat", "exp"};
  first = true;
  for (const char* name : kShown) {
    const std::string quoted = std::string("\"") + name + "\"";
    for (const auto& m : claims) {
      if (m.first != quoted) continue;
      out += first ? "" : ", ";
      first = false;
      out += quoted + ": " + compact(m.second);
      break;  // the first occurrence only
    }
  }
  out += "}";
  return true;
}

}  // namespace mitoken
