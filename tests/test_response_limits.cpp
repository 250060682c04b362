// Limits on what a response or the machine can make the library do: dates beyond the
// clock's range, the random state after fork(), and the memory a hostile JSON body may
// cost. (Arc key files with bytes that cannot be sent: test_client_sources.cpp.)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

// ---- live and peak heap bytes --------------------------------------------------------------
//
// Every operator new of the program goes through here (a header in front of each block
// records its size), so a test can read how far a call raised the live total. It works
// under ASan: the blocks still come from its malloc. Over-aligned allocations go
// straight to the system and are not counted (nothing here makes them).

namespace heap {
std::atomic<long long> live{0};
std::atomic<long long> peak{0};

constexpr size_t kHeader = alignof(std::max_align_t) > sizeof(size_t) ? alignof(std::max_align_t) : sizeof(size_t);

void* allocate(size_t n) noexcept {
  void* block = std::malloc(n + kHeader);
  if (block == nullptr) return nullptr;
  *static_cast<size_t*>(block) = n;
  long long now = live.fetch_add(static_cast<long long>(n)) + static_cast<long long>(n);
  long long seen = peak.load();
  while (now > seen && !peak.compare_exchange_weak(seen, now)) {
  }
  return static_cast<char*>(block) + kHeader;
}

void release(void* p) noexcept {
  if (p == nullptr) return;
  void* block = static_cast<char*>(p) - kHeader;
  live.fetch_sub(static_cast<long long>(*static_cast<size_t*>(block)));
  std::free(block);
}

// Starts a measurement: the peak becomes the current live total.
long long start() {
  long long now = live.load();
  peak.store(now);
  return now;
}
}  // namespace heap

void* operator new(size_t n) {
  void* p = heap::allocate(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t n) {
  void* p = heap::allocate(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new(size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void operator delete(void* p) noexcept { heap::release(p); }
void operator delete[](void* p) noexcept { heap::release(p); }
void operator delete(void* p, size_t) noexcept { heap::release(p); }
void operator delete[](void* p, size_t) noexcept { heap::release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { heap::release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { heap::release(p); }

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <fstream>
#include <vector>

#if !defined(_WIN32)
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "test_support.hpp"
#include "cache_support.hpp"

using mi::detail::SysClock;

// ---- dates beyond the clock's range ------------------------------------------------------------

namespace {
mi::HttpResponse with_retry_after(const std::string& value) {
  mi::HttpResponse response;
  response.status = 503;
  response.headers = {{"Retry-After", value}};
  return response;
}
}  // namespace

TEST_CASE("Retry-After: an HTTP-date the clock cannot represent is ignored, without overflow") {
  const SysClock::time_point now = mi::detail::from_unix_seconds(1796154697);  // 2026-12-01 19:51:37
  mi::detail::Millis wait(-1);
  // In range: honoured (a date in the past waits nothing).
  CHECK(mi::detail::retry_after(with_retry_after("Tue, 01 Dec 2026 19:51:57 GMT"), now, wait));
  CHECK(wait == mi::detail::Millis(20000));
  CHECK(mi::detail::retry_after(with_retry_after("Tue, 01 Dec 2026 20:51:37 GMT"), now, wait));
  CHECK(wait == mi::detail::Millis(60000));  // an hour ahead: the cap
  CHECK(mi::detail::retry_after(with_retry_after("Sat, 10 Apr 2262 00:00:00 GMT"), SysClock::time_point::min(), wait));
  CHECK(wait == mi::detail::Millis(60000));  // the two ends of the clock: no overflow either
  CHECK(mi::detail::retry_after(with_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), now, wait));
  CHECK(wait == mi::detail::Millis(0));
  // Far beyond what a nanosecond count reaches (years 1678 to 2262), either way.
  for (const char* date : {"Fri, 31 Dec 9999 23:59:59 GMT", "Sat, 01 Jan 2263 00:00:00 GMT",
                           "Mon, 12 Apr 2262 00:00:00 GMT", "Sat, 01 Jan 0000 00:00:00 GMT",
                           "Fri, 01 Jan 1677 00:00:00 GMT"}) {
    CAPTURE(date);
    wait = mi::detail::Millis(-1);
    CHECK_FALSE(mi::detail::retry_after(with_retry_after(date), now, wait));
  }
}

TEST_CASE("Unix seconds convert to the clock only within its range") {
  SysClock::time_point t;
  CHECK(mi::detail::from_unix_seconds(int64_t{1796154697}, t));
  CHECK(mi::detail::to_unix_seconds(t) == 1796154697);
  CHECK(mi::detail::from_unix_seconds(int64_t{-86400}, t));
  CHECK(mi::detail::to_unix_seconds(t) == -86400);
  CHECK(mi::detail::from_unix_seconds(mi::detail::kClockMaxSeconds, t));
  CHECK(mi::detail::to_unix_seconds(t) == mi::detail::kClockMaxSeconds);
  CHECK(mi::detail::from_unix_seconds(mi::detail::kClockMinSeconds, t));
  CHECK(mi::detail::to_unix_seconds(t) == mi::detail::kClockMinSeconds);
  const SysClock::time_point before = t;
  CHECK_FALSE(mi::detail::from_unix_seconds(mi::detail::kClockMaxSeconds + 1, t));
  CHECK_FALSE(mi::detail::from_unix_seconds(mi::detail::kClockMinSeconds - 1, t));
  CHECK_FALSE(mi::detail::from_unix_seconds(INT64_MAX, t));
  CHECK_FALSE(mi::detail::from_unix_seconds(INT64_MIN, t));
  CHECK(t == before);  // untouched on failure
  // expires_on in seconds and as dates never goes past the clock either.
  CHECK_FALSE(mi::detail::parse_expires_on("9223372037", t));
  if (mi::detail::kClockMaxSeconds < 253402300799) CHECK_FALSE(mi::detail::parse_expires_on("9999-12-31T23:59:59Z", t));
}

// ---- fork() ------------------------------------------------------------------------------------

#if !defined(_WIN32)
TEST_CASE("after fork(), parent and child draw different request ids and jitter") {
  (void)mi::detail::random_u64();  // the state exists before the fork, as in a long-running parent
  (void)mi::detail::uuid4();
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string drawn = mi::detail::uuid4() + " " + std::to_string(mi::detail::random_u64());
    ssize_t n = ::write(fds[1], drawn.data(), drawn.size());
    _exit(n == static_cast<ssize_t>(drawn.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string parent = mi::detail::uuid4() + " " + std::to_string(mi::detail::random_u64());
  std::string child;
  char buffer[256];
  for (;;) {
    ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    child.append(buffer, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  const size_t split = child.find(' ');
  REQUIRE(split == 36);
  CHECK(child.substr(0, 36) != parent.substr(0, 36));  // the request ids
  CHECK(child.substr(37) != parent.substr(37));        // the jitter draws
}
#endif

// ---- memory for hostile JSON bodies ------------------------------------------------------------

namespace {
constexpr size_t kBodyLimit = 1024 * 1024;  // MI_MAX_RESPONSE_BYTES' default

// `head`, then `unit` repeated (joined by `sep`) while the whole stays within the limit, then `tail`.
std::string fill(const std::string& head, const std::string& unit, const std::string& sep, const std::string& tail) {
  std::string out = head;
  bool first = true;
  while (out.size() + sep.size() + unit.size() + tail.size() <= kBodyLimit) {
    if (!first) out += sep;
    out += unit;
    first = false;
  }
  return out + tail;
}

// `count` arrays nested 64 deep (the most allowed), side by side in the root's array.
std::string deep_groups(int levels_in_group) {
  const std::string group = std::string(static_cast<size_t>(levels_in_group), '[') +
                            std::string(static_cast<size_t>(levels_in_group), ']');
  return fill("[", group, ",", "]");
}

struct Shape {
  std::string name;
  std::string body;
};

// Hostile fillings, each a JSON value (the tests put them in token and error bodies).
std::vector<Shape> hostile_values(size_t room) {
  auto sized = [room](const std::string& open, const std::string& unit, const std::string& close) {
    std::string out = open;
    bool first = true;
    while (out.size() + 1 + unit.size() + close.size() <= room) {
      if (!first) out += ',';
      out += unit;
      first = false;
    }
    return out + close;
  };
  std::string deep;
  {
    // Groups nested 61 deep in an array: 64 in all inside {"error":{"message":...}}.
    const std::string group = std::string(61, '[') + std::string(61, ']');
    deep = sized("[", group, "]");
  }
  return {
      {"many zeros", sized("[", "0", "]")},
      {"many empty arrays", sized("[", "[]", "]")},
      {"many empty objects", sized("[", "{}", "]")},
      {"many small objects", sized("[", "{\"a\":0}", "]")},
      {"many empty strings", sized("[", "\"\"", "]")},
      {"many short strings", sized("[", "\"ab\"", "]")},
      {"many numbers", sized("[", "-1.5e3", "]")},
      {"many members", sized("{", "\"a\":0", "}")},
      {"many members with a kept name", sized("{", "\"code\":0", "}")},
      {"many nulls and booleans", sized("[", "null,true", "]")},
      {"deep but allowed", deep},
  };
}

// How far parsing `body` with `parse` raised the heap's peak, beyond what was live before.
template <class F>
long long peak_raise(F&& parse) {
  long long base = heap::start();
  parse();
  return heap::peak.load() - base;
}
}  // namespace

TEST_CASE("the filtered parse builds only the kept members, first of each name, and checks everything") {
  using mi::detail::JsonValue;
  mi::detail::JsonKeep keep = [](int depth, std::string_view name) noexcept {
    return (depth == 0 && (name == "a" || name == "o")) || (depth == 1 && name == "k");
  };
  JsonValue v;
  REQUIRE(mi::detail::parse_json(
      R"({"x":[1,{"a":2}],"\u0061":"first","a":"second","o":{"k":[3],"z":4,"k":5},"b":"\n"})", keep, v));
  REQUIRE(v.members.size() == 2);
  CHECK(v.find("a")->text == "first");  // the name decoded, the first occurrence kept
  const JsonValue* o = v.find("o");
  REQUIRE(o != nullptr);
  REQUIRE(o->is_object());
  REQUIRE(o->members.size() == 1);
  CHECK(o->find("k")->type == JsonValue::Type::Array);  // its type, not its elements
  CHECK(o->find("k")->items.empty());
  // Whatever is not built is still checked, with the full parser's message and offset.
  for (const char* bad : {R"({"x":[01]})", R"({"x":{"y":"\q"}})", R"({"a":1,"x":[1,]})", "{\"x\":\"\xc3\"}",
                          R"({"x":"\ud800"})", R"({"a":1} x)"}) {
    CAPTURE(bad);
    JsonValue full;
    const mi::detail::JsonStatus full_status = mi::detail::parse_json(bad, nullptr, full);
    const mi::detail::JsonStatus status = mi::detail::parse_json(bad, keep, v);
    CHECK_FALSE(full_status);
    CHECK_FALSE(status);
    CHECK(std::string(status.error) == std::string(full_status.error));
    CHECK(status.offset == full_status.offset);
  }
  // The nesting limit counts what is skipped too.
  const std::string deep = "{\"x\":" + std::string(64, '[') + std::string(64, ']') + "}";
  CHECK_FALSE(mi::detail::parse_json(deep, keep, v));
}

TEST_CASE("the heap counter sees allocations (also under ASan)") {
  long long raise = peak_raise([] { std::vector<char> v(1 << 20); (void)v; });
  CHECK(raise >= (1 << 20));
  CHECK(raise < (1 << 20) + 4096);
}

TEST_CASE("parsing a body within the limits costs at most 8 times its size (token and error bodies)") {
  const auto now = mi::detail::from_unix_seconds(1796154697);
  const size_t room = kBodyLimit - 200;
  for (const Shape& shape : hostile_values(room)) {
    CAPTURE(shape.name);
    // The filling where a member no caller reads goes, in a token body that parses.
    {
      const std::string body = "{\"access_token\":\"tok\",\"expires_in\":3600,\"junk\":" + shape.body + "}";
      REQUIRE(body.size() <= kBodyLimit);
      bool ok = false;
      long long raise = peak_raise([&] { ok = mi::detail::parse_token_response(body, now).ok(); });
      CHECK(ok);
      CHECK(raise <= static_cast<long long>(8 * body.size()));
    }
    // The filling as the whole body (an array, or an object without a token).
    {
      const std::string& body = shape.body;
      long long raise = peak_raise([&] { (void)mi::detail::parse_token_response(body, now); });
      CHECK(raise <= static_cast<long long>(8 * body.size()));
      raise = peak_raise([&] { (void)mi::detail::parse_error_body(body); });
      CHECK(raise <= static_cast<long long>(8 * body.size()));
    }
    // Error bodies: beside the fields read, and inside the nested error object.
    {
      const std::string flat = "{\"error\":\"e\",\"error_description\":\"d\",\"junk\":" + shape.body + "}";
      std::string code;
      long long raise = peak_raise([&] { code = mi::detail::parse_error_body(flat).code; });
      CHECK(code == "e");
      CHECK(raise <= static_cast<long long>(8 * flat.size()));
      const std::string nested = "{\"error\":{\"code\":\"c\",\"message\":" + shape.body + "}}";
      mi::detail::ErrorBody parsed;
      raise = peak_raise([&] { parsed = mi::detail::parse_error_body(nested); });
      CHECK(parsed.json);
      CHECK(parsed.code == "c");
      CHECK(raise <= static_cast<long long>(8 * nested.size()));
    }
  }
}

TEST_CASE("a whole 1 MiB body of tiny elements, token and error, at most 8 times its size") {
  const auto now = mi::detail::from_unix_seconds(1796154697);
  for (const std::string& body :
       {fill("{\"a\":[", "0", ",", "]}"), fill("[", "[]", ",", "]"), fill("{\"error\":[", "{}", ",", "]}"),
        deep_groups(63), fill("{\"error\":{\"code\":\"c\",\"x\":[", "\"\"", ",", "]}}")}) {
    CAPTURE(body.substr(0, 20));
    long long raise = peak_raise([&] { (void)mi::detail::parse_token_response(body, now); });
    CHECK(raise <= static_cast<long long>(8 * body.size()));
    raise = peak_raise([&] { (void)mi::detail::parse_error_body(body); });
    CHECK(raise <= static_cast<long long>(8 * body.size()));
  }
}

TEST_CASE("a large access token still parses within the bound") {
  const auto now = mi::detail::from_unix_seconds(1796154697);
  const std::string token(kBodyLimit - 100, 'A');
  const std::string body = "{\"access_token\":\"" + token + "\",\"expires_in\":3600}";
  size_t got = 0;
  long long raise = peak_raise([&] {
    auto r = mi::detail::parse_token_response(body, now);
    if (r) got = r->token.access_token.size();
  });
  CHECK(got == token.size());
  CHECK(raise <= static_cast<long long>(8 * body.size()));
}
