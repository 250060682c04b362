// The process-wide token cache (docs/protocol.md §6): one per process, shared by every
// client, keyed by source, ID kind, ID value and resource (both compared
// case-insensitively). It also coordinates the two ways callers share work:
// one proactive refresh per entry, and one request per concurrent miss
// ("flights"). A hit is served from a small per-thread copy of the entry,
// valid while the generation counter has not moved, so it takes no lock and
// writes no shared memory: it scales with threads, and it allocates only the
// strings the caller gets back. After a failed proactive refresh, the entry
// cools down before its next one, so an endpoint outage costs one attempt per
// cool-down rather than one per hit.
#pragma once
#include "util.hpp"

namespace mi {
inline namespace v1 {
namespace detail {

constexpr std::chrono::minutes kExpiryMargin{5};  // a token is usable only while it lives longer
constexpr std::chrono::seconds kRefreshCoolDown{30};      // after a first failed proactive refresh,
constexpr std::chrono::seconds kMaxRefreshCoolDown{300};  // doubling on each further one up to this

struct CachedToken {
  std::string access_token;
  std::string token_type;
  SysClock::time_point expires_on;
  SysClock::time_point refresh_on;  // epoch: no proactive refresh
};

struct CacheKey {
  Source source;
  IDKind kind;
  std::string_view id;        // compared case-insensitively
  std::string_view resource;  // after the /.default trim; compared case-insensitively
};

// One request in flight for a key; concurrent misses wait on it (docs/protocol.md §6, coalescing).
struct Flight {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  bool leader_stopped = false;  // the leader's own context ended: waiters must try themselves
  std::unique_ptr<Result<AuthResult>> outcome;
  // The key, and the next flight in the cache's list: set and read under its flights mutex.
  Source source = Source::DefaultToIMDS;
  IDKind kind = IDKind::SystemAssigned;
  std::string id, resource;
  uint64_t hash = 0;
  std::shared_ptr<Flight> next;
};

class TokenCache {
 public:
  // Never destroyed, so threads still running at exit never touch a dead cache.
  static TokenCache& instance() {
    static TokenCache* cache = new TokenCache();
    return *cache;
  }

  TokenCache() = default;
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;
  ~TokenCache() { clear(); }  // the entry list is owned through raw pointers

  enum class Hit { miss, fresh, refresh };

  // A usable token (expiring more than 5 minutes after `now`) is copied into `out`
  // (access_token, token_type, expires_on, refresh_on). `refresh` means it is past
  // its refresh time (and any cool-down) and this caller won the right to refresh it;
  // it must call end_refresh(key, ...) afterwards.
  Hit find(const CacheKey& key, SysClock::time_point now, AuthResult& out) {
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if constexpr (kLocalCopiesEnabled) {
      LocalCopies& copies = local_copies();
      for (size_t i = 0; i < copies.used; ++i) {
        const LocalCopy& local = copies.slots[i];
        if (local.generation != generation || local.cache != this ||
            !same(local.source, local.kind, local.id, local.resource, key))
          continue;
        const CachedToken& t = local.token;
        if (t.expires_on <= now + kExpiryMargin) return Hit::miss;
        if (due_for_refresh(t, local.cool_down_until, now)) break;  // claim under the lock
        copy_to(t, out);
        return Hit::fresh;
      }
    }
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key, hash(key));
    if (entry == nullptr) return Hit::miss;
    if constexpr (kLocalCopiesEnabled) remember(generation, *entry);
    if (entry->token.expires_on <= now + kExpiryMargin) return Hit::miss;
    copy_to(entry->token, out);
    if (due_for_refresh(entry->token, entry->cool_down_until, now)) {
      bool expected = false;
      if (entry->refreshing.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return Hit::refresh;
    }
    return Hit::fresh;
  }

  // Any cached token for the key, usable or not (Service Fabric's revocation hash).
  bool peek(const CacheKey& key, CachedToken& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key, hash(key));
    if (entry == nullptr) return false;
    out = entry->token;
    return true;
  }

  // Ends the refresh find() handed out. After a failure (at `now`) the entry cools down
  // before its next proactive refresh: 30 s, doubling on each further failure up to 5 min,
  // and never past the time the token stops being usable (misses ignore the cool-down).
  // Returns the cool-down started (zero if none).
  std::chrono::seconds end_refresh(const CacheKey& key, bool failed, SysClock::time_point now) noexcept {
    if (!failed) {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      if (Entry* entry = lookup(key, hash(key))) entry->refreshing.store(false, std::memory_order_release);
      return std::chrono::seconds(0);
    }
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key, hash(key));
    if (entry == nullptr) return std::chrono::seconds(0);
    std::chrono::seconds cool_down(0);
    // A token stored meanwhile (not due for refresh) has already ended any cool-down.
    if (entry->token.refresh_on != SysClock::time_point() && now >= entry->token.refresh_on) {
      if (entry->refresh_failures < 16) ++entry->refresh_failures;
      cool_down = kRefreshCoolDown * (int64_t{1} << std::min(entry->refresh_failures - 1, 4));
      if (cool_down > kMaxRefreshCoolDown) cool_down = kMaxRefreshCoolDown;
      entry->cool_down_until = std::min(now + cool_down, entry->token.expires_on - kExpiryMargin);
      generation_.fetch_add(1, std::memory_order_release);  // per-thread copies carry the cool-down
    }
    entry->refreshing.store(false, std::memory_order_release);
    return cool_down;
  }

  // Stores the token if it lives more than 5 minutes past `now`; returns whether it did.
  bool store(const CacheKey& key, const CachedToken& token, SysClock::time_point now) {
    if (token.expires_on <= now + kExpiryMargin) return false;
    uint64_t h = hash(key);
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key, h);
    if (entry == nullptr) {
      entry = new Entry();  // owned by the list; deleted by clear()
      entry->next = entries_;
      entries_ = entry;
      entry->source = key.source;
      entry->kind = key.kind;
      entry->id.assign(key.id);
      entry->resource.assign(key.resource);
      entry->hash = h;
    }
    entry->token = token;
    entry->refresh_failures = 0;  // a new token ends any cool-down
    entry->cool_down_until = SysClock::time_point();
    generation_.fetch_add(1, std::memory_order_release);
    return true;
  }

  // Joins the flight for `key` or, when there is none and no usable token was
  // stored meanwhile, starts one (leader = true). With a usable token, returns
  // nullptr and fills `out`.
  std::shared_ptr<Flight> join_or_lead(const CacheKey& key, SysClock::time_point now, bool& leader, AuthResult& out) {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    // Leaders store before they land, so this re-check closes the miss/land race.
    if (find_usable(key, now, out)) return nullptr;
    uint64_t h = hash(key);
    for (const std::shared_ptr<Flight>* f = &flights_; *f; f = &(*f)->next)
      if ((*f)->hash == h && same((*f)->source, (*f)->kind, (*f)->id, (*f)->resource, key)) {
        leader = false;
        return *f;
      }
    std::shared_ptr<Flight> flight(new Flight());
    flight->source = key.source;
    flight->kind = key.kind;
    flight->id.assign(key.id);
    flight->resource.assign(key.resource);
    flight->hash = h;
    flight->next = std::move(flights_);
    flights_ = flight;
    leader = true;
    return flight;
  }

  // The leader publishes its outcome (after storing a success) and removes the flight.
  void land(const std::shared_ptr<Flight>& flight, const Result<AuthResult>& outcome, bool leader_stopped) {
    std::unique_ptr<Result<AuthResult>> copy(new Result<AuthResult>(outcome));
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->outcome = std::move(copy);
    flight->leader_stopped = leader_stopped;
    flight->done = true;
    flight->done_cv.notify_all();
  }

  // The leader left without an outcome (user code threw): removes the flight, and its
  // waiters try themselves. Allocates nothing, so it is safe while unwinding.
  void abandon(const std::shared_ptr<Flight>& flight) noexcept {
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->leader_stopped = true;
    flight->done = true;
    flight->done_cv.notify_all();
  }

  // Forgets every token (for tests and for programs that must drop tokens).
  void clear() {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    while (entries_ != nullptr) {
      Entry* next = entries_->next;
      delete entries_;
      entries_ = next;
    }
    generation_.fetch_add(1, std::memory_order_release);
  }

  size_t size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    size_t n = 0;
    for (const Entry* e = entries_; e != nullptr; e = e->next) ++n;
    return n;
  }

 private:
  struct Entry {
    Source source = Source::DefaultToIMDS;
    IDKind kind = IDKind::SystemAssigned;
    std::string id, resource;
    uint64_t hash = 0;
    CachedToken token;
    std::atomic<bool> refreshing{false};
    int refresh_failures = 0;                // proactive refreshes failed in a row
    SysClock::time_point cool_down_until;    // no proactive refresh before this
    Entry* next = nullptr;  // the list (newest first)
  };
  // A thread's copy of an entry of `cache`, valid only while generation_ has not moved.
  struct LocalCopy {
    uint64_t generation = 0;
    const TokenCache* cache = nullptr;
    SysClock::time_point cool_down_until;
    Source source = Source::DefaultToIMDS;
    IDKind kind = IDKind::SystemAssigned;
    std::string id, resource;
    CachedToken token;
  };
  static constexpr size_t kLocalCopies = 8;
  // MinGW's GCC emulates TLS and frees a thread_local's storage before its destructor runs
  // at thread exit (GCC bug 80816, mingw-w64 bug 527): a thread that used the cache would
  // crash or corrupt the heap as it ends. There, no per-thread copies: hits take the lock.
#if defined(__MINGW32__) && !defined(__clang__)
  static constexpr bool kLocalCopiesEnabled = false;
#else
  static constexpr bool kLocalCopiesEnabled = true;
#endif

  // A thread's copies, replaced oldest first once all kLocalCopies are in use.
  struct LocalCopies {
    LocalCopy slots[kLocalCopies];
    size_t used = 0;    // slots[0, used) hold copies
    size_t oldest = 0;  // the slot to replace next when all are in use
  };

  static LocalCopies& local_copies() {
    static thread_local LocalCopies copies;
    return copies;
  }

  // Keeps a per-thread copy of `entry` stamped with the generation read before the
  // lookup: if a store raced with us, the stamp is already stale and the copy unused.
  void remember(uint64_t generation, const Entry& entry) const {
    LocalCopies& copies = local_copies();
    LocalCopy* slot = nullptr;
    for (size_t i = 0; i < copies.used; ++i) {
      LocalCopy& c = copies.slots[i];
      if (c.cache == this && c.source == entry.source && c.kind == entry.kind && c.id == entry.id &&
          c.resource == entry.resource)
        slot = &c;
    }
    if (slot == nullptr) {
      if (copies.used < kLocalCopies) {
        slot = &copies.slots[copies.used++];
      } else {
        slot = &copies.slots[copies.oldest];
        copies.oldest = (copies.oldest + 1) % kLocalCopies;
      }
      slot->cache = this;
      slot->source = entry.source;
      slot->kind = entry.kind;
      slot->id = entry.id;
      slot->resource = entry.resource;
    }
    slot->generation = generation;
    slot->token = entry.token;
    slot->cool_down_until = entry.cool_down_until;
  }

  static bool due_for_refresh(const CachedToken& token, SysClock::time_point cool_down_until,
                              SysClock::time_point now) noexcept {
    return token.refresh_on != SysClock::time_point() && now >= token.refresh_on && now >= cool_down_until;
  }

  static void copy_to(const CachedToken& token, AuthResult& out) {
    out.access_token = token.access_token;
    out.token_type = token.token_type;
    out.expires_on = token.expires_on;
    out.refresh_on = token.refresh_on;
  }

  // FNV-1a over the key with ASCII case folded, so look-ups need no lowered copy.
  static uint64_t hash(const CacheKey& key) noexcept {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](unsigned char c) {
      h ^= c;
      h *= 1099511628211ull;
    };
    mix(static_cast<unsigned char>(key.source));
    mix(static_cast<unsigned char>(key.kind));
    for (char c : key.id) mix(static_cast<unsigned char>(ascii_lower(c)));
    mix(0);
    for (char c : key.resource) mix(static_cast<unsigned char>(ascii_lower(c)));
    return h;
  }

  static bool same(Source source, IDKind kind, const std::string& id, const std::string& resource,
                   const CacheKey& key) noexcept {
    return source == key.source && kind == key.kind && iequals(id, key.id) && iequals(resource, key.resource);
  }

  Entry* lookup(const CacheKey& key, uint64_t h) const noexcept {
    for (Entry* e = entries_; e != nullptr; e = e->next)
      if (e->hash == h && same(e->source, e->kind, e->id, e->resource, key)) return e;
    return nullptr;
  }

  // Removes a flight from the list; the caller's reference keeps it alive.
  void unlink(const std::shared_ptr<Flight>& flight) noexcept {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    for (std::shared_ptr<Flight>* f = &flights_; *f; f = &(*f)->next)
      if (*f == flight) {
        std::shared_ptr<Flight> rest = std::move(flight->next);
        *f = std::move(rest);
        return;
      }
  }

  bool find_usable(const CacheKey& key, SysClock::time_point now, AuthResult& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key, hash(key));
    if (entry == nullptr || entry->token.expires_on <= now + kExpiryMargin) return false;
    copy_to(entry->token, out);
    return true;
  }

  mutable std::shared_mutex mutex_;
  Entry* entries_ = nullptr;  // a list, newest first; owned, deleted by clear()
  // Moves on every store, cool-down and clear of any cache. One counter for the process,
  // so that a cache built where another was destroyed never matches that one's copies.
  static inline std::atomic<uint64_t> generation_{1};
  std::mutex flights_mutex_;
  std::shared_ptr<Flight> flights_;  // a list through Flight::next
};

}  // namespace detail
}  // namespace v1
}  // namespace mi
