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

namespace {  // internal linkage: nothing below is visible outside this translation unit

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

Result<Url> bad_url(std::string_view why) { return failure<Url>(Errc::invalid_argument, {why}); }

// The authority split into its host (IPv6 without brackets) and the text after ':'.
struct HostPort {
  std::string_view host;
  std::string_view port;  // empty when absent or "host:" (both mean the default)
};

// "host[:port]" or "[IPv6][:port]"; the host is checked, the port only split off.
Result<HostPort> split_authority(std::string_view authority) {
  HostPort out;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return failure<HostPort>(Errc::invalid_argument, {"bad IPv6 literal (missing ']')"});
    out.host = authority.substr(1, close - 1);
    if (!valid_ipv6(out.host)) return failure<HostPort>(Errc::invalid_argument, {"bad IPv6 literal"});
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':')
      return failure<HostPort>(Errc::invalid_argument, {"unexpected characters after the IPv6 literal"});
    if (!after.empty()) out.port = after.substr(1);
  } else {
    size_t colon = authority.find(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string_view::npos) out.port = authority.substr(colon + 1);
    for (char c : out.host)
      if (!host_char(c))
        return failure<HostPort>(Errc::invalid_argument, {"the host name contains a character that is not allowed"});
  }
  if (out.host.empty()) return failure<HostPort>(Errc::invalid_argument, {"the URL has no host"});
  return out;
}

// Decimal 1-65535; empty text is the scheme's default (RFC 3986 allows "host:").
Result<uint16_t> parse_port(std::string_view text, uint16_t default_port) {
  if (text.empty()) return default_port;
  if (text.size() > 5) return failure<uint16_t>(Errc::invalid_argument, {"the port is out of range (1-65535)"});
  unsigned value = 0;
  for (char c : text) {
    if (!is_digit(c)) return failure<uint16_t>(Errc::invalid_argument, {"the port is not a number"});
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value == 0 || value > 65535)
    return failure<uint16_t>(Errc::invalid_argument, {"the port is out of range (1-65535)"});
  return static_cast<uint16_t>(value);
}

}  // namespace url_impl

// Parses and validates an absolute http:// or https:// URL. The error (invalid_argument)
// says what is wrong in words and never quotes the URL, which may carry a secret.
Result<Url> parse_url(std::string_view text) {
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f)
      return url_impl::bad_url("the URL contains a control character, a space or a non-ASCII byte");
  }
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return url_impl::bad_url("not an absolute http:// or https:// URL");
  Url url;
  url.scheme = ascii_lowercase(text.substr(0, sep));
  if (url.scheme != "http" && url.scheme != "https") return url_impl::bad_url("the scheme must be http or https");
  std::string_view rest = text.substr(sep + 3);
  rest = rest.substr(0, rest.find('#'));  // a fragment is never sent

  size_t authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  if (authority.find('@') != std::string_view::npos)
    return url_impl::bad_url("the URL must not contain user information (user@host)");
  Result<url_impl::HostPort> host_port = url_impl::split_authority(authority);
  if (!host_port) return host_port.error();
  const uint16_t default_port = url.scheme == "https" ? uint16_t{443} : uint16_t{80};
  Result<uint16_t> port = url_impl::parse_port(host_port->port, default_port);
  if (!port) return port.error();
  url.host = ascii_lowercase(host_port->host);
  url.port = *port;

  std::string_view path_and_query =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  size_t qmark = path_and_query.find('?');
  std::string_view path = path_and_query.substr(0, qmark);
  url.path = path.empty() ? std::string("/") : std::string(path);
  if (qmark != std::string_view::npos) url.query = std::string(path_and_query.substr(qmark + 1));
  return url;
}

// Appends a pair and moves it back past the names that sort after it: the list stays sorted by
// name and stable (a repeated name keeps its order: the endpoint's first, then ours). A query
// has a handful of pairs; std::stable_sort would add 12 KB of instantiations for them
// (bench/build_cost.sh).
void add_pair_sorted(StringPairs& pairs, std::string_view name, std::string_view value) {
  add_pair(pairs, name, value);
  for (size_t i = pairs.size() - 1; i > 0 && pairs[i].first < pairs[i - 1].first; --i) pairs[i].swap(pairs[i - 1]);
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
      if (!replaced) add_pair_sorted(pairs, name, value);
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  for (const auto& p : params) add_pair_sorted(pairs, p.first, p.second);
  std::string out;
  for (const auto& p : pairs) {
    if (!out.empty()) out.push_back('&');
    out += percent_encode(p.first);
    out.push_back('=');
    out += percent_encode(p.second);
  }
  return out;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
