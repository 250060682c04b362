// URL parsing (absolute http:// and https:// only) and query merging.
// Strict on purpose: the URLs come from the environment and go on the wire, so
// anything that could split a request or smuggle credentials is refused.
#pragma once
#include "util.hpp"

namespace mi {
inline namespace v1 {
namespace detail {

struct Url {
  std::string scheme;  // "http" or "https", lowercased
  std::string host;    // lowercased reg-name, IPv4, or IPv6 without brackets
  uint16_t port = 0;   // explicit or the scheme default (80/443)
  std::string path;    // starts with '/', "/" when empty
  std::string query;   // raw, without '?', "" when none

  // path + ("?" + query if non-empty): the request-target of an HTTP request.
  std::string target() const;
  // host (bracketed if IPv6) + (":port" unless the scheme's default): the Host header.
  std::string host_header() const;
  // host (bracketed if IPv6) + ":port", always with the port: for messages.
  std::string authority() const;
  // scheme://host_header()target(): the URL again, normalised, without a fragment.
  std::string str() const;
};

std::string Url::target() const { return query.empty() ? path : cat({path, "?", query}); }

std::string Url::authority() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : "", ":", num(port)});
}

std::string Url::host_header() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  const bool default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
  if (default_port) return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : ""});
  return cat({ipv6 ? "[" : "", host, ipv6 ? "]" : "", ":", num(port)});
}

std::string Url::str() const { return cat({scheme, "://", host_header(), target()}); }

namespace url_impl {

inline bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// Dotted-quad IPv4 (inside an IPv6 literal): four decimal parts 0-255, no leading zeros.
bool valid_ipv4(std::string_view s) {
  int parts = 0;
  size_t i = 0;
  while (parts < 4) {
    size_t start = i;
    unsigned value = 0;
    while (i < s.size() && is_digit(s[i]) && i - start < 4) value = value * 10 + static_cast<unsigned>(s[i++] - '0');
    size_t len = i - start;
    if (len == 0 || len > 3 || value > 255 || (len > 1 && s[start] == '0')) return false;
    ++parts;
    if (parts < 4) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

// RFC 4291 text form: eight groups of 1-4 hex digits, one "::" at most, an optional
// dotted-quad tail. Zone identifiers are not accepted.
bool valid_ipv6(std::string_view s) {
  if (s.empty()) return false;
  int groups = 0;
  bool compressed = false;
  size_t i = 0;
  if (s.size() >= 2 && s[0] == ':' && s[1] == ':') {
    compressed = true;
    i = 2;
  } else if (s[0] == ':') {
    return false;
  }
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && hex_value(s[i]) >= 0 && i - start < 5) ++i;
    if (i < s.size() && s[i] == '.') {  // the IPv4 tail ends the address
      if (!valid_ipv4(s.substr(start))) return false;
      groups += 2;
      break;
    }
    size_t len = i - start;
    if (len == 0 || len > 4) return false;
    ++groups;
    if (i == s.size()) break;
    if (s[i] != ':') return false;
    ++i;
    if (i < s.size() && s[i] == ':') {
      if (compressed) return false;
      compressed = true;
      ++i;
    } else if (i == s.size()) {
      return false;  // a single trailing ':'
    }
  }
  return compressed ? groups <= 7 : groups == 8;
}

// Characters allowed in a host name: letters, digits, '-', '.', '_', '~'.
inline bool host_char(char c) noexcept { return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~'; }

}  // namespace url_impl

bool parse_url(std::string_view text, Url& out, std::string& why) {
  out.scheme.clear();  // reset (cheaper to compile than assigning a fresh Url)
  out.host.clear();
  out.port = 0;
  out.path.clear();
  out.query.clear();
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) {
      why = "the URL contains a control character, a space or a non-ASCII byte";
      return false;
    }
  }
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) {
    why = "not an absolute http:// or https:// URL";
    return false;
  }
  std::string scheme = ascii_lowercase(text.substr(0, sep));
  if (scheme != "http" && scheme != "https") {
    why = "the scheme must be http or https";
    return false;
  }
  std::string_view rest = text.substr(sep + 3);
  size_t hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);  // a fragment is never sent

  size_t authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view path_and_query = authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) {
    why = "the URL must not contain user information (user@host)";
    return false;
  }

  std::string_view host, port_text;
  bool has_port = false;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      why = "bad IPv6 literal (missing ']')";
      return false;
    }
    host = authority.substr(1, close - 1);
    if (!url_impl::valid_ipv6(host)) {
      why = "bad IPv6 literal";
      return false;
    }
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        why = "unexpected characters after the IPv6 literal";
        return false;
      }
      has_port = true;
      port_text = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = authority.substr(colon + 1);
    }
    for (char c : host) {
      if (!url_impl::host_char(c)) {
        why = "the host name contains a character that is not allowed";
        return false;
      }
    }
  }
  if (host.empty()) {
    why = "the URL has no host";
    return false;
  }

  uint16_t port = scheme == "https" ? 443 : 80;
  if (has_port && !port_text.empty()) {  // "host:" with an empty port means the default (RFC 3986)
    unsigned value = 0;
    if (port_text.size() > 5) {
      why = "the port is out of range (1-65535)";
      return false;
    }
    for (char c : port_text) {
      if (!url_impl::is_digit(c)) {
        why = "the port is not a number";
        return false;
      }
      value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value == 0 || value > 65535) {
      why = "the port is out of range (1-65535)";
      return false;
    }
    port = static_cast<uint16_t>(value);
  }

  std::string_view path = path_and_query, query;
  size_t qmark = path_and_query.find('?');
  if (qmark != std::string_view::npos) {
    path = path_and_query.substr(0, qmark);
    query = path_and_query.substr(qmark + 1);
  }

  out.scheme = std::move(scheme);
  out.host = ascii_lowercase(host);
  out.port = port;
  out.path = path.empty() ? std::string("/") : std::string(path);
  out.query = std::string(query);
  why.clear();
  return true;
}

std::string merge_query(std::string_view existing_raw,
                        const std::vector<std::pair<std::string, std::string>>& params) {
  StringPairs pairs;
  size_t pos = 0;
  while (pos <= existing_raw.size()) {
    size_t amp = existing_raw.find('&', pos);
    std::string_view part =
        existing_raw.substr(pos, amp == std::string_view::npos ? std::string_view::npos : amp - pos);
    if (!part.empty()) {
      size_t eq = part.find('=');
      std::string name = percent_decode(part.substr(0, eq), true);
      std::string value = eq == std::string_view::npos ? std::string() : percent_decode(part.substr(eq + 1), true);
      bool replaced = false;
      for (const auto& p : params)
        if (p.first == name) replaced = true;
      if (!replaced) add_pair(pairs, name, value);
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  for (const auto& p : params) add_pair(pairs, p.first, p.second);
  // Stable insertion sort by name: a handful of parameters, and far less code than std::stable_sort.
  for (size_t i = 1; i < pairs.size(); ++i)
    for (size_t j = i; j > 0 && pairs[j].first < pairs[j - 1].first; --j) pairs[j].swap(pairs[j - 1]);
  std::string out;
  for (const auto& p : pairs) {
    if (!out.empty()) out.push_back('&');
    out += percent_encode(p.first);
    out.push_back('=');
    out += percent_encode(p.second);
  }
  return out;
}

}  // namespace detail
}  // namespace v1
}  // namespace mi
