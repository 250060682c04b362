// Fuzz target: the incremental HTTP/1.1 response parser (ResponseParser): status
// line, headers, 1xx interim responses, Content-Length, chunked and close-delimited
// framing. The input is the byte stream the peer sends; the connection closes after it.
//
// Invariants, beyond "no crash, no sanitizer report":
//  - the outcome (status, headers, body, or error code and message) is the same whether
//    the bytes arrive whole, split at one point, one byte at a time or in ragged pieces
//    (empty feeds included); only the message of a size-limit error may differ, when the
//    same bytes also break the syntax;
//  - the parser never holds more than its limits: the pending line's capacity at most
//    max_header, the body's capacity at most max_body, after every feed (the heap bytes it
//    holds are counted by replacing operator new, tests/heap_bytes.hpp);
//  - once done or failed, it stays so whatever else arrives;
//  - a done response has a final status (200..599, not 101), header names that are
//    tokens, header values without CR/LF/NUL/DEL or surrounding blanks, a body within
//    the limit, and exactly Content-Length bytes when that header framed it;
//  - an error is invalid_response (network only for a premature close) with a
//    printable-ASCII message;
//  - larger limits never reject what smaller limits accept (same response).
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "fuzz_common.hpp"
#include "../heap_bytes.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using mi::detail::ResponseParser;
using Status = ResponseParser::Status;

namespace {

struct Limits {
  size_t header;
  size_t body;
};
constexpr Limits kLimits{4096, 8192};
constexpr Limits kSmallLimits{256, 512};

struct Outcome {
  Status status = Status::need_more;
  mi::HttpResponse response;
  mi::Errc code = mi::Errc::invalid_response;
  std::string message;

  // Same status; a done response identical; an error with the same code and the same
  // message, except that the reason may differ when one of them is a size limit: the
  // limits are checked per read, so bytes that break a limit and the syntax at once may
  // be reported either way depending on where reads end (docs/hardening.md, Fuzzing).
  bool operator==(const Outcome& o) const {
    if (status != o.status) return false;
    if (status == Status::done)
      return response.status == o.response.status && response.headers == o.response.headers &&
             response.body == o.response.body;
    if (code != o.code) return false;
    return message == o.message || is_limit_error() || o.is_limit_error();
  }
  bool is_limit_error() const {
    return code == mi::Errc::invalid_response && message.find("than the limit of") != std::string::npos;
  }
};

bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// `held`: the heap bytes the parser gained inside its feed() and finish() calls. What is
// not its response or its error is the pending line.
void check_bounds(ResponseParser& p, const Limits& limits, long long held) {
  const size_t body_cap = p.response().body.capacity();
  const long long line_bytes = held - static_cast<long long>(heap::of(p.response().body) +
                                                             heap::of(p.response().headers) +
                                                             heap::of(p.error().message()));
  FUZZ_CHECK(p.response().body.size() <= limits.body, "the body never exceeds the limit");
  FUZZ_CHECK(line_bytes <= static_cast<long long>(limits.header) + 1,
             "the pending line never holds more than the head limit");
  FUZZ_CHECK(body_cap <= limits.body, "the body never holds more than the body limit");
}

// Feeds `input` in pieces of the given sizes (the last piece takes the rest), then
// closes the connection.
Outcome run(std::string_view input, const Limits& limits, const std::vector<size_t>& pieces) {
  ResponseParser p(limits.header, limits.body);
  long long held = 0;  // heap bytes gained inside the parser's calls
  Status st = Status::need_more;
  size_t pos = 0;
  size_t k = 0;
  for (;;) {
    size_t n = k < pieces.size() ? pieces[k++] : input.size() - pos;
    if (n > input.size() - pos) n = input.size() - pos;
    // An exact-size heap copy of each piece, so that reading past it is caught (one
    // reused buffer for single bytes: fast enough for byte-at-a-time feeding).
    static char* const one = new char[1];
    std::unique_ptr<char[]> copy(n == 1 ? nullptr : new char[n]);
    char* piece = n == 1 ? one : copy.get();
    if (n) std::memcpy(piece, input.data() + pos, n);
    Status before = st;
    const long long heap_before = heap::held();
    st = p.feed(piece, n);
    held += heap::held() - heap_before;
    if (before != Status::need_more) FUZZ_CHECK(st == before, "done or failed is final");
    check_bounds(p, limits, held);
    pos += n;
    if (pos == input.size() && k >= pieces.size()) break;
  }
  if (st == Status::need_more) {
    const long long heap_before = heap::held();
    st = p.finish();
    held += heap::held() - heap_before;
    FUZZ_CHECK(st != Status::need_more, "finish() always decides");
    check_bounds(p, limits, held);
  }
  FUZZ_CHECK(p.finish() == st, "finish() after the outcome repeats it");

  Outcome out;
  out.status = st;
  if (st == Status::done) {
    out.response = p.response();
    const mi::HttpResponse& r = out.response;
    FUZZ_CHECK(r.status >= 200 && r.status <= 599, "a done response has a final status code");
    FUZZ_CHECK(r.body.size() <= limits.body, "a done response's body is within the limit");
    if (r.status == 204 || r.status == 304) FUZZ_CHECK(r.body.empty(), "204 and 304 have no body");
    bool chunked = false;
    std::string content_length;
    for (const auto& h : r.headers) {
      FUZZ_CHECK(!h.first.empty(), "header names are non-empty");
      for (char c : h.first) FUZZ_CHECK(is_tchar(c), "header names are tokens");
      for (char c : h.second) {
        unsigned char u = static_cast<unsigned char>(c);
        FUZZ_CHECK((u >= 0x20 && u != 0x7f) || u == '\t', "header values hold no control character but HTAB");
      }
      if (!h.second.empty()) {
        FUZZ_CHECK(h.second.front() != ' ' && h.second.front() != '\t' && h.second.back() != ' ' &&
                       h.second.back() != '\t',
                   "header values are trimmed");
      }
      if (mi::detail::iequals(h.first, "Transfer-Encoding")) chunked = true;
      if (mi::detail::iequals(h.first, "Content-Length")) content_length = h.second;
    }
    if (!chunked && !content_length.empty() && r.status != 204 && r.status != 304) {
      // Equal values repeated in a list ("5, 5") were accepted; all are the same number.
      std::string_view rest = content_length, first;
      while (first.empty() && !rest.empty()) {
        size_t comma = rest.find(',');
        first = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
        while (!first.empty() && (first.front() == ' ' || first.front() == '\t')) first.remove_prefix(1);
        while (!first.empty() && (first.back() == ' ' || first.back() == '\t')) first.remove_suffix(1);
      }
      while (first.size() > 1 && first.front() == '0') first.remove_prefix(1);
      FUZZ_CHECK(first == std::to_string(r.body.size()), "a Content-Length body has exactly that many bytes");
    }
  } else {
    const mi::Error& e = p.error();
    out.code = e.code();
    out.message = e.message();
    FUZZ_CHECK(e.code() == mi::Errc::invalid_response || e.code() == mi::Errc::network,
               "a parse error is invalid_response (or network for an early close)");
    FUZZ_CHECK(!e.message().empty() && fuzz::printable_ascii(e.message()),
               "a parse error message is printable ASCII (never quotes raw bytes)");
  }
  return out;
}

uint64_t hash(std::string_view s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  const uint64_t h = hash(input);

  const Outcome whole = run(input, kLimits, {});

  // Split once at a point chosen by the input's hash.
  const size_t at = static_cast<size_t>(h % (size + 1));
  FUZZ_CHECK(run(input, kLimits, {at}) == whole, "same outcome fed whole or split at one point");

  // One byte at a time.
  std::vector<size_t> ones(size, 1);
  FUZZ_CHECK(run(input, kLimits, ones) == whole, "same outcome fed whole or one byte at a time");

  // Ragged pieces of 0..64 bytes (a linear congruential sequence seeded by the hash).
  std::vector<size_t> ragged;
  uint64_t x = h | 1;
  for (size_t total = 0; total < size;) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    size_t n = static_cast<size_t>((x >> 33) % 65);
    ragged.push_back(n);
    total += n;
  }
  FUZZ_CHECK(run(input, kLimits, ragged) == whole, "same outcome fed whole or in ragged pieces");

  // Small limits: consistent across feeds, and never accepting more than the large ones.
  const Outcome small = run(input, kSmallLimits, {});
  FUZZ_CHECK(run(input, kSmallLimits, ones) == small, "same outcome (small limits) fed whole or byte by byte");
  if (small.status == Status::done)
    FUZZ_CHECK(whole == small, "larger limits accept what smaller ones accept, with the same response");
  return 0;
}
