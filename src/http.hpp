// HTTP/1.1 on the wire: request serialisation and an incremental response parser
// with bounded memory. Strict about framing (RFC 9112): anything ambiguous is
// refused rather than guessed at. Messages never quote header values or body bytes.
#pragma once
#include "util.hpp"
#include "url.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

namespace http_impl {

// RFC 9110 tchar.
inline bool is_tchar(char c) noexcept {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

// A name for a message: control and non-ASCII bytes escaped, at most 64 characters.
MI_DETAIL_COLD std::string printable_name(std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (out.size() >= 64) {
      out += "...";
      break;
    }
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// True if a field value holds a control character other than HTAB (CR, LF, NUL, DEL...).
inline bool bad_field_char(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return true;
  }
  return false;
}

inline std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Appends without letting the string's capacity grow past `cap` (the caller has
// checked that size() + n <= cap), so memory stays within the limit. Growth is
// geometric, but done by hand: std::string::reserve may itself double a capacity
// (libstdc++ does), while a fresh string reserves what it is asked for.
void append_bounded(std::string& s, const char* data, size_t n, size_t cap) {
  size_t need = s.size() + n;
  if (need > s.capacity()) {
    size_t grow = s.capacity() * 2;
    if (grow < need) grow = need;
    if (grow > cap) grow = cap < need ? need : cap;
    std::string bigger;
    bigger.reserve(grow);
    bigger.append(s);
    s.swap(bigger);
  }
  s.append(data, n);
}

}  // namespace http_impl

// A request ready for the socket: where to connect, and the bytes to send.
struct WireRequest {
  Url url;
  std::string bytes;
};

namespace http_impl {

// Every header name a token, no value with a control character. The error never
// quotes a value: it may be a secret.
Result<bool> check_headers(const StringPairs& headers) {
  for (const auto& header : headers) {
    if (!is_token(header.first))
      return failure<bool>(Errc::invalid_argument,
                           {"the request cannot be sent: the header name \"", printable_name(header.first),
                            "\" is not a valid HTTP token (empty, or a control character, space or separator)"});
    if (has_control_char(header.second))
      return failure<bool>(Errc::invalid_argument,
                           {"the request cannot be sent: the value of the header \"", header.first,
                            "\" contains a control character (such as CR or LF)"});
  }
  return true;
}

}  // namespace http_impl

// Parses request.url and writes the request line, the headers, Content-Length and
// "Connection: close". This is the built-in transport's one parse of the URL: parse_url
// refuses any control character, space or non-ASCII byte, so the request-target and the
// Host header built from it cannot split the request, and the Url is only ever made here.
Result<WireRequest> serialize_request(const HttpRequest& request) {
  Result<Url> url = parse_url(request.url);
  if (!url)
    return failure<WireRequest>(Errc::invalid_argument, {"the endpoint URL is invalid: ", url.error().message()});
  if (!http_impl::is_token(request.method))
    return failure<WireRequest>(Errc::invalid_argument,
                                {"the request cannot be sent: the HTTP method is empty or not a valid token"});
  Result<bool> headers = http_impl::check_headers(request.headers);
  if (!headers) return headers.error();
  WireRequest out;
  std::string& text = out.bytes;
  text.reserve(256 + request.body.size());
  text += request.method;
  text += ' ';
  text += url->target();
  text += " HTTP/1.1\r\nHost: ";
  text += url->host_header();
  text += "\r\n";
  for (const auto& header : request.headers) {
    // The transport owns the framing headers; the request's own copies are dropped.
    if (iequals(header.first, "Host") || iequals(header.first, "Content-Length") ||
        iequals(header.first, "Transfer-Encoding") || iequals(header.first, "Connection"))
      continue;
    text += header.first;
    text += ": ";
    text += header.second;
    text += "\r\n";
  }
  if (!request.body.empty() || request.method == "POST" || request.method == "PUT" || request.method == "PATCH") {
    text += "Content-Length: ";
    text += num(static_cast<long long>(request.body.size()));
    text += "\r\n";
  }
  text += "Connection: close\r\n\r\n";
  text += request.body;
  out.url = std::move(*url);
  return out;
}

// Incremental HTTP/1.x response parser. Feed it what the socket delivers; it
// holds at most one pending line (bounded by max_header_bytes) and the body
// (bounded by max_body_bytes), whatever the peer sends.
class ResponseParser {
 public:
  // A small status, not Result<T>: the parser runs once per chunk of bytes, most calls
  // end in need_more (neither a value nor an error), and it has no Source or endpoint to
  // put in an Error; its caller turns error() into the request's Error once.
  enum class Status { need_more, done, error };

  explicit ResponseParser(size_t max_header_bytes = static_cast<size_t>(MI_MAX_HEADER_BYTES),
                          size_t max_body_bytes = static_cast<size_t>(MI_MAX_RESPONSE_BYTES))
      : max_header_(max_header_bytes), max_body_(max_body_bytes) {}

  // Consumes bytes; done once one final (non-1xx) response is complete. Bytes after
  // it are ignored.
  Status feed(const char* data, size_t size);
  // The peer closed the connection: completes a close-delimited body, else an error.
  Status finish();
  HttpResponse& response() noexcept { return response_; }  // valid after done
  const Error& error() const noexcept { return error_; }   // valid after error

 private:
  enum class State { status_line, header_line, length_body, close_body, chunk_size, chunk_data, chunk_data_end, trailer_line, done, failed };

  MI_DETAIL_COLD Status fail(Errc code, std::string message);
  MI_DETAIL_COLD Status invalid(std::string_view reason) { return invalid({reason}); }
  MI_DETAIL_COLD Status invalid(std::initializer_list<std::string_view> reason);
  MI_DETAIL_COLD Status body_too_large();
  Status on_line(std::string_view line);
  Status on_status_line(std::string_view line);
  Status on_header_line(std::string_view line);
  // What frames the body, as the head declares it.
  struct Framing {
    bool has_te = false, has_cl = false;
    int codings = 0;       // Transfer-Encoding codings, in all its fields
    bool chunked = false;  // the last coding is chunked
    std::string length;    // normalised digits of Content-Length
  };
  Status on_head_end();
  Status read_framing(Framing& framing);
  Status on_chunk_size(std::string_view line);
  Status on_trailer_line(std::string_view line);

  size_t max_header_;
  size_t max_body_;
  State state_ = State::status_line;
  std::string line_;        // the pending line, terminator included
  size_t head_bytes_ = 0;   // status lines, header and trailer lines consumed so far
  uint64_t remaining_ = 0;  // bytes left of a Content-Length body or of a chunk
  bool http10_ = false;
  HttpResponse response_;
  Error error_{Errc::invalid_response, std::string()};
};

ResponseParser::Status ResponseParser::fail(Errc code, std::string message) {
  state_ = State::failed;
  error_ = make_error(code, std::move(message));
  line_.clear();
  line_.shrink_to_fit();
  return Status::error;
}

ResponseParser::Status ResponseParser::invalid(std::initializer_list<std::string_view> reason) {
  std::string message = "invalid HTTP response: ";
  for (std::string_view part : reason) message.append(part.data(), part.size());
  return fail(Errc::invalid_response, std::move(message));
}

ResponseParser::Status ResponseParser::body_too_large() {
  return invalid({"the body is larger than the limit of ", num(static_cast<long long>(max_body_)),
                  " bytes (MI_MAX_RESPONSE_BYTES)"});
}

ResponseParser::Status ResponseParser::feed(const char* data, size_t size) {
  size_t pos = 0;
  for (;;) {
    if (state_ == State::done) return Status::done;
    if (state_ == State::failed) return Status::error;
    if (pos >= size) return Status::need_more;
    const char* p = data + pos;
    size_t n = size - pos;
    switch (state_) {
      case State::length_body:
      case State::chunk_data: {
        size_t take = remaining_ < n ? static_cast<size_t>(remaining_) : n;
        http_impl::append_bounded(response_.body, p, take, max_body_);
        remaining_ -= take;
        pos += take;
        if (remaining_ == 0) state_ = state_ == State::length_body ? State::done : State::chunk_data_end;
        break;
      }
      case State::close_body: {
        if (n > max_body_ - response_.body.size()) return body_too_large();
        http_impl::append_bounded(response_.body, p, n, max_body_);
        pos += n;
        break;
      }
      case State::status_line:  // a line: status line, header, chunk size, chunk end or trailer
      case State::header_line:
      case State::chunk_size:
      case State::chunk_data_end:
      case State::trailer_line:
      case State::done:  // not reached: the loop stops at done and failed
      case State::failed: {
        const void* nl = std::memchr(p, '\n', n);
        size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - p) + 1 : n;
        if (state_ == State::status_line) {
          // Fail fast on anything that is not HTTP/1.x (HTTP/0.9 bodies, garbage).
          static const char prefix[] = "HTTP/1.";
          for (size_t i = line_.size(), j = 0; i < 7 && j < take; ++i, ++j)
            if (p[j] != prefix[i]) return invalid("the endpoint did not answer with an HTTP/1.x status line");
        }
        bool head = state_ == State::status_line || state_ == State::header_line || state_ == State::trailer_line;
        size_t limit = head ? max_header_ - head_bytes_ : state_ == State::chunk_data_end ? 2 : max_header_;
        if (take > limit - line_.size()) {
          if (head)
            return invalid({"the response head is larger than the limit of ", num(static_cast<long long>(max_header_)),
                            " bytes (MI_MAX_HEADER_BYTES)"});
          if (state_ == State::chunk_data_end) return invalid("a chunk is longer than its declared size");
          return invalid("a chunk-size line is too long");
        }
        http_impl::append_bounded(line_, p, take, limit);
        pos += take;
        if (nl) {
          if (head) head_bytes_ += line_.size();
          std::string_view line(line_);
          line.remove_suffix(1);
          if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
          Status s = on_line(line);
          if (s == Status::error) return s;
          line_.clear();
        }
        break;
      }
    }
  }
}

ResponseParser::Status ResponseParser::finish() {
  switch (state_) {
    case State::done: return Status::done;
    case State::failed: return Status::error;
    case State::close_body: state_ = State::done; return Status::done;
    case State::status_line:
    case State::header_line:
    case State::length_body:
    case State::chunk_size:
    case State::chunk_data:
    case State::chunk_data_end:
    case State::trailer_line: break;
  }
  return fail(Errc::network, "the endpoint closed the connection before the response was complete");
}

ResponseParser::Status ResponseParser::on_line(std::string_view line) {
  switch (state_) {
    case State::status_line: return on_status_line(line);
    case State::header_line: return on_header_line(line);
    case State::chunk_size: return on_chunk_size(line);
    case State::chunk_data_end:
      if (!line.empty()) return invalid("a chunk is longer than its declared size");
      state_ = State::chunk_size;
      return Status::need_more;
    case State::trailer_line: return on_trailer_line(line);
    case State::length_body:  // not reached: bodies are not read as lines
    case State::close_body:
    case State::chunk_data:
    case State::done:
    case State::failed: break;
  }
  return invalid("internal parser state");
}

ResponseParser::Status ResponseParser::on_status_line(std::string_view line) {
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (line.size() < 12 || (line[7] != '0' && line[7] != '1') || line[8] != ' ' || (line.size() > 12 && line[12] != ' '))
    return invalid("malformed status line");
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return invalid("malformed status code");
    status = status * 10 + (line[i] - '0');
  }
  if (status < 100 || status > 599) return invalid("status code out of range");
  if (http_impl::bad_field_char(line.substr(12))) return invalid("control character in the status line");
  response_.status = status;
  http10_ = line[7] == '0';
  state_ = State::header_line;
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_header_line(std::string_view line) {
  if (line.empty()) return on_head_end();
  if (line[0] == ' ' || line[0] == '\t') return invalid("obsolete header line folding (obs-fold)");
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return invalid("a header line has no colon");
  std::string_view name = line.substr(0, colon);
  if (!http_impl::is_token(name)) return invalid("a header name is not a valid token");
  std::string_view value = http_impl::trim_ows(line.substr(colon + 1));
  if (http_impl::bad_field_char(value))
    return invalid({"the header \"", http_impl::printable_name(name), "\" contains a control character"});
  add_pair(response_.headers, name, value);
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_head_end() {
  int status = response_.status;
  if (status < 200) {
    if (status == 101) return invalid("unexpected 101 Switching Protocols");
    response_.headers.clear();  // an interim response (100 Continue, 103 Early Hints...): skip it
    response_.status = 0;
    state_ = State::status_line;
    return Status::need_more;
  }
  if (status == 204 || status == 304) {  // never a body
    state_ = State::done;
    return Status::done;
  }
  Framing framing;
  if (read_framing(framing) == Status::error) return Status::error;
  if (framing.has_te && framing.has_cl) return invalid("both Transfer-Encoding and Content-Length are present");
  if (framing.has_te) {
    if (http10_) return invalid("Transfer-Encoding in an HTTP/1.0 response");
    if (framing.codings != 1 || !framing.chunked)
      return invalid("unsupported Transfer-Encoding (only chunked is understood)");
    state_ = State::chunk_size;
    return Status::need_more;
  }
  if (framing.has_cl) {
    int64_t value = 0;
    if (!parse_int64(framing.length, value) || static_cast<uint64_t>(value) > max_body_) return body_too_large();
    if (value == 0) {
      state_ = State::done;
      return Status::done;
    }
    remaining_ = static_cast<uint64_t>(value);
    response_.body.reserve(static_cast<size_t>(value));
    state_ = State::length_body;
    return Status::need_more;
  }
  state_ = State::close_body;  // no framing: the body ends when the peer closes
  return Status::need_more;
}

// Collects the Transfer-Encoding codings and the Content-Length value (equal values in a
// list or repeated are one); need_more, or error for a malformed or conflicting length.
ResponseParser::Status ResponseParser::read_framing(Framing& framing) {
  for (const auto& header : response_.headers) {
    bool te = iequals(header.first, "Transfer-Encoding");
    bool cl = !te && iequals(header.first, "Content-Length");
    if (!te && !cl) continue;
    std::string_view rest = header.second;
    bool any = false;
    for (;;) {
      size_t comma = rest.find(',');
      std::string_view item = http_impl::trim_ows(rest.substr(0, comma));
      if (!item.empty()) {
        any = true;
        if (te) {
          ++framing.codings;
          framing.chunked = iequals(item, "chunked");
        } else {
          for (char c : item)
            if (c < '0' || c > '9') return invalid("Content-Length is not a non-negative decimal number");
          while (item.size() > 1 && item[0] == '0') item.remove_prefix(1);
          if (framing.has_cl && item != framing.length) return invalid("conflicting Content-Length values");
          framing.length.assign(item.data(), item.size());
          framing.has_cl = true;
        }
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    if (te) framing.has_te = true;
    if (cl && !any) return invalid("empty Content-Length");
  }
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_chunk_size(std::string_view line) {
  uint64_t size = 0;
  size_t i = 0;
  for (; i < line.size(); ++i) {
    int digit = hex_value(line[i]);
    if (digit < 0) break;
    if (size > (std::numeric_limits<uint64_t>::max() >> 4)) return invalid("the chunk size overflows");
    size = size * 16 + static_cast<uint64_t>(digit);
  }
  if (i == 0) return invalid("malformed chunk size");
  std::string_view ext = http_impl::trim_ows(line.substr(i));  // chunk extensions are ignored
  if (!ext.empty() && ext[0] != ';') return invalid("malformed chunk size");
  if (http_impl::bad_field_char(ext)) return invalid("control character in a chunk extension");
  if (size == 0) {
    state_ = State::trailer_line;
    return Status::need_more;
  }
  if (size > max_body_ - response_.body.size()) return body_too_large();
  remaining_ = size;
  state_ = State::chunk_data;
  return Status::need_more;
}

ResponseParser::Status ResponseParser::on_trailer_line(std::string_view line) {
  if (line.empty()) {
    state_ = State::done;
    return Status::done;
  }
  // Trailers are read and dropped, but must still be well-formed.
  if (line[0] == ' ' || line[0] == '\t') return invalid("obsolete line folding in the trailer");
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || !http_impl::is_token(line.substr(0, colon)))
    return invalid("malformed trailer field");
  if (http_impl::bad_field_char(line.substr(colon + 1))) return invalid("control character in a trailer field");
  return Status::need_more;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
