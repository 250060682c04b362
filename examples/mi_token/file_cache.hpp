// mi-token's opt-in per-user token cache (--cache): separate mi-token runs share tokens through
// one file per key, so a script that calls mi-token before every request does not hit the
// endpoint every time (IMDS throttles a VM that asks too often).
//
// What it guards against, and what not: a file holds exactly what any process of this user could
// get from the endpoint itself, so the files are readable by this user only (folder 0700, files
// 0600), on $XDG_RUNTIME_DIR (memory-backed) where there is one. A folder that another user owns
// or could write into is refused, as ssh-agent refuses such a socket folder, and a file that is
// not exactly what this program writes is never trusted: it is ignored and replaced.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "managed_identity.hpp"

namespace mitoken {

// The library's cache key: source, identity kind, identity value and resource (after the
// /.default trim), the last two case-insensitive.
struct CacheKey {
  std::string line;  // as written in the file: "key source=... kind=... id=... resource=..."
  std::string stem;  // file name without extension: a hash of `line`
};
CacheKey make_cache_key(mi::Source source, mi::IDKind kind, std::string_view id, std::string_view resource);

// The outcome of a request another mi-token made while this one waited for it: its error text
// (as format_error() prints it) and exit status.
struct SharedFailure {
  bool set = false;
  int exit = 0;
  std::string text;
};

class FileCache {
 public:
  FileCache() = default;
  FileCache(const FileCache&) = delete;
  FileCache& operator=(const FileCache&) = delete;
  ~FileCache();

  // Finds or creates the folder and checks it; false with the reason in `why` when refused.
  bool open(std::string& why);
  const std::string& folder() const { return folder_; }

  // Gets a token for `key` through the cache. `fetch(one_attempt)` asks the endpoint (one
  // attempt, no retry waits, for a proactive refresh: a valid token is in hand). `log` gets
  // diagnostics that never hold a token. Follows the library's rules: a token is served while it
  // has more than 5 minutes to live; past its refresh time one process refreshes while the others
  // are served the cached token, and a failed refresh keeps the token and waits a cool-down;
  // concurrent misses wait for one request (a file lock) and share its outcome: when it failed,
  // `shared` is set and the result is to be ignored; claims never read the file (and the token
  // they get replaces the file's).
  mi::Result<mi::AuthResult> acquire(const CacheKey& key, bool claims, long long timeout_ms,
                                     const std::function<mi::Result<mi::AuthResult>(bool one_attempt)>& fetch,
                                     const std::function<void(const std::string&)>& log, SharedFailure& shared);

 private:
  struct Entry {
    mi::AuthResult token;
    long long expires_on = 0;  // epoch seconds
    long long refresh_on = 0;  // epoch seconds, 0: none
    int refresh_failures = 0;
  };
  bool read(const CacheKey& key, Entry& out) const;
  bool write(const CacheKey& key, const Entry& entry) const;
  void remove(const CacheKey& key) const;
  // The key's lock file, locked: its descriptor, or -1. `waited`: another process held it.
  int lock(const CacheKey& key, bool wait, long long timeout_ms, bool& waited) const;
  // In the lock file, for the processes waiting on it: the request failed (`error` set), or not.
  static void record_outcome(int lock_fd, const mi::Error* error);
  // A failure recorded at or after `since_ms` (epoch milliseconds), into `shared`.
  static bool recorded_failure(int lock_fd, long long since_ms, SharedFailure& shared);

  std::string folder_;
  int dir_fd_ = -1;
};

}  // namespace mitoken
