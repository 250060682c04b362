#include "file_cache.hpp"

#include "output.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

namespace mitoken {
namespace {

using SysClock = std::chrono::system_clock;

constexpr long long kMinLifetimeSeconds = 300;  // the 5-minute rule
constexpr std::size_t kMaxFileBytes = 64 * 1024;
constexpr const char* kMagic = "mi-token-cache 1";

long long now_millis() {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(SysClock::now().time_since_epoch()).count());
}

long long now_seconds() {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::seconds>(SysClock::now().time_since_epoch()).count());
}

[[maybe_unused]] SysClock::time_point from_seconds(long long s) {
  return SysClock::time_point(std::chrono::duration_cast<SysClock::duration>(std::chrono::seconds(s)));
}

long long to_seconds(SysClock::time_point tp) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count());
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Printable ASCII without space and '%' stays; every other byte becomes %XX. The result is one
// word, so a value can never add a field or a line to the file.
std::string encode(std::string_view text, bool lower) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c > 0x20 && c < 0x7f && c != '%') {
      out += lower ? ascii_lower(ch) : ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

[[maybe_unused]] bool decode(std::string_view text, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) return false;
    const int hi = hex_value(text[i + 1]);
    const int lo = hex_value(text[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

// A word of the file: printable ASCII, no space.
[[maybe_unused]] bool is_word(std::string_view text) {
  if (text.empty()) return false;
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

[[maybe_unused]] bool parse_seconds(std::string_view text, long long& out) {
  if (text.empty() || text.size() > 15) return false;
  long long v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

const char* kind_name(mi::IDKind kind) {
  switch (kind) {
    case mi::IDKind::ClientID: return "client_id";
    case mi::IDKind::ObjectID: return "object_id";
    case mi::IDKind::ResourceID: return "resource_id";
    case mi::IDKind::SystemAssigned: break;
  }
  return "system";
}

// FNV-1a, 64 bits: only spreads keys over file names; the file repeats its whole key, which
// is compared on every read, so a collision costs a request, never a wrong token.
std::string hash_name(std::string_view text) {
  std::uint64_t h = 14695981039346656037ull;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

CacheKey make_cache_key(mi::Source source, mi::IDKind kind, std::string_view id, std::string_view resource) {
  const std::string_view suffix = "/.default";
  if (resource.size() >= suffix.size() && resource.substr(resource.size() - suffix.size()) == suffix)
    resource.remove_suffix(suffix.size());
  CacheKey key;
  key.line = "key source=" + std::string(mi::to_string(source)) + " kind=" + kind_name(kind) +
             " id=" + encode(id, true) + " resource=" + encode(resource, true);
  key.stem = hash_name(key.line);
  return key;
}

#if defined(_WIN32)

FileCache::~FileCache() = default;

bool FileCache::open(std::string& why) {
  why = "the file cache is not available on Windows";
  return false;
}

bool FileCache::read(const CacheKey&, Entry&) const { return false; }
bool FileCache::write(const CacheKey&, const Entry&) const { return false; }
void FileCache::remove(const CacheKey&) const {}
int FileCache::lock(const CacheKey&, bool, long long, bool& waited) const {
  waited = false;
  return -1;
}
void FileCache::record_outcome(int, const mi::Error*) {}
bool FileCache::recorded_failure(int, long long, SharedFailure&) { return false; }

#else

FileCache::~FileCache() {
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

bool FileCache::open(std::string& why) {
  const uid_t uid = ::geteuid();
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] == '/') {
    folder_ = std::string(runtime) + "/managed-identity";
  } else {
    const char* tmp = std::getenv("TMPDIR");
    std::string base = tmp != nullptr && tmp[0] == '/' ? tmp : "/tmp";
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    folder_ = base + "/managed-identity-" + std::to_string(static_cast<unsigned long long>(uid));
  }
  // Opened without following a link, then checked through the descriptor, and every file is
  // opened relative to it: what was checked is what is used. Created first when missing.
  constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  int fd = ::open(folder_.c_str(), kFlags);
  if (fd < 0 && errno == ENOENT) {
    if (::mkdir(folder_.c_str(), 0700) != 0 && errno != EEXIST) {
      why = "cannot create " + folder_ + " (" + std::strerror(errno) + ")";
      return false;
    }
    fd = ::open(folder_.c_str(), kFlags);
  }
  if (fd < 0) {
    why = errno == ELOOP || errno == ENOTDIR ? folder_ + " is a symbolic link or not a folder"
                                             : "cannot open " + folder_ + " (" + std::strerror(errno) + ")";
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
    ::close(fd);
    why = folder_ + " is not a folder";
    return false;
  }
  if (st.st_uid != uid) {
    ::close(fd);
    why = folder_ + " belongs to uid " + std::to_string(static_cast<unsigned long long>(st.st_uid)) +
          ", not to this user (uid " + std::to_string(static_cast<unsigned long long>(uid)) + ")";
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned int>(st.st_mode & 07777));
    why = folder_ + " is open to group or others (mode " + mode + "; it must be 0700)";
    return false;
  }
  dir_fd_ = fd;
  return true;
}

bool FileCache::read(const CacheKey& key, Entry& out) const {
  const std::string name = key.stem + ".token";
  const int fd = ::openat(dir_fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return false;
  struct stat st {};
  // Exactly what write() leaves: a regular file of this user, 0600, one link, small.
  const bool sound = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() &&
                     (st.st_mode & 077) == 0 && st.st_nlink == 1 && st.st_size > 0 &&
                     static_cast<unsigned long long>(st.st_size) <= kMaxFileBytes;
  std::string text;
  if (sound) {
    // Sized from fstat (plus one byte, to see a file that grew meanwhile), not the limit: a
    // hit is a few hundred bytes, and zero-filling 64 KiB would cost more than reading them.
    text.resize(static_cast<std::size_t>(st.st_size) + 1);
    std::size_t got = 0;
    for (;;) {
      const ssize_t n = ::read(fd, &text[got], text.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
      if (got == text.size()) break;
    }
    text.resize(got);
  }
  ::close(fd);
  if (!sound || text.size() != static_cast<std::size_t>(st.st_size)) return false;

  // Line by line, each field in its place; anything else and the file is not used.
  std::vector<std::string_view> lines;
  std::string_view rest = text;
  while (!rest.empty()) {
    const std::size_t nl = rest.find('\n');
    if (nl == std::string_view::npos) return false;  // truncated: the last line has no newline
    lines.push_back(rest.substr(0, nl));
    rest.remove_prefix(nl + 1);
  }
  static const char* const kFields[] = {"resource", "token_type", "expires_on", "refresh_on", "refresh_failures",
                                        "access_token"};
  if (lines.size() != 3 + sizeof kFields / sizeof kFields[0]) return false;
  if (lines[0] != kMagic || lines[1] != key.line || lines.back() != "end") return false;
  std::string_view values[sizeof kFields / sizeof kFields[0]];
  for (std::size_t i = 0; i < sizeof kFields / sizeof kFields[0]; ++i) {
    const std::string_view line = lines[2 + i];
    const std::string_view field = kFields[i];
    if (line.size() <= field.size() + 1 || line.substr(0, field.size()) != field || line[field.size()] != ' ')
      return false;
    values[i] = line.substr(field.size() + 1);
    if (!is_word(values[i])) return false;
  }
  Entry e;
  long long failures = 0;
  if (!decode(values[0], e.token.resource)) return false;
  e.token.token_type = std::string(values[1]);
  if (!parse_seconds(values[2], e.expires_on) || !parse_seconds(values[3], e.refresh_on) ||
      !parse_seconds(values[4], failures) || failures > 64)
    return false;
  e.token.access_token = std::string(values[5]);
  e.refresh_failures = static_cast<int>(failures);
  e.token.expires_on = from_seconds(e.expires_on);
  e.token.refresh_on = e.refresh_on == 0 ? SysClock::time_point() : from_seconds(e.refresh_on);
  e.token.token_source = mi::TokenSource::Cache;
  out = std::move(e);
  return true;
}

bool FileCache::write(const CacheKey& key, const Entry& entry) const {
  const std::string text = std::string(kMagic) + "\n" + key.line + "\nresource " + encode(entry.token.resource, false) +
                           "\ntoken_type " + encode(entry.token.token_type, false) + "\nexpires_on " +
                           std::to_string(entry.expires_on) + "\nrefresh_on " + std::to_string(entry.refresh_on) +
                           "\nrefresh_failures " + std::to_string(entry.refresh_failures) + "\naccess_token " +
                           encode(entry.token.access_token, false) + "\nend\n";
  // A temporary name of its own, then one rename: a reader sees the old file or the new one,
  // never half of one, and a crash leaves at worst a stray temporary file.
  static unsigned counter = 0;
  const std::string final_name = key.stem + ".token";
  const std::string tmp_name = key.stem + ".tmp-" + std::to_string(static_cast<long long>(::getpid())) + "-" +
                               std::to_string(++counter);
  const int fd = ::openat(dir_fd_, tmp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::fchmod(fd, 0600) == 0;  // whatever the umask
  std::size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false;
    else done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0) ok = false;
  if (ok && ::renameat(dir_fd_, tmp_name.c_str(), dir_fd_, final_name.c_str()) != 0) {
    // Only a folder in the file's place stops a rename over it: remove it if empty, and retry.
    ok = (errno == EISDIR || errno == ENOTEMPTY || errno == EEXIST) &&
         ::unlinkat(dir_fd_, final_name.c_str(), AT_REMOVEDIR) == 0 &&
         ::renameat(dir_fd_, tmp_name.c_str(), dir_fd_, final_name.c_str()) == 0;
  }
  if (!ok) ::unlinkat(dir_fd_, tmp_name.c_str(), 0);
  return ok;
}

void FileCache::remove(const CacheKey& key) const {
  const std::string name = key.stem + ".token";
  ::unlinkat(dir_fd_, name.c_str(), 0);
}

void FileCache::record_outcome(int lock_fd, const mi::Error* error) {
  if (::ftruncate(lock_fd, 0) != 0 || error == nullptr) return;
  const std::string text = "failed " + std::to_string(now_millis()) + " " + std::to_string(exit_status(*error)) +
                           "\n" + format_error(*error);
  if (::pwrite(lock_fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    if (::ftruncate(lock_fd, 0) != 0) return;  // a partial record is ignored by its readers anyway
  }
}

bool FileCache::recorded_failure(int lock_fd, long long since_ms, SharedFailure& shared) {
  std::string text(16384, '\0');
  const ssize_t n = ::pread(lock_fd, &text[0], text.size(), 0);
  if (n <= 0) return false;
  text.resize(static_cast<std::size_t>(n));
  // "failed <epoch ms> <exit status>\n<error text>"
  const std::size_t nl = text.find('\n');
  if (text.rfind("failed ", 0) != 0 || nl == std::string::npos || text.back() != '\n') return false;
  const std::string head = text.substr(7, nl - 7);
  const std::size_t sp = head.find(' ');
  long long when = 0, code = 0;
  if (sp == std::string::npos || !parse_seconds(head.substr(0, sp), when) || !parse_seconds(head.substr(sp + 1), code) ||
      when < since_ms || code < 1 || code > 5 || code == 2)
    return false;
  shared.set = true;
  shared.exit = static_cast<int>(code);
  shared.text = text.substr(nl + 1);
  return true;
}

int FileCache::lock(const CacheKey& key, bool wait, long long timeout_ms, bool& waited) const {
  waited = false;
  const std::string name = key.stem + ".lock";
  const int fd = ::openat(dir_fd_, name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
                          0600);
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
    ::close(fd);
    return -1;
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
  if (!wait) {
    ::close(fd);
    return -1;
  }
  waited = true;
  // The holder is another mi-token making the request: wait for it, polling so that our own
  // deadline still holds (a blocking flock cannot be bounded). Past the deadline we go on
  // without the lock rather than fail.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(timeout_ms > 0 ? timeout_ms : 120000);
  auto pause = std::chrono::milliseconds(1);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(pause);
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
    if (pause < std::chrono::milliseconds(16)) pause *= 2;
  }
  ::close(fd);
  return -1;
}

#endif

mi::Result<mi::AuthResult> FileCache::acquire(const CacheKey& key, bool claims, long long timeout_ms,
                                              const std::function<mi::Result<mi::AuthResult>(bool)>& fetch,
                                              const std::function<void(const std::string&)>& log,
                                              SharedFailure& shared) {
  auto store = [&](const mi::AuthResult& token) {
    Entry e;
    e.token = token;
    e.expires_on = to_seconds(token.expires_on);
    e.refresh_on = token.refresh_on == SysClock::time_point() ? 0 : to_seconds(token.refresh_on);
    // A token with 5 minutes or less to live is returned but not kept (the library's rule); it
    // still supersedes the file's (after a claims challenge, that one was rejected).
    if (e.expires_on - now_seconds() <= kMinLifetimeSeconds) {
      remove(key);
      return;
    }
    if (!write(key, e)) log("could not write the cache file in " + folder_ + "; the token was not cached");
  };
  struct FdCloser {
    int fd = -1;
    ~FdCloser() {
#if !defined(_WIN32)
      if (fd >= 0) ::close(fd);  // also releases the lock
#endif
    }
  };

  if (claims) {
    // A claims challenge means the cached token was rejected: never serve it, never wait for
    // another process, and let the new token replace it.
    auto token = fetch(false);
    if (token) store(*token);
    return token;
  }

  Entry cached;
  if (read(key, cached) && cached.expires_on - now_seconds() > kMinLifetimeSeconds) {
    const long long now = now_seconds();
    if (cached.refresh_on == 0 || now < cached.refresh_on) return cached.token;
    // Past the refresh time: the process that takes the lock refreshes, the others are served.
    bool waited = false;
    FdCloser held{lock(key, false, 0, waited)};
    if (held.fd < 0) return cached.token;
    Entry again;
    if (read(key, again) && (again.refresh_on == 0 || now_seconds() < again.refresh_on)) return again.token;
    auto token = fetch(true);
    if (token) {
      store(*token);
      return token;
    }
    // Keep serving the valid token; the next attempt waits 30 s, doubling up to 5 minutes.
    const int failures = cached.refresh_failures;
    long long wait = 30LL << (failures < 4 ? failures : 4);
    if (wait > 300) wait = 300;
    cached.refresh_failures = failures < 64 ? failures + 1 : 64;
    cached.refresh_on = now_seconds() + wait;
    if (cached.refresh_on > cached.expires_on) cached.refresh_on = cached.expires_on;
    write(key, cached);
    log("the proactive refresh failed (" + std::string(mi::to_string(token.error().code())) +
        "); serving the cached token, next attempt in " + std::to_string(wait) + " s");
    return cached.token;
  }

  // A miss: one process asks, the others wait for its file, or for its failure.
  const long long wait_start = now_millis();
  bool waited = false;
  FdCloser held{lock(key, true, timeout_ms, waited)};
  if (held.fd >= 0) {
    if (read(key, cached) && cached.expires_on - now_seconds() > kMinLifetimeSeconds) return cached.token;
    if (waited && recorded_failure(held.fd, wait_start, shared))
      return mi::Error(mi::Errc::network, "another mi-token's request for this token failed");
  }
  auto token = fetch(false);
  if (token) store(*token);
  if (held.fd >= 0) record_outcome(held.fd, token ? nullptr : &token.error());
  return token;
}

}  // namespace mitoken
