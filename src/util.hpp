// Small helpers shared by every part: errors, strings, environment, UUIDs,
// hashes. Nothing here does I/O except reading the environment.
#pragma once
#include "impl_begin.hpp"

namespace mi {
inline namespace v1 {
namespace detail {

// Builds mi::Error values with the fields the public constructor does not take.
struct ErrorAccess {
  MI_DETAIL_COLD static Error make(Errc code, std::string message, Source source = Source::DefaultToIMDS) {
    Error e(code, std::move(message));
    e.source_ = source;
    return e;
  }
  static void set_status(Error& e, int status) { e.status_code_ = status; }
  static void set_source(Error& e, Source source) { e.source_ = source; }
  static void set_server_details(Error& e, std::string code, std::string description, std::string correlation_id) {
    e.error_code_ = std::move(code);
    e.error_description_ = std::move(description);
    e.correlation_id_ = std::move(correlation_id);
  }
  static void set_correlation_id(Error& e, std::string id) { e.correlation_id_ = std::move(id); }
  static void set_message(Error& e, std::string message) { e.message_ = std::move(message); }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

MI_DETAIL_COLD inline Error make_error(Errc code, std::string message) {
  return ErrorAccess::make(code, std::move(message));
}

// ---- message building --------------------------------------------------------------

// Joins the parts into one string. Messages are built with this (and num below) rather
// than with chains of std::string operator+ and std::to_string, each of which inlines
// a temporary string and its clean-up at the call site: that made most of the code.
MI_DETAIL_NOINLINE std::string cat(std::initializer_list<std::string_view> parts) {
  size_t size = 0;
  for (std::string_view part : parts) size += part.size();
  std::string out;
  out.reserve(size);
  for (std::string_view part : parts) out.append(part.data(), part.size());
  return out;
}

// Decimal text of an integer (std::to_string, out of line; unsigned values are cast by the caller).
MI_DETAIL_NOINLINE std::string num(long long value) { return std::to_string(value); }

// An error result, the message parts joined: one call at each of the many places that
// give up, instead of a string, an Error and a Result built (and cleaned up) inline.
template <class T>
MI_DETAIL_COLD Result<T> failure(Errc code, std::initializer_list<std::string_view> message) {
  return Result<T>(make_error(code, cat(message)));
}

// ---- name/value lists ------------------------------------------------------------

using StringPairs = std::vector<std::pair<std::string, std::string>>;

// Appends one name/value pair (query parameters, headers). Every caller goes through
// this one function, so the vector's growth code is compiled once, not once per
// combination of argument types.
void add_pair(StringPairs& list, std::string_view name, std::string_view value) {
  list.emplace_back(std::string(name), std::string(value));
}

// ---- strings -------------------------------------------------------------------

inline char ascii_lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ascii_lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  if (a == b) return true;  // the common case (same spelling), a vectorised compare
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

inline bool starts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}
inline bool ends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

inline std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True if any byte is a C0 control character or DEL (never allowed on the wire).
inline bool has_control_char(std::string_view s) noexcept {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// RFC 3986: unreserved characters stay, every other byte becomes %XX.
std::string percent_encode(std::string_view s) {
  static const char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() + s.size() / 2);
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

inline int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX (and '+' as space when form is true); invalid escapes stay as they are.
std::string percent_decode(std::string_view s, bool form) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    } else if (c == '+' && form) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string to_hex(const unsigned char* data, size_t n) {
  static const char hex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = hex[data[i] >> 4];
    out[2 * i + 1] = hex[data[i] & 15];
  }
  return out;
}

// Parses a non-negative decimal integer that fits in int64; the whole view must be digits.
inline bool parse_int64(std::string_view s, int64_t& out) noexcept {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

// ---- environment -----------------------------------------------------------------

// The variable's value; an unset and an empty variable both give "".
std::string env(const char* name) {
#if defined(_MSC_VER)
  char* value = nullptr;
  size_t len = 0;
  if (_dupenv_s(&value, &len, name) != 0 || value == nullptr) return std::string();
  std::string out(value);
  std::free(value);
  return out;
#else
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
#endif
}

// ---- randomness ---------------------------------------------------------------------

// Request ids and retry jitter need uniqueness, not secrecy: a splitmix64 stream seeded
// once from the OS's random source where it is cheap to read, mixed with time and addresses.
inline uint64_t splitmix64_mix(uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t random_seed() {
  uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                  (static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) << 1) ^
                  static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&seed));
#if !MI_DETAIL_WINDOWS
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    uint64_t bytes = 0;
    if (::read(fd, &bytes, sizeof bytes) == static_cast<ssize_t>(sizeof bytes)) seed ^= bytes;
    ::close(fd);
  }
#else
  seed ^= static_cast<uint64_t>(GetCurrentProcessId()) << 32 ^ static_cast<uint64_t>(GetTickCount64());
#endif
  return seed;
}

// The stream's position, advanced atomically (splitmix64 needs nothing else), so no lock:
// a fork() while another thread draws leaves nothing held in the child. Constant-initialised
// (no guard) and trivially destroyed, so it is usable at any time, from any thread.
struct RandomState {
  std::atomic<uint64_t> position{0};
  std::atomic<bool> seeded{false};
  std::atomic<bool> fork_handler{false};
};
inline RandomState& random_state() noexcept {
  static RandomState state;
  return state;
}

#if !MI_DETAIL_WINDOWS
// A forked child starts with a copy of the parent's position: without a new seed both
// would send the same request ids and wait the same jitter. Runs in the child right after
// fork(), where only async-signal-safe calls are allowed: random_seed makes only those
// (clock reads, open, read, close).
inline void random_reseed_in_child() noexcept { random_state().position.store(random_seed(), std::memory_order_relaxed); }
#endif

MI_DETAIL_COLD void random_first_seed(RandomState& s) {
  // Threads racing to the first draw each store a seed; any of them will do.
  s.position.store(random_seed(), std::memory_order_relaxed);
#if !MI_DETAIL_WINDOWS  // Windows has no fork()
  if (!s.fork_handler.exchange(true)) ::pthread_atfork(nullptr, nullptr, &random_reseed_in_child);
#endif
  s.seeded.store(true, std::memory_order_release);
}

uint64_t random_u64() {
  RandomState& s = random_state();
  if (!s.seeded.load(std::memory_order_acquire)) random_first_seed(s);
  uint64_t z = s.position.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) + 0x9e3779b97f4a7c15ull;
  return splitmix64_mix(z);
}

// A random (version 4, RFC 9562) UUID in lowercase 8-4-4-4-12 form.
std::string uuid4() {
  unsigned char b[16];
  uint64_t hi = random_u64(), lo = random_u64();
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<unsigned char>(hi >> (8 * i));
    b[8 + i] = static_cast<unsigned char>(lo >> (8 * i));
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static const char hex[] = "0123456789abcdef";
  char text[36];
  size_t n = 0;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text[n++] = '-';
    text[n++] = hex[b[i] >> 4];
    text[n++] = hex[b[i] & 15];
  }
  return std::string(text, sizeof text);
}

// ---- SHA-256 (FIPS 180-4), for Service Fabric's token_sha256_to_refresh ---------------

MI_DETAIL_COLD std::string sha256_hex(std::string_view data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  std::string msg(data);
  uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<char>(bits >> (8 * i)));
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * static_cast<size_t>(i));
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + s1 + ch + k[i] + w[i];
      uint32_t s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = s0 + maj;
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  unsigned char out[32];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<unsigned char>(h[i] >> (24 - 8 * j));
  return to_hex(out, 32);
}

// ---- time --------------------------------------------------------------------------

using SysClock = std::chrono::system_clock;
using SteadyClock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// The wall clock at the kernel's tick resolution (a few ms), about 4x cheaper than
// SysClock::now() where the OS has it: enough for "expires in more than 5 minutes".
inline SysClock::time_point coarse_now() noexcept {
#if defined(CLOCK_REALTIME_COARSE)
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) == 0)
    return SysClock::time_point(std::chrono::duration_cast<SysClock::duration>(std::chrono::seconds(ts.tv_sec) +
                                                                               std::chrono::nanoseconds(ts.tv_nsec)));
#endif
  return SysClock::now();
}

// The whole seconds around the epoch that SysClock can hold. Where it counts nanoseconds
// in 64 bits (libstdc++, libc++ on Linux) that is only the years 1678 to 2262: converting
// a date outside them would overflow, so every conversion goes through the check below.
constexpr int64_t kClockMaxSeconds =
    static_cast<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(SysClock::duration::max()).count());
constexpr int64_t kClockMinSeconds =
    static_cast<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(SysClock::duration::min()).count());

// Seconds since the epoch as a time point; false (and `out` untouched) outside the clock's range.
inline bool from_unix_seconds(int64_t s, SysClock::time_point& out) noexcept {
  if (s < kClockMinSeconds || s > kClockMaxSeconds) return false;
  out = SysClock::time_point(std::chrono::duration_cast<SysClock::duration>(std::chrono::seconds(s)));
  return true;
}
// The same, saturating at the ends of the clock's range (for values known to be in it).
inline SysClock::time_point from_unix_seconds(int64_t s) noexcept {
  SysClock::time_point out;
  if (!from_unix_seconds(s, out)) out = s < 0 ? SysClock::time_point::min() : SysClock::time_point::max();
  return out;
}
inline int64_t to_unix_seconds(SysClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
inline int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? static_cast<unsigned>(-3) : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
